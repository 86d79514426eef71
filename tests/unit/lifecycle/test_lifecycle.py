"""The one VM lifecycle's transitions, state by state, against the az simulator.

Every case runs with the one observer, submit-then-track (`Tracked`: az vm create
--no-wait and one listing per interval), which the worker, the manual launch and polling
mode share: the observer changes how Azure is read, never what is decided.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import AzSim, async_wait_until

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli
from vmlaunch.azure.look import addresses, listed, owner
from vmlaunch.lifecycle.attempts import as_found
from vmlaunch.lifecycle.lease import OPEN, Fence, Handover
from vmlaunch.lifecycle.machine import LaunchResult, Lifecycle, Outcome, Step, deadline_error
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.schema.messages import Complete, Failed, Message, Status
from vmlaunch.schema.vmspec import VMSpec

pytestmark = pytest.mark.timeout(60)

DEPLOYMENT = "dep-life"
RG = "rg-life"
OURS = f"{TAG_DEPLOYMENT}={DEPLOYMENT}"
L, A, RP, C, W, V = Step.LOOK, Step.ADOPT, Step.REPLACE, Step.CREATE, Step.WAIT, Step.VERIFY
CU, RT, G, OK, NO = Step.CLEAN_UP, Step.RETRY, Step.GIVE_UP, Step.READY, Step.FAILED


@pytest.fixture
def sim(az_sim: AzSim, monkeypatch: pytest.MonkeyPatch) -> AzSim:
    for key in ("AZ_CLI", "AZ_SIM_STATE", "AZ_SIM_SCENARIO"):
        monkeypatch.setenv(key, az_sim.env[key])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    az_sim.scenario({"time_scale": 0.01, "location": "westus2"})
    return az_sim


def rules(sim: AzSim, *vms: dict[str, Any], **extra: Any) -> None:
    sim.scenario({"time_scale": 0.01, "location": "westus2", "vms": list(vms), **extra})


def vm_spec(**overrides: Any) -> VMSpec:
    fields: dict[str, Any] = {
        "name": "vm-1", "resource_group": RG, "image": "Debian12", "location": "westus2",
        "zone": "1", "verify_ssh": False, "verify_cloud_init": False, "retry_backoff": 0.05,
        "create_timeout": 20.0, **overrides}
    return VMSpec(**fields)


@dataclass
class Run:
    result: LaunchResult
    path: list[Step]
    events: list[Message]

    def failures(self) -> list[tuple[str, bool]]:
        return [(e.payload.error_code, e.payload.final) for e in self.events
                if isinstance(e.payload, Failed)]

    def statuses(self, state: str) -> list[str]:
        return [e.payload.detail for e in self.events
                if isinstance(e.payload, Status) and e.payload.state == state]


Launcher = Callable[..., Any]


@pytest.fixture
async def launch(sim: AzSim, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Launcher]:
    """Runs one lifecycle with a tracker listing every 0.2 s; what it did and the states it
    passed through (from the lifecycle's debug log of each transition)."""
    az = AzCli()
    observer = Tracked(az, interval=0.2)

    async def run(spec: VMSpec | None = None, *, start: Step = Step.LOOK, fence: Fence = OPEN,
                  used: int = 0) -> Run:
        events: list[Message] = []

        async def emit(message: Message) -> None:
            events.append(message)

        report = Reporter(emit, deployment_id=DEPLOYMENT, vm_name="vm-1", source="test",
                          id_seed="seed")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="lifecycle"):
            result = await Lifecycle(spec or vm_spec(), az=az, report=report,
                                     observer=observer, fence=fence, used=used,
                                     start=start).run()
        moves = [r.args for r in caplog.records if r.name == "lifecycle" and
                 r.levelno == logging.DEBUG and isinstance(r.args, tuple)]
        path = [Step(moves[0][1]), *(Step(move[2]) for move in moves)] if moves else []
        return Run(result, path, events)

    yield run
    await observer.close()


