"""Hostile input end to end: real workers, real orchestrator and launch processes, the
simulator. A hostile value is refused before any `az` call, and never runs anything."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO
from workerkit import Bus, launch_env, running, spec

from vmlaunch.display.views import Display
from vmlaunch.schema.messages import Complete, CreateRequest, Failed, Message, Status, encode
from vmlaunch.state.reducer import DeploymentView

pytestmark = pytest.mark.timeout(90)

PROXY = "-oProxyCommand=sh -c 'touch {};#'"


def orchestrator_env(az_sim) -> dict[str, str]:
    """No NATS_URL (embedded mode), and the venv's bin (nats-server) on PATH."""
    env = launch_env(az_sim)
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def final_failure(bus: Bus, name: str) -> Failed | None:
    return next((m.payload for m in bus.of(name, Failed) if m.payload.final), None)


async def test_hostile_requests_fail_without_an_az_call_and_the_worker_keeps_serving(
        nats_server, az_sim, tmp_path):
    marker = tmp_path / "pwned"
    hostile = {  # VM name: (request spec fields, deployment id, the field the error names)
        "vm-proxy": ({"ssh_user": PROXY.format(marker), "verify_ssh": True}, "dep-1",
                     "ssh_user"),
        "vm-owner": ({"extra_args": ["--assign-identity", "--role", "Owner"]}, "dep-1",
                     "extra_args[0] '--assign-identity' is not allowed by this worker"),
        "vm-tag": ({}, "dep-1\n--tags", "deployment_id 'dep-1\\n--tags' must be"),
        "vm_under": ({}, "dep-1", "name must be"),
        "vm-image": ({"image": "--custom-data=/etc/shadow"}, "dep-1", "image"),
        "vm-tagfile": ({"tags": {"x": "@/etc/hostname"}}, "dep-1",  # az would read the file
                       "tags['x'] '@/etc/hostname' must not start with '@'"),
    }
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        for name, (fields, deployment_id, _) in hostile.items():
            await bus.request(spec(name, max_attempts=1, **fields), deployment_id=deployment_id)
        await bus.wait_for(lambda: all(final_failure(bus, n) for n in hostile), timeout=30,
                           message="every hostile request to fail")
        for name, (_, _, words) in hostile.items():
            failure = final_failure(bus, name)
            assert (failure.error_code, failure.retryable) == ("InvalidRequest", False)
            assert words in failure.message, failure.message
        await bus.wait_no_pending_requests()
        assert az_sim.state()["calls"] == {}
        assert not marker.exists()

        await bus.request(spec("vm-after"))
        await bus.wait_for(lambda: bus.of("vm-after", Complete), message="the valid request")
        assert az_sim.state()["create_counts"] == {"vm-after": 1}
    assert not marker.exists()


