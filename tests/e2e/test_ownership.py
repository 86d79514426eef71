"""Never destroy on doubt: a failed read is not an answer, and a VM without this deployment's
tag is neither adopted nor deleted. Real `vm_launcher.py launch` / `serve` processes against
the simulator (time_scale 0.01: a create takes 0.6 s)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from conftest import PYTHON, REPO, AzSim
from orchestratorkit import FAST, orchestrate, vm_args
from workerkit import RG, Bus, launch_env, running, spec

from vmlaunch.azure.look import refusal
from vmlaunch.schema.messages import Complete, Failed, Subject, decode

pytestmark = pytest.mark.timeout(60)

DEPLOYMENT = "dep-own"
TAG = f"vmlaunch-deployment={DEPLOYMENT}"
BASE = ["-n", "vm1", "-g", RG, "--image", "Ubuntu2204", "--zone", "1", "--location", "westus2",
        "--no-verify-ssh", "--retry-backoff", "0.05", "--deployment-id", DEPLOYMENT, "--no-nats",
        "--json"]


OWNERSHIP = [
    # tags, adopt_untagged, delete, allowed
    pytest.param({"vmlaunch-deployment": DEPLOYMENT}, False, False, True, id="ours-adopt"),
    pytest.param({"vmlaunch-deployment": DEPLOYMENT}, False, True, True, id="ours-delete"),
    pytest.param(None, False, False, False, id="untagged-adopt"),
    pytest.param({"owner": "x"}, True, False, True, id="untagged-adopt-allowed"),
    pytest.param(None, True, True, False, id="untagged-delete-never"),
    pytest.param({"vmlaunch-deployment": "other"}, True, False, False, id="other-adopt-never"),
    pytest.param({"vmlaunch-deployment": "other"}, True, True, False, id="other-delete-never"),
]


@pytest.mark.parametrize(("tags", "adopt_untagged", "delete", "allowed"), OWNERSHIP)
def test_only_our_tag_allows_adoption_and_deletion(tags, adopt_untagged, delete, allowed):
    vm = {"name": "vm1", **({"tags": tags} if tags is not None else {})}
    refused = refusal(vm, deployment_id=DEPLOYMENT, adopt_untagged=adopt_untagged,
                      delete=delete)
    assert (refused is None) == allowed
    if refused is not None:
        assert (refused.code, refused.kind.value) == ("NotOurs", "permanent")
        assert f"not {TAG}" in refused.message


def launch(az_sim: AzSim, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, str(REPO / "vm_launcher.py"), "launch", *BASE, *args]
    return subprocess.run(argv, env=launch_env(az_sim), capture_output=True, text=True,
                          timeout=50, cwd=REPO)


def existing_vm(az_sim: AzSim, *tags: str, fail: str | None = None) -> None:
    """vm1 made outside the launcher (Succeeded, or Failed with `fail`); then plain scenario."""
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "vm1", "attempts": [1],
                                                  "fail": fail}]})
    az_sim.az("vm", "create", "-g", RG, "-n", "vm1", "--image", "Ubuntu2204", "--zone", "1",
              *(["--tags", *tags] if tags else []), check=fail is None)
    assert az_sim.state()["vms"]["vm1"]["provisioningState"] == ("Failed" if fail else
                                                                  "Succeeded")


def throttle(az_sim: AzSim, code: str, first_calls: int, **extra: Any) -> None:
    az_sim.scenario({"time_scale": 0.01, "throttle": {
        "first_calls": first_calls, "code": code, "commands": ["vm show"],
        "message": f"{code} while reading", **extra}})


def events(done: subprocess.CompletedProcess[str]) -> list[Any]:
    return [decode(line.encode()).payload for line in done.stdout.splitlines()]


def untouched(az_sim: AzSim) -> dict[str, Any]:
    """The simulator's view, after asserting no delete and no second create reached it."""
    state = az_sim.state()
    assert "vm delete" not in state["calls"] and "network public-ip delete" not in state["calls"]
    assert state["create_counts"] == {"vm1": 1}  # the one made by existing_vm
    return state


@pytest.mark.parametrize("code", ["TooManyRequests", "InternalServerError"])
def test_a_throttled_read_of_our_succeeded_vm_adopts_it_and_deletes_nothing(az_sim, code):
    existing_vm(az_sim, TAG)
    throttle(az_sim, code, 2, commands=["vm list"])  # how the launcher reads it: listings

    done = launch(az_sim)

    assert done.returncode == 0, done.stdout + done.stderr
    untouched(az_sim)
    assert az_sim.state()["calls"]["vm list"] == 3  # two unknowns, then the answer
    (complete,) = [p for p in events(done) if isinstance(p, Complete)]
    assert complete.public_ip == az_sim.state()["vms"]["vm1"]["public_ip"]
    assert not [p for p in events(done) if isinstance(p, Failed)]  # no read was an attempt


def test_reads_that_never_answer_end_the_launch_with_nothing_created_or_deleted(az_sim):
    existing_vm(az_sim, TAG, fail="InternalServerError")  # ours and Failed: would be replaced
    # Both ways a VM is read: the tracker's listing and `show`.
    throttle(az_sim, "ServiceUnavailable", 1000, commands=["vm show", "vm list"])

    done = launch(az_sim, "--create-timeout", "1.5")

    assert done.returncode == 1
    state = untouched(az_sim)
    assert state["vms"]["vm1"]["provisioningState"] == "Failed"
    (failed,) = [p for p in events(done) if isinstance(p, Failed)]
    assert (failed.error_code, failed.final, failed.retryable) == ("VmStateUnknown", True, True)
    assert "ServiceUnavailable" in failed.message