async def test_the_trackers_listing_prints_only_what_the_lifecycle_reads(sim: AzSim):
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "2",
           "--size", "Standard_D4s_v5", "--tags", OURS, "--no-wait")

    result = await AzCli().list_vms(RG, details=False, tracked_fields=True)

    (item,) = result.data
    assert set(item) == {"name", "id", "provisioningState", "tags", "zones", "hardwareProfile"}
    assert (listed(item).state, owner(item)) == ("Creating", DEPLOYMENT)
    found = as_found(vm_spec(zone="1", size="Standard_D2s_v5"), item)
    assert (found.zone, found.size) == ("2", "Standard_D4s_v5")


def test_a_listed_vm_without_a_provisioning_state_is_unknown_never_absent():
    assert listed(None).absent
    for item in ({"name": "vm-1"}, {"name": "vm-1", "provisioningState": None},
                 {"name": "vm-1", "provisioningState": ""}):
        seen = listed(item)
        assert seen.unknown and not seen.absent and seen.state is None


async def test_an_absent_vm_is_created_then_verified(sim: AzSim, launch: Launcher):
    run = await launch()

    assert run.path == [L, C, V, OK]
    assert (run.result.outcome, run.result.attempts) == (Outcome.READY, 1)
    assert sim.state()["create_counts"] == {"vm-1": 1}


async def test_a_created_vms_ips_come_from_the_ip_listing_started_with_its_listing(
        sim: AzSim, launch: Launcher):
    run = await launch()

    (complete,) = [e.payload for e in run.events if isinstance(e.payload, Complete)]
    azure = sim.state()
    vm = azure["vms"]["vm-1"]
    assert (complete.public_ip, complete.private_ip) == (vm["public_ip"], vm["private_ip"])
    assert complete.vm_id.endswith("/virtualMachines/vm-1")
    assert "vm show" not in azure["calls"]
    # Each listing of the group came with an IP listing, and the one that showed it
    # Succeeded gave its IPs: none was made after it.
    assert azure["calls"]["vm list-ip-addresses"] == azure["calls"]["vm list"] >= 2


def test_an_ip_listing_entry_gives_the_ips_as_show_d_does() -> None:
    """An entry of `list-ip-addresses --query IP_FIELDS`; what is not a list of strings is
    no address, and a VM without a private IP yet has none to give."""
    assert addresses({"name": "a", "private": ["10.0.0.4", "10.0.0.5"], "public": ["20.1.2.3"]}
                     ) == {"privateIps": "10.0.0.4,10.0.0.5", "publicIps": "20.1.2.3"}
    assert addresses({"name": "a", "private": ["10.0.0.4", 7, None], "public": "20.1.2.3"}
                     ) == {"privateIps": "10.0.0.4", "publicIps": ""}
    assert addresses({"name": "a", "private": [], "public": ["20.1.2.3"]}) is None
    assert addresses({"name": "a", "private": None}) is None


async def test_a_vm_in_flight_is_adopted_and_waited_for_never_created_again(
        sim: AzSim, launch: Launcher):
    rules(sim, defaults={"create_seconds": 300})  # 3 s: still in flight at the first look
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", OURS, "--no-wait")

    run = await launch()

    assert run.path == [L, A, W, V, OK]
    assert len(run.statuses("provisioning")) == 1
    assert sim.state()["create_counts"] == {"vm-1": 1}


async def test_a_failed_vm_of_ours_is_replaced_before_the_create(sim: AzSim, launch: Launcher):
    rules(sim, {"match": "vm-1", "attempts": [1], "fail": "InternalServerError"})
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", OURS, "--nic-delete-option", "Delete", check=False)

    run = await launch()

    assert run.path == [L, A, RP, C, V, OK]
    azure = sim.state()
    assert (azure["calls"]["vm delete"], azure["create_counts"]) == (1, {"vm-1": 2})
    assert run.failures() == []  # the VM found Failed was no attempt of ours