async def test_a_worker_passes_only_the_extra_arg_flags_it_allows(nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--allow-extra-arg=--accelerated-networking")
        await bus.request(spec("vm-fast", extra_args=["--accelerated-networking", "true"]))
        await bus.request(spec("vm-disk", extra_args=["--accelerated-networking", "true",
                                                      "--storage-sku", "Premium_LRS"]))
        await bus.wait_for(lambda: bus.of("vm-fast", Complete) and final_failure(bus, "vm-disk"))
        failure = final_failure(bus, "vm-disk")
        assert failure.error_code == "InvalidRequest"
        assert "extra_args[2] '--storage-sku' is not allowed by this worker" in failure.message
        sim = az_sim.state()
        assert sim["nics"]["vm-fastVMNic"]["accelerated"] is True
        assert sim["create_counts"] == {"vm-fast": 1}


@pytest.mark.parametrize("flag", ["--tags", "--tag", "-g", "--Role"])
def test_serve_refuses_to_allow_a_flag_the_tool_sets_or_a_malformed_one(az_sim, flag):
    done = subprocess.run([PYTHON, str(REPO / "vm_launcher.py"), "serve",
                           f"--allow-extra-arg={flag}"], env=launch_env(az_sim),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "Invalid value for '--allow-extra-arg'" in done.stderr and repr(flag) in done.stderr


def test_launch_with_hostile_options_lists_each_problem_and_calls_no_az(az_sim, tmp_path):
    marker = tmp_path / "pwned"
    args = ["-n", "vm_1", "-g", "rg-test", "--image=--assign-identity",
            "--location=westus2\n", f"--ssh-user={PROXY.format(marker)}",
            "--tag", "team=ml\n--role", "--extra-arg=--tags", "--extra-arg", "x=y",
            "--deployment-id", "manual\n", "--admin-username", "Admin", "--no-nats"]
    done = subprocess.run([PYTHON, str(REPO / "vm_launcher.py"), "launch", *args],
                          env=launch_env(az_sim), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    expected = ["name must be", "image '--assign-identity'", "location 'westus2\\n'",
                "ssh_user \"-oProxyCommand", "tags['team'] 'ml\\n--role'",
                "extra_args[0] '--tags' would set --tags", "deployment_id 'manual\\n'",
                "admin_username 'Admin'"]
    assert len(errors) == len(expected), done.stderr
    for words in expected:
        assert [line for line in errors if words in line], words
    assert az_sim.state()["calls"] == {}
    assert not marker.exists()


@pytest.mark.parametrize("command", ["deploy", "plan"])
def test_a_hostile_plan_exits_2_with_every_problem_and_calls_no_az(az_sim, tmp_path, command):
    marker = tmp_path / "pwned"
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "deployment_id": "dep-1\n", "resource_group": "rg-test",
        "defaults": {"image": "Ubuntu2204", "ssh_user": PROXY.format(marker)},
        "vms": [{"name": "k0s-worker-1", "extra_args": ["--custom-data", "/etc/shadow"]},
                {"name": "k0s_worker_2"}, {"name": "vm3", "size": "-x", "zone": 1,
                                           "tags": {"a=b": "c"}}],
    }))
    done = subprocess.run([sys.executable, str(REPO / "orchestrator.py"), command,
                           "--plan", str(plan), *(["-y"] if command == "deploy" else [])],
                          cwd=tmp_path, env=orchestrator_env(az_sim), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    for words in ("deployment_id 'dep-1\\n' must be", "VM 'k0s-worker-1': ssh_user",
                  "VM 'k0s-worker-1': extra_args[0] '--custom-data' would set --custom-data",
                  "VM 'k0s_worker_2': name must be", "VM 'vm3': size '-x'",
                  "VM 'vm3': tags key 'a=b'"):
        assert words in done.stderr
    assert done.stderr.count("ssh_user") == 3  # one per VM
    assert az_sim.state()["calls"] == {}
    assert not (tmp_path / "state").exists() and not marker.exists()


def test_embedded_workers_are_allowed_exactly_the_plans_extra_arg_flags(az_sim, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "orchestrator.py"), "deploy", "--vm", "vm-acc:1",
         "--resource-group", "rg-test", "--image", "Ubuntu2204", "--no-verify-ssh",
         "--no-verify-cloud-init", "--extra-arg=--accelerated-networking",
         "--extra-arg", "true", "-y"],
        cwd=tmp_path, env=orchestrator_env(az_sim), capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr + done.stdout
    sim = az_sim.state()
    assert sim["nics"]["vm-accVMNic"]["accelerated"] is True
    assert sim["create_counts"] == {"vm-acc": 1}


async def test_a_request_whose_envelope_names_another_vm_is_refused(nats_server, az_sim,
                                                                     tmp_path):
    """Cancels and de-duplication go by the envelope's vm_name; the worker creates the
    spec's: a request where they differ could create a VM no cancel of it reaches."""
    forged = Message(deployment_id="dep-1", vm_name="vm-decoy", source="test",
                     payload=CreateRequest(spec=spec("vm-real", max_attempts=1)))
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.publish_raw(encode(forged))
        await bus.wait_for(lambda: final_failure(bus, "vm-real") or bus.of("vm-real", Complete),
                           message="the forged request to end")
        failure = final_failure(bus, "vm-real")
        assert failure is not None and failure.error_code == "InvalidRequest"
        assert "vm_name 'vm-decoy' is not the spec's name 'vm-real'" in failure.message
        await bus.wait_no_pending_requests()
        assert az_sim.state()["calls"] == {}


ESCAPES = "x\x1b[2J\x1b]0;pwned\x07\r\x9b1AVM vm-esc is ready\nfake line"


async def test_terminal_control_characters_from_the_bus_are_shown_escaped(nats_server, az_sim,
                                                                          tmp_path):
    """Whoever publishes an event (or Azure, through an error text) must not be able to
    clear the operator's screen, retitle it or forge lines: `events` and the deploy
    display escape control characters."""
    event = Message(deployment_id="dep-esc", vm_name="vm-esc", source="w1", generation=1,
                    payload=Status(state="retrying", detail=ESCAPES))
    async with Bus(nats_server.url) as bus:
        await bus.js.publish(event.subject, encode(event))
    shown = subprocess.run(
        [PYTHON, str(REPO / "orchestrator.py"), "events", "--nats-url", nats_server.url,
         "--deployment-id", "dep-esc"], cwd=tmp_path, env=launch_env(az_sim),
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "dep-esc/vm-esc" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\r\x9b"), repr(shown.stdout)
    assert shown.stdout.count("\n") == 1 and "\\x1b[2J" in shown.stdout

    out = io.StringIO()
    view = DeploymentView("dep-esc", [spec("vm-esc")])
    Display(out=out).event(event, view.apply(event), view)
    assert "Retrying VM vm-esc: x\\x1b[2J" in out.getvalue()
    assert not any(c in out.getvalue() for c in "\x1b\x07\r\x9b")
    assert out.getvalue().count("\n") == 1
