"""The CLI's options as the core receives them, and the resume rule (in process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vmlaunch.cli import orchestrator
from vmlaunch.plans.plan import Plan
from vmlaunch.runner import deployment
from vmlaunch.runner.tracker import decide
from vmlaunch.schema import messages as m
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.state.reducer import DeploymentView

BASE = ["--vm", "vm-1", "-g", "rg-1", "--image", "Debian12"]


@pytest.fixture
def captured(monkeypatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def fake_deploy(plan, options, display):
        seen.update(plan=plan, options=options, display=display)
        return 0

    monkeypatch.setattr(deployment, "deploy", fake_deploy)
    return seen


@pytest.mark.parametrize(("argv", "env", "check"), [
    (["--legacy-poll", *BASE], {}, lambda p, o: o.legacy_poll and o.nats is None),
    (["deploy", *BASE], {"NATS_URL": "nats://a:1, nats://b:2"},
     lambda p, o: o.nats.servers == ["nats://a:1", "nats://b:2"]),
    ([*BASE, "--nats-url", "nats://c:3", "--nats-connect-timeout", "0.5", "--replicas", "3",
      "--require-nats", "--nats-grace", "1.5"], {},
     lambda p, o: (o.nats.connect_timeout, o.nats.replicas, o.require_nats, o.nats_grace)
     == (0.5, 3, True, 1.5)),
    ([*BASE, "--deadline", "12.5"], {}, lambda p, o: p.deadline == o.deadline == 12.5),
    ([*BASE, "--workers", "3", "--worker-concurrency", "2", "--az", "/bin/az"], {},
     lambda p, o: (o.workers.count, o.workers.concurrency, o.workers.az, o.az)
     == (3, 2, "/bin/az", "/bin/az")),
    (BASE, {"AZ_CLI": "/opt/az"}, lambda p, o: o.az == "/opt/az"),
    ([*BASE, "--state-file", "s/x.yaml"], {},
     lambda p, o: o.events_file == Path("s/deployment-events.yaml")),
    ([*BASE, "--no-verify-ssh", "--create-timeout", "5", "--zone", "2"], {},
     lambda p, o: (p.vms[0].verify_ssh, p.vms[0].create_timeout, p.vms[0].zone)
     == (False, 5.0, "2")),
    ([*BASE, "--poll-interval", "0.5", "--concurrency", "3"], {},
     lambda p, o: (o.poll_interval, o.concurrency) == (0.5, 3)),
    ([*BASE, "--ssh-private-key", __file__], {},
     lambda p, o: o.ssh_private_key == o.workers.ssh_private_key == __file__),
    ([*BASE, "--deployment-id", "dep-9"], {}, lambda p, o: p.deployment_id == "dep-9"),
    ([*BASE, "-y"], {}, lambda p, o: o.confirm is None),
], ids=["default-command-legacy", "env-urls", "nats-options", "deadline", "workers",
        "az-env", "events-beside-state", "field-options", "legacy-options", "private-key",
        "deployment-id", "yes"])
def test_the_command_line_reaches_the_core(captured, argv, env, check):
    result = CliRunner().invoke(orchestrator.cli, argv, env={"NATS_URL": None, **env})
    assert result.exit_code == 0, result.output
    assert check(captured["plan"], captured["options"])


def test_a_bad_plan_on_the_command_line_exits_2_before_the_core(captured):
    result = CliRunner().invoke(orchestrator.cli, ["--vm", "bad name!", "-g", "rg"])
    assert result.exit_code == 2
    assert "image is required" in result.output and "name must be" in result.output
    assert not captured


PLAN = Plan(deployment_id="dep", resource_group="rg",
            vms=[VMSpec(name=n, resource_group="rg", image="i") for n in ("a", "b")])
T0 = "2026-01-01T00:00:00.000Z"


@pytest.mark.parametrize(("entry", "azure", "expected"), [
    (None, None, ("new", 1)),
    ({"state": "Succeeded", "verified": True, "generation": 1, "requested_at": T0},
     "Succeeded", ("done", None)),
    ({"state": "Succeeded", "verified": True, "generation": 1, "requested_at": T0},
     None, ("new", 2)),
    ({"state": "Succeeded", "verified": False, "generation": 2, "requested_at": T0},
     "Succeeded", ("resume", 2)),
    ({"state": "Creating", "generation": 3, "requested_at": T0}, "Creating", ("resume", 3)),
    ({"state": "Creating", "public_ip": ""}, "Creating", ("new", 1)),
    ({"state": "Failed", "generation": 1, "requested_at": T0}, None, ("new", 2)),
    ({"state": "Deleted", "generation": 4, "requested_at": T0}, None, ("new", 5)),
], ids=["unknown", "done", "gone-from-azure", "unverified", "in-flight",
        "legacy-creating", "failed", "reset"])
def test_a_rerun_skips_resumes_or_renews_each_vm(entry, azure, expected):
    done, tickets = decide(PLAN, {"a": entry} if entry else {}, {"a": azure} if azure else {})
    kind, generation = expected
    if kind == "done":
        assert done == ["a"] and "a" not in tickets
    else:
        assert tickets["a"].generation == generation
        assert tickets["a"].fresh is (kind == "new")
        assert (tickets["a"].requested_at == T0) is (kind == "resume")


def test_a_ready_vm_is_written_as_verified_and_a_clean_up_keeps_it_failed():
    spec = VMSpec(name="a", resource_group="rg", image="i", verify_ssh=False,
                  verify_cloud_init=False)
    view = DeploymentView("dep", [spec, spec.replace(name="b")])

    def event(payload, vm="a"):
        return m.Message(deployment_id="dep", vm_name=vm, payload=payload, attempt=1)

    change = view.apply(event(m.Complete(public_ip="1.2.3.4", private_ip="10.0.0.4",
                                         vm_id="id", duration_seconds=1.0)))
    assert change.vm_fields["verified"] is True
    view.apply(event(m.Failed(error_code="InvalidParameter", message="no", retryable=False,
                              attempts=1, final=True), vm="b"))
    cleanup = view.apply(event(m.Status(state="deleting", detail="clean-up"), vm="b"))
    assert cleanup.vm_fields == {}
    assert cleanup.log[0][0] == "vm_deletion_started"
    assert view.vms["b"].state == "Failed"