async def test_an_adopted_vm_that_vanishes_is_a_failed_attempt_then_created_again(
        sim: AzSim, launch: Launcher):
    rules(sim, defaults={"create_seconds": 600, "delete_seconds": 10})  # 6 s, 0.1 s
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", OURS, "--no-wait")
    running = asyncio.create_task(launch())
    await async_wait_until(lambda: sim.state()["calls"].get("vm list", 0) >= 2, timeout=20,
                           message="the lifecycle to wait for the adopted VM")
    sim.az("vm", "delete", "-g", RG, "-n", "vm-1", "--yes", "--no-wait")

    run = await asyncio.wait_for(running, 40)

    assert run.path == [L, A, W, CU, RT, L, C, V, OK]
    assert run.failures() == [("VmMissing", False)]
    assert sim.state()["create_counts"] == {"vm-1": 2}


async def test_a_vm_being_deleted_is_waited_for_then_created(sim: AzSim, launch: Launcher):
    rules(sim, defaults={"delete_seconds": 150})
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1")
    sim.az("vm", "delete", "-g", RG, "-n", "vm-1", "--yes", "--no-wait")

    run = await launch()

    assert run.path == [L, A, W, C, V, OK]
    assert sim.state()["calls"]["vm delete"] == 1  # only the one above


async def test_a_transient_failure_is_cleaned_up_and_retried_from_a_fresh_look(
        sim: AzSim, launch: Launcher):
    rules(sim, {"match": "vm-1", "attempts": [1], "fail": "InternalServerError"})

    run = await launch()

    assert run.path == [L, C, CU, RT, L, C, V, OK]
    assert run.failures() == [("InternalServerError", False)]
    assert run.result.attempts == 2
    assert sim.state()["calls"]["vm delete"] == 1  # the Failed VM of attempt 1


async def test_a_hung_create_times_out_and_is_retried(sim: AzSim, launch: Launcher):
    rules(sim, {"match": "vm-1", "attempts": [1], "hang": True})

    run = await launch(vm_spec(create_timeout=1.5))

    assert run.path == [L, C, CU, RT, L, C, V, OK]
    assert run.failures() == [("Timeout", False)]
    assert run.result.outcome is Outcome.READY


async def test_a_permanent_failure_gives_up_after_its_clean_up(sim: AzSim, launch: Launcher):
    rules(sim, {"match": "vm-1", "fail": "QuotaExceeded", "fail_phase": "preflight"})

    run = await launch()

    assert run.path == [L, C, CU, G, NO]
    assert run.failures() == [("QuotaExceeded", True)]
    assert sim.state()["create_attempts"] == {"vm-1": 1}


async def test_a_deadline_during_the_clean_up_of_a_final_failure_reports_no_second_one(
        sim: AzSim):
    rules(sim, {"match": "vm-1", "fail": "InvalidParameter"},
          defaults={"create_seconds": 10, "delete_seconds": 3000})  # clean-up: 30 s
    events: list[Message] = []

    async def emit(message: Message) -> None:
        events.append(message)

    def finals() -> list[str]:
        return [e.payload.error_code for e in events
                if isinstance(e.payload, Failed) and e.payload.final]

    observer = Tracked(AzCli(), interval=0.2)
    life = Lifecycle(vm_spec(), az=AzCli(), observer=observer, start=Step.LOOK,
                     report=Reporter(emit, deployment_id=DEPLOYMENT, vm_name="vm-1",
                                     source="test", id_seed="seed"))
    running = asyncio.create_task(life.run())
    try:
        await async_wait_until(lambda: finals() and life.step is CU, timeout=20,
                               message="the final failure's clean-up")
        running.cancel()  # what the poller does at the deadline, then:
        await asyncio.gather(running, return_exceptions=True)
        await life.abandon(deadline_error("the deployment deadline passed"))
    finally:
        await observer.close()

    assert finals() == ["InvalidParameter"]
    assert (life.step, life.error.code if life.error else None) == (NO, "InvalidParameter")


