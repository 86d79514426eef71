"""Legacy polling mode against the az simulator: run_legacy driven directly, its events folded
by the same reducer and writer as the orchestrator's, the state file checked at the end."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import AZ_SIM, AzSim, async_wait_until

from vmlaunch.azure.azcli import AzCli
from vmlaunch.host.azslots import SLOTS_DIR
from vmlaunch.plans.plan import Plan
from vmlaunch.runner.pollmode import SOURCE, calls_summary, run_legacy
from vmlaunch.schema import messages as m
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.state import writer as state_writer
from vmlaunch.state.reducer import DeploymentView
from vmlaunch.state.statefile import read_events, read_state
from vmlaunch.state.writer import StateWriter

pytestmark = pytest.mark.timeout(90)

DEPLOYMENT = "k0rdent-legacy01"
RG = "k0rdent-legacy01-resgrp"
POLL = 0.2
SHOW_SLACK = 2.0  # how much two concurrent `az vm show` may differ on a busy machine
CLOUD_INIT = "#cloud-config\nruncmd: [echo legacy]\n"
OURS = f"vmlaunch-deployment={DEPLOYMENT}"


@pytest.fixture
def sim(az_sim: AzSim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AzSim:
    """The simulator as `az` for AzCli, and a private temp dir to check for leftover files."""
    for key in ("AZ_CLI", "AZ_SIM_STATE", "AZ_SIM_SCENARIO"):
        monkeypatch.setenv(key, az_sim.env[key])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    return az_sim


def scenario(sim: AzSim, *rules: dict[str, Any], **defaults: float) -> None:
    sim.scenario({"time_scale": 0.01, "location": "westus2",
                  "defaults": {"create_seconds": 60, "delete_seconds": 20,
                               "run_command_seconds": 5, "cloud_init_seconds": 0, **defaults},
                  "vms": list(rules)})


def make_plan(tmp_path: Path, names: list[str], **overrides: Any) -> Plan:
    cloud_init = tmp_path / "cloud-init.yaml"
    cloud_init.write_text(CLOUD_INIT)
    fields: dict[str, Any] = {
        "resource_group": RG, "image": "Debian:debian-12:12-gen2:latest", "location": "westus2",
        "zone": "1", "size": "Standard_D2s_v5", "custom_data": str(cloud_init),
        "verify_ssh": False, "verify_cloud_init": True, "retry_backoff": 0.05,
        "create_timeout": 30.0, "cloud_init_timeout": 30.0, **overrides}
    return Plan(deployment_id=DEPLOYMENT, resource_group=RG,
                vms=[VMSpec(name=name, **fields) for name in names])


class Recorder:
    """The sink: every event, when it came, folded into the state and events files."""

    def __init__(self, plan: Plan, writer: StateWriter) -> None:
        self.view = DeploymentView(plan.deployment_id, plan.vms)
        self.files = state_writer.Recorder(self.view, writer)  # the one writer
        self.events: list[tuple[float, m.Message]] = []

    async def __call__(self, message: m.Message) -> None:
        self.events.append((time.monotonic(), message))
        self.files.apply(message)

    def of(self, vm: str, kind: type) -> list[tuple[float, m.Message]]:
        return [(t, e) for t, e in self.events if e.vm_name == vm and isinstance(e.payload, kind)]


class Deployment:
    def __init__(self, tmp_path: Path, plan: Plan) -> None:
        self.plan = plan
        self.state_path = tmp_path / "state" / "deployment-state.yaml"
        self.events_path = self.state_path.with_name("deployment-events.yaml")
        self.az = AzCli()
        self.recorder: Recorder | None = None

    async def run(self, *, deadline: float = 60.0, concurrency: int = 6,
                  **kwargs: Any) -> Recorder:
        async with StateWriter(self.state_path, self.events_path,
                               deployment_id=self.plan.deployment_id, delay=0.01) as writer:
            self.recorder = Recorder(self.plan, writer)
            await run_legacy(self.plan, az=self.az, sink=self.recorder, poll_interval=POLL,
                             concurrency=concurrency, private_key=None,
                             deadline=asyncio.get_running_loop().time() + deadline, **kwargs)
            if all(vm.ready for vm in self.recorder.view.vms.values()):
                writer.set_phase("vms_ready")  # as the orchestrator does
        return self.recorder

    def vm_states(self) -> dict[str, dict[str, Any]]:
        return read_state(self.state_path)["vm_states"]

    def actions(self) -> Counter[str]:
        return Counter(event["action"] for event in read_events(self.events_path))


def create_processes(sim: AzSim) -> list[psutil.Process]:
    return [p for p in sim.az_processes() if "create" in p.cmdline()]


def assert_nothing_left(sim: AzSim) -> None:
    assert sim.az_processes() == []
    # No custom-data file left (the process's private directory itself goes at its exit;
    # the az-process slot files are shared by every process of the user and stay).
    assert [p for p in Path(tempfile.gettempdir()).rglob("*")
            if p.is_file() and p.parent.name != SLOTS_DIR] == []


async def test_six_vms_with_a_transient_and_a_permanent_failure_end_in_the_right_state(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-3", "attempts": [1], "fail": "InternalServerError"},
             {"match": "vm-5", "fail": "QuotaExceeded", "fail_phase": "preflight"})
    names = [f"vm-{i}" for i in range(1, 7)]
    deployment = Deployment(tmp_path, make_plan(tmp_path, names))

    recorder = await deployment.run()

    azure = sim.state()
    states = deployment.vm_states()
    for name in ["vm-1", "vm-2", "vm-3", "vm-4", "vm-6"]:
        vm = azure["vms"][name]
        assert states[name]["state"] == "Succeeded"
        assert states[name]["public_ip"] == vm["public_ip"]
        assert states[name]["private_ip"] == vm["private_ip"]
        assert recorder.view.vms[name].ready
        assert states[name]["verified"] is True
        assert vm["custom_data"] == CLOUD_INIT
    assert states["vm-3"]["attempt"] == 2
    assert states["vm-3"]["last_error"].startswith("InternalServerError")
    assert states["vm-5"]["state"] == "Failed"
    assert states["vm-5"]["last_error"].startswith("QuotaExceeded")
    assert read_state(deployment.state_path)["phase"] != "vms_ready"
    # Each VM created once; the transient one twice; the permanent one never retried.
    assert azure["create_counts"] == {**{n: 1 for n in names if n not in ("vm-3", "vm-5")},
                                      "vm-3": 2}
    assert azure["create_attempts"]["vm-5"] == 1
    actions = deployment.actions()
    assert actions["vm_ready"] == 5
    assert actions["vm_creation_failed"] == 1
    assert actions["vm_attempt_failed"] == 1
    assert actions["vm_deletion_started"] == 1  # the Failed vm-3, removed before its retry
    assert {e.source for _, e in recorder.events} == {SOURCE}
    assert_nothing_left(sim)


async def test_a_create_process_killed_from_outside_is_adopted_not_created_again(
        sim: AzSim, tmp_path: Path):
    # Killing the client does not stop Azure: the VM keeps provisioning, so the poller
    # must adopt it. Relaunching would be a second create of the same VM. A --no-wait
    # create's client lives 1 s of simulated time after the PUT: at time scale 3 (3 s),
    # long enough to be killed after the VM reached Azure.
    sim.scenario({"time_scale": 3.0, "location": "westus2",
                  "defaults": {"create_seconds": 3, "run_command_seconds": 0.1,
                               "cloud_init_seconds": 0}})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"]))
    run = asyncio.create_task(deployment.run())
    victims = await async_wait_until(lambda: create_processes(sim), timeout=10,
                                     message="the az vm create process")
    await async_wait_until(lambda: "vm-1" in sim.state()["vms"], timeout=10,
                           message="the create to reach Azure")
    os.kill(victims[0].pid, signal.SIGKILL)

    recorder = await asyncio.wait_for(run, 60)

    assert deployment.vm_states()["vm-1"]["state"] == "Succeeded"
    assert recorder.view.vms["vm-1"].ready
    assert sim.state()["create_counts"] == {"vm-1": 1}
    adopted = [e.payload.detail for _, e in recorder.of("vm-1", m.Status)
               if e.payload.state == "provisioning"]
    assert len(adopted) == 1 and "exit -9" in adopted[0]
    assert deployment.actions()["vm_creation_adopted"] == 1
    assert_nothing_left(sim)


async def test_a_create_that_ends_with_the_vm_absent_is_relaunched_as_a_new_attempt(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-1", "attempts": [1], "fail": "InternalServerError",
                   "fail_phase": "preflight"})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"]))

    recorder = await deployment.run()

    assert recorder.view.vms["vm-1"].ready
    assert sim.state()["create_attempts"] == {"vm-1": 2}
    creating = [e.attempt for _, e in recorder.of("vm-1", m.Status)
                if e.payload.state == "creating"]
    assert creating == [1, 2]
    assert deployment.vm_states()["vm-1"]["attempt"] == 2


async def test_retries_stop_at_max_attempts_and_leave_nothing_in_azure(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-1", "fail": "InternalServerError"})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"], max_attempts=2))

    recorder = await deployment.run()

    failed = [(e.payload.attempts, e.payload.final) for _, e in recorder.of("vm-1", m.Failed)]
    assert failed == [(1, False), (2, True)]
    azure = sim.state()
    assert azure["create_counts"] == {"vm-1": 2}
    assert azure["vms"] == {} and azure["public_ips"] == {}  # each Failed VM was removed
    state = deployment.vm_states()["vm-1"]
    assert (state["state"], state["attempt"]) == ("Failed", 2)
    assert_nothing_left(sim)


async def test_a_capacity_failure_moves_the_next_attempt_to_the_fallback_zone(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-1", "attempts": [1], "fail": "ZonalAllocationFailed"})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"], fallback_zones=["2"]))

    await deployment.run()

    assert sim.state()["vms"]["vm-1"]["zone"] == "2"
    state = deployment.vm_states()["vm-1"]
    assert (state["state"], state["zone"], state["attempt"]) == ("Succeeded", "2", 2)


async def test_a_failed_verification_deletes_and_relaunches_the_vm(sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-1", "attempts": [1], "cloud_init": "error"})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"]))

    recorder = await deployment.run()

    assert recorder.view.vms["vm-1"].ready
    assert sim.state()["create_counts"] == {"vm-1": 2}
    results = [e.payload.result for _, e in recorder.of("vm-1", m.CloudInitComplete)]
    assert results == ["error", "done"]
    assert deployment.actions()["vm_deletion_started"] == 1


async def test_a_hung_create_is_killed_at_its_timeout_and_retried(sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-1", "attempts": [1], "hang": True})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"], create_timeout=1.5))

    recorder = await deployment.run()

    assert recorder.view.vms["vm-1"].ready
    failed = [e.payload for _, e in recorder.of("vm-1", m.Failed)]
    assert [(f.error_code, f.final) for f in failed] == [("Timeout", False)]
    assert_nothing_left(sim)


async def test_one_slow_cloud_init_does_not_delay_another_vms_ready(sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "slow", "cloud_init_seconds": 600})  # 6 s
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["slow", "fast"]))

    recorder = await deployment.run()

    (slow_created, _), = recorder.of("slow", m.Complete)
    (fast_created, _), = recorder.of("fast", m.Complete)
    (slow_ready, _), = recorder.of("slow", m.CloudInitComplete)
    (fast_ready, _), = recorder.of("fast", m.CloudInitComplete)
    # Seen by the same poll or the next, then one `az vm show -d` each (its IPs), at once:
    # neither waits for the other, nor for the slow cloud-init (6 s).
    assert abs(fast_created - slow_created) < 2 * POLL + SHOW_SLACK
    assert fast_ready < slow_ready - 3  # fast was ready while slow's check still ran
    assert read_state(deployment.state_path)["phase"] == "vms_ready"


async def test_at_most_concurrency_creates_run_at_once(sim: AzSim, tmp_path: Path):
    scenario(sim)
    names = [f"vm-{i}" for i in range(1, 5)]
    deployment = Deployment(tmp_path, make_plan(tmp_path, names, verify_cloud_init=False))

    await deployment.run(concurrency=2)

    vms = sim.state()["vms"]
    spans = [(vms[n]["created_at"], vms[n]["ready_at"]) for n in names]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2
    assert all(vm["state"] == "Succeeded" for vm in deployment.vm_states().values())


async def test_vms_already_in_azure_are_adopted_and_keep_their_attempt_counts(
        sim: AzSim, tmp_path: Path):
    # As after NATS loss: vm-1 is being created by the worker's attempt 2, vm-2 is already
    # created (attempt 1), vm-3's attempt 1 left nothing in Azure.
    scenario(sim, create_seconds=150)
    plan = make_plan(tmp_path, ["vm-1", "vm-2", "vm-3"])
    sim.az("vm", "create", "-g", RG, "-n", "vm-2", "--image", "Debian12", "--zone", "1",
           "--tags", OURS)
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", OURS, "--no-wait")
    deployment = Deployment(tmp_path, plan)

    recorder = await deployment.run(attempts={"vm-1": 2, "vm-2": 1, "vm-3": 1})

    azure = sim.state()
    assert azure["create_counts"] == {"vm-1": 1, "vm-2": 1, "vm-3": 1}
    states = deployment.vm_states()
    assert {n: (s["state"], s["attempt"]) for n, s in states.items()} == {
        "vm-1": ("Succeeded", 2), "vm-2": ("Succeeded", 1), "vm-3": ("Succeeded", 2)}
    provisioning = [e.vm_name for _, e in recorder.events
                    if isinstance(e.payload, m.Status) and e.payload.state == "provisioning"]
    assert provisioning == ["vm-1"]  # vm-2 is already Succeeded: verified only


@pytest.mark.parametrize(("tags", "adopt_untagged"), [
    pytest.param([], False, id="untagged"),
    pytest.param(["vmlaunch-deployment=other-dep"], True, id="another-deployments"),
])
async def test_a_vm_that_is_not_ours_is_neither_adopted_nor_deleted(
        sim: AzSim, tmp_path: Path, tags: list[str], adopt_untagged: bool):
    scenario(sim)
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           *(["--tags", *tags] if tags else []))
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"]))

    recorder = await deployment.run(adopt_untagged=adopt_untagged)

    (_, failed), = recorder.of("vm-1", m.Failed)
    assert (failed.payload.error_code, failed.payload.final) == ("NotOurs", True)
    assert f"not {OURS}" in failed.payload.message
    azure = sim.state()
    assert azure["create_counts"] == {"vm-1": 1}  # only the one made above
    assert "vm delete" not in azure["calls"]
    assert not recorder.of("vm-1", m.Complete)
    assert deployment.vm_states()["vm-1"]["state"] == "Failed"


async def test_adopt_untagged_adopts_an_untagged_vm_but_never_deletes_an_untagged_failed_one(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "vm-2", "attempts": [1], "fail": "InternalServerError"})
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1")
    sim.az("vm", "create", "-g", RG, "-n", "vm-2", "--image", "Debian12", "--zone", "1",
           check=False)
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1", "vm-2"]))

    recorder = await deployment.run(adopt_untagged=True)

    assert recorder.view.vms["vm-1"].ready
    (_, failed), = recorder.of("vm-2", m.Failed)
    assert failed.payload.error_code == "NotOurs"
    azure = sim.state()
    assert azure["create_counts"] == {"vm-1": 1, "vm-2": 1}
    assert azure["vms"]["vm-2"]["provisioningState"] == "Failed"
    assert "vm delete" not in azure["calls"]


async def test_the_clean_up_reads_again_until_azure_answers_before_it_deletes(
        sim: AzSim, tmp_path: Path):
    # vm list answers (the poller sees its own create end Failed); the clean-up's first two
    # vm show reads fail: the VM is deleted only once a read said it exists and is ours.
    scenario(sim, {"match": "vm-1", "attempts": [1], "fail": "InternalServerError"})
    sim.scenario({**yaml.safe_load(sim.scenario_path.read_text()), "throttle": {
        "first_calls": 2, "code": "TooManyRequests", "commands": ["vm show"]}})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1"]))

    recorder = await deployment.run()

    assert recorder.view.vms["vm-1"].ready
    azure = sim.state()
    # The clean-up's two unknowns, then its answer (the ready VM's IPs come from the
    # group's IP listing).
    assert azure["calls"]["vm show"] == 3
    assert azure["calls"]["vm delete"] == 1
    assert azure["create_counts"] == {"vm-1": 2}


async def test_only_the_given_vms_are_handled(sim: AzSim, tmp_path: Path):
    scenario(sim)
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1", "vm-2"]))

    recorder = await deployment.run(vms=["vm-2"])

    assert {e.vm_name for _, e in recorder.events} == {"vm-2"}
    assert sim.state()["create_counts"] == {"vm-2": 1}


async def test_at_the_deadline_creates_are_killed_and_unfinished_vms_fail(
        sim: AzSim, tmp_path: Path):
    scenario(sim, {"match": "stuck", "hang": True})
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["stuck", "fine"]))
    started = time.monotonic()

    # Long enough for "fine" on a busy machine: listing, submit, listings, show -d, check.
    recorder = await deployment.run(deadline=6.0)

    assert time.monotonic() - started < 6.0 + 5
    (_, failed), = recorder.of("stuck", m.Failed)
    assert (failed.payload.error_code, failed.payload.final) == ("DeadlineExceeded", True)
    states = deployment.vm_states()
    assert (states["stuck"]["state"], states["fine"]["state"]) == ("Failed", "Succeeded")
    assert_nothing_left(sim)


async def test_the_az_calls_are_counted_per_subcommand_and_reported(
        sim: AzSim, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    scenario(sim)
    deployment = Deployment(tmp_path, make_plan(tmp_path, ["vm-1", "vm-2"]))

    with caplog.at_level(logging.INFO, logger="legacy"):
        await deployment.run()

    calls = deployment.az.calls
    seen_by_azure: Counter[str] = Counter()
    for command, n in sim.state()["calls"].items():  # "vm run-command invoke": AzCli keeps 2 words
        seen_by_azure[" ".join(command.split()[:2])] += n
    assert calls == seen_by_azure  # every az invocation was counted
    assert calls["vm create"] == 2
    assert calls["vm run-command"] == 2
    assert calls["vm list"] >= 3  # one per poll: 0.6 s of creation at 0.2 s a poll
    summary = [r.getMessage() for r in caplog.records if "az calls:" in r.getMessage()]
    assert summary == [f"legacy poller: 2 ready; az calls: {calls_summary(calls)}"]


def test_the_calls_summary_names_every_subcommand():
    assert calls_summary(Counter({"vm list": 10, "vm create": 7})) == \
        "17 (vm list 10, vm create 7)"
    assert calls_summary(Counter()) == "0"


def test_the_simulator_is_the_az_under_test():
    assert AZ_SIM.exists()
    assert subprocess.run([str(AZ_SIM), "version"], capture_output=True, check=False,
                          timeout=30).returncode == 0