def test_an_attempts_clean_up_whose_reads_fail_leaves_the_vm(az_sim):
    # The look before the create answers (absent: the tracker's listing); the create fails
    # leaving a Failed VM; every read after that fails (each `show`): the clean-up must not
    # delete what it cannot see.
    az_sim.scenario({"time_scale": 0.01, "throttle": {
        "after_calls": 0, "first_calls": 1000, "code": "TooManyRequests",
        "commands": ["vm show"]}, "vms": [{"match": "vm1", "fail": "InternalServerError"}]})

    done = launch(az_sim, "--create-timeout", "1.5", "--max-attempts", "1")

    assert done.returncode == 1
    state = az_sim.state()
    assert "vm delete" not in state["calls"]
    assert state["vms"]["vm1"]["provisioningState"] == "Failed"
    assert "vm1 left in place, not deleted: its state could not be read" in done.stderr


def test_a_same_named_vm_without_our_tag_is_neither_adopted_nor_deleted(az_sim):
    existing_vm(az_sim, "owner=someone-else")

    done = launch(az_sim)

    assert done.returncode == 1
    untouched(az_sim)
    (failed,) = [p for p in events(done) if isinstance(p, Failed)]
    assert (failed.error_code, failed.final) == ("NotOurs", True)
    assert f"without a vmlaunch-deployment tag, not {TAG}" in failed.message
    assert "--adopt-untagged" in failed.message


def test_adopt_untagged_adopts_a_vm_without_a_deployment_tag(az_sim):
    existing_vm(az_sim)

    done = launch(az_sim, "--adopt-untagged")

    assert done.returncode == 0, done.stdout + done.stderr
    untouched(az_sim)


def test_adopt_untagged_never_takes_another_deployments_vm(az_sim):
    existing_vm(az_sim, "vmlaunch-deployment=other-dep")

    done = launch(az_sim, "--adopt-untagged")

    assert done.returncode == 1
    untouched(az_sim)
    (failed,) = [p for p in events(done) if isinstance(p, Failed)]
    assert failed.error_code == "NotOurs"
    assert "tagged vmlaunch-deployment=other-dep" in failed.message


def test_a_failed_vm_without_our_tag_is_never_deleted_even_with_adopt_untagged(az_sim):
    existing_vm(az_sim, fail="InternalServerError")

    done = launch(az_sim, "--adopt-untagged")

    assert done.returncode == 1
    assert untouched(az_sim)["vms"]["vm1"]["provisioningState"] == "Failed"
    (failed,) = [p for p in events(done) if isinstance(p, Failed)]
    assert failed.error_code == "NotOurs"


def test_our_failed_vm_is_still_replaced(az_sim):
    existing_vm(az_sim, TAG, fail="InternalServerError")

    done = launch(az_sim)

    assert done.returncode == 0, done.stdout + done.stderr
    state = az_sim.state()
    assert state["calls"]["vm delete"] == 1
    assert state["create_counts"] == {"vm1": 2}


@pytest.mark.parametrize("flag", [[], ["--adopt-untagged"]], ids=["refused", "adopted"])
async def test_a_worker_adopts_an_untagged_vm_only_when_started_to(nats_server, az_sim,
                                                                   tmp_path, flag):
    existing_vm(az_sim)
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", *flag)
        await bus.request(spec("vm1"), deployment_id=DEPLOYMENT)
        await bus.wait_for_event("vm1", Subject.COMPLETE.value if flag else
                                 Subject.FAILED.value)
        await bus.wait_no_pending_requests()
    untouched(az_sim)
    failed = [m.payload.error_code for m in bus.of("vm1", Failed)]
    assert failed == ([] if flag else ["NotOurs"])


@pytest.mark.parametrize("mode", [[], ["--legacy-poll"]], ids=["embedded-workers", "legacy"])
def test_deploy_hands_adopt_untagged_to_whoever_launches(az_sim, tmp_path, mode):
    existing_vm(az_sim)

    done = orchestrate(tmp_path, az_sim, *vm_args("vm1:1"), *FAST, "--deployment-id",
                       DEPLOYMENT, "--adopt-untagged", "--poll-interval", "0.2", *mode)

    assert done.returncode == 0, done.stdout + done.stderr
    untouched(az_sim)


def test_a_rerun_does_not_take_a_replaced_vm_without_our_tag_as_ready(az_sim, tmp_path):
    # The state file says vm1 is ready; meanwhile it was deleted and someone else made a VM
    # of that name. The rerun used to count it as this deployment's ready VM (exit 0).
    args = [*vm_args("vm1:1"), *FAST, "--deployment-id", DEPLOYMENT, "--legacy-poll",
            "--poll-interval", "0.2"]
    assert orchestrate(tmp_path, az_sim, *args).returncode == 0
    az_sim.az("vm", "delete", "-g", RG, "-n", "vm1", "--yes")
    az_sim.az("network", "public-ip", "delete", "-g", RG, "-n", "vm1PublicIP")
    az_sim.az("vm", "create", "-g", RG, "-n", "vm1", "--image", "Ubuntu2204", "--zone", "1")

    rerun = orchestrate(tmp_path, az_sim, *args)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert "NotOurs" in rerun.stdout
    state = az_sim.state()
    assert state["create_counts"] == {"vm1": 2}  # ours, then the other one; nothing since
    assert state["calls"]["vm delete"] == 1  # the one above