async def test_someone_elses_vm_is_neither_adopted_nor_deleted(sim: AzSim, launch: Launcher):
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", f"{TAG_DEPLOYMENT}=other")

    run = await launch()

    assert run.path == [L, A, G, NO]
    assert run.failures() == [("NotOurs", True)]
    assert "vm delete" not in sim.state()["calls"]


async def test_attempts_used_elsewhere_count_and_the_last_one_is_not_exceeded(
        sim: AzSim, launch: Launcher):
    run = await launch(vm_spec(max_attempts=2), used=2)

    assert run.path == [L, C, G, NO]
    assert run.failures() == [("RetriesExhausted", True)]
    assert "vm create" not in sim.state()["calls"]


async def test_a_fence_that_makes_the_create_wait_is_followed_by_a_fresh_look(
        sim: AzSim, launch: Launcher):
    loop = asyncio.get_running_loop()
    opens = loop.time() + 1.0

    run = await launch(fence=Handover(opens))

    assert run.path == [L, C, L, C, V, OK]
    assert sim.state()["vms"]["vm-1"]["created_at"] >= time.time() - (loop.time() - opens)


async def test_an_unreadable_vm_is_neither_created_nor_deleted(sim: AzSim, caplog):
    rules(sim, throttle={"first_calls": 1000, "code": "TooManyRequests",
                         "commands": ["vm show", "vm list"]})
    events: list[Message] = []

    async def emit(message: Message) -> None:
        events.append(message)

    report = Reporter(emit, deployment_id=DEPLOYMENT, vm_name="vm-1", source="test",
                      id_seed="seed")
    life = Lifecycle(vm_spec(create_timeout=1.0), az=AzCli(), report=report, start=Step.LOOK)

    result = await life.run()

    assert (result.outcome, life.step) == (Outcome.FAILED, Step.FAILED)
    assert result.error is not None and result.error.code == "VmStateUnknown"
    calls = sim.state()["calls"]
    assert "vm create" not in calls and "vm delete" not in calls


async def test_a_bad_request_is_refused_at_accept_without_an_az_call(sim: AzSim, launch: Launcher):
    run = await launch(vm_spec(name="bad_name"), start=Step.ACCEPT)

    assert run.path == [Step.ACCEPT, G, NO]
    assert run.failures() == [("InvalidRequest", True)]
    assert sim.state().get("calls", {}) == {}


async def test_a_vm_that_replaces_a_deleting_one_is_looked_at_afresh_never_adopted_untagged(
        sim: AzSim):
    # vm-1 (not ours) is being deleted when the lifecycle first looks, so it waits for it
    # to go. Between two listings (6 s apart) the deletion ends and someone else creates
    # another untagged vm-1: the wait's next listing says Succeeded, which must be looked
    # at afresh (ownership), not adopted.
    rules(sim, defaults={"delete_seconds": 100, "create_seconds": 50})
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1")
    sim.az("vm", "delete", "-g", RG, "-n", "vm-1", "--yes", "--no-wait")
    az, events = AzCli(), []

    async def emit(message: Message) -> None:
        events.append(message)

    observer = Tracked(az, interval=6.0)
    report = Reporter(emit, deployment_id=DEPLOYMENT, vm_name="vm-1", source="test",
                      id_seed="seed")
    life = asyncio.create_task(Lifecycle(vm_spec(), az=az, report=report,
                                         observer=observer).run())
    try:
        await async_wait_until(lambda: sim.state()["calls"].get("vm list", 0) >= 1,
                               timeout=20, message="the first listing")
        await async_wait_until(lambda: "vm-1" not in sim.state()["vms"], timeout=20,
                               message="the deletion to end")
        sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1")
        result = await asyncio.wait_for(life, 40)
    finally:
        await observer.close()

    assert result.outcome is Outcome.FAILED
    assert [e.payload.error_code for e in events if isinstance(e.payload, Failed)] == ["NotOurs"]
    shown = json.loads(sim.az("vm", "show", "-g", RG, "-n", "vm-1").stdout)
    assert shown["provisioningState"] == "Succeeded"  # left alone
    assert sim.state()["create_counts"] == {"vm-1": 2}  # both someone else's
