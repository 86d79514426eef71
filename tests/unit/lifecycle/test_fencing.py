"""The parts of "one owner per VM", each on its own: the envelope's generation, the reducer's
generation and owner filters, the worker's lease, the pipeline stopping at the fence before
a create or a delete, the poller's handover wait, and a duplicate ack of a new request.
Real `az` simulator and nats-server wherever a call is made."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import nats
import pytest
from conftest import AzSim, async_wait_until

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli
from vmlaunch.azure.writebudget import LocalBudget
from vmlaunch.bus.feed import DuplicateRequest, EventFeed, Generations, publish_request
from vmlaunch.bus.publish import dead_letter
from vmlaunch.bus.streams import ensure_streams
from vmlaunch.lifecycle.lease import Fenced, Lease
from vmlaunch.lifecycle.machine import Lifecycle
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.plans.plan import Plan
from vmlaunch.runner.pollmode import run_legacy
from vmlaunch.schema.messages import (
    Cancel,
    Complete,
    CreateRequest,
    Message,
    Status,
    Subject,
    decode,
    encode,
)
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.state.reducer import DeploymentView

pytestmark = pytest.mark.timeout(60)

DEPLOYMENT = "dep-fence"
RG = "rg-test"


def vm_spec(name: str = "vm-1") -> VMSpec:
    return VMSpec(name=name, resource_group=RG, image="Debian12", location="westus2",
                  zone="1", verify_ssh=False, verify_cloud_init=False, retry_backoff=0.05,
                  create_timeout=20.0)


@pytest.fixture
def sim(az_sim: AzSim, monkeypatch: pytest.MonkeyPatch) -> AzSim:
    """The simulator as `az` for an AzCli made in this process."""
    for key in ("AZ_CLI", "AZ_SIM_STATE", "AZ_SIM_SCENARIO"):
        monkeypatch.setenv(key, az_sim.env[key])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return az_sim


def event(payload: object, *, generation: int, source: str = "w1") -> Message:
    return Message(deployment_id=DEPLOYMENT, vm_name="vm-1", payload=payload,  # type: ignore[arg-type]
                   attempt=1, generation=generation, source=source)


CREATING = Status(state="creating", detail="az vm create")
DONE = Complete(public_ip="20.0.0.1", private_ip="10.0.0.4", vm_id="id", duration_seconds=1.0)


# --- the envelope -------------------------------------------------------------------------

def test_the_generation_travels_in_the_envelope_and_a_1_0_message_reads_as_0():
    message = event(CREATING, generation=7)
    assert decode(encode(message)).generation == 7
    body = json.loads(encode(message))
    del body["generation"]
    body["schema"] = "azure-vm-launch/1.0"
    assert decode(json.dumps(body).encode()).generation == 0


def test_a_negative_generation_is_refused():
    body = {**json.loads(encode(event(CREATING, generation=1))), "generation": -1}
    with pytest.raises(ValueError, match="generation: must not be negative"):
        decode(json.dumps(body).encode())


# --- the reducer --------------------------------------------------------------------------

def test_events_of_another_generation_change_nothing_whatever_their_time():
    view = DeploymentView(DEPLOYMENT, [vm_spec()])
    view.follow("vm-1", 2)
    old = Message(deployment_id=DEPLOYMENT, vm_name="vm-1", payload=DONE, attempt=1,
                  generation=1, source="w1", time="2999-01-01T00:00:00.000Z")
    assert view.apply(old) is None
    behind = Message(deployment_id=DEPLOYMENT, vm_name="vm-1", payload=DONE, attempt=1,
                     generation=2, source="w1", time="2000-01-01T00:00:00.000Z")
    assert view.apply(behind) is not None
    assert view.vms["vm-1"].ready


def test_after_a_handover_only_the_new_owners_events_count():
    view = DeploymentView(DEPLOYMENT, [vm_spec()])
    view.follow("vm-1", 1)
    change = view.apply(event(Cancel(reason="NATS lost", owner="legacy-poller"), generation=1,
                              source="orchestrator"))
    assert change is not None and change.log[0][0] == "vm_owner_changed"
    assert view.apply(event(Status(state="cancelled", detail="cancelled: NATS lost"),
                            generation=1)) is None
    assert not view.vms["vm-1"].failed
    assert view.apply(event(DONE, generation=1, source="legacy-poller")) is not None
    assert view.vms["vm-1"].ready


# --- the worker's lease -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_lease_is_renewed_by_confirmed_heartbeats_and_lapses_for_good():
    clock = Clock()
    lease = Lease(3.0, clock=clock)
    clock.now = 102.0
    lease.renew(sent_at=102.0)  # good until 105
    clock.now = 104.5
    await lease.allow("create", "vm-1")
    clock.now = 105.0
    with pytest.raises(Fenced, match="lapsed"):
        await lease.allow("create", "vm-1")
    lease.renew(sent_at=105.0)  # too late: the server may have given the request away
    with pytest.raises(Fenced):
        await lease.allow("delete", "vm-1")


async def test_a_known_cancel_fences_a_lease_at_once():
    lease = Lease(30.0, cancelled=lambda: "legacy-poller drives it now")
    with pytest.raises(Fenced, match="legacy-poller drives it now"):
        await lease.allow("delete", "vm-1")


# --- the pipeline at the fence --------------------------------------------------------------

async def fenced_launch(sim: AzSim) -> list[Message]:
    events: list[Message] = []

    async def emit(message: Message) -> None:
        events.append(message)

    report = Reporter(emit, deployment_id=DEPLOYMENT, vm_name="vm-1", source="w1",
                      id_seed="seed", generation=4)
    lapsed = Lease(0.0)
    with pytest.raises(Fenced):
        await Lifecycle(vm_spec(), az=AzCli(), report=report, fence=lapsed).run()
    return events


async def test_a_launch_without_its_lease_does_not_create(sim: AzSim):
    events = await fenced_launch(sim)

    assert "vm create" not in sim.state()["calls"]
    assert {e.generation for e in events} == {4}  # every event carries the request's


async def test_a_launch_without_its_lease_does_not_delete_a_failed_vm(sim: AzSim):
    sim.scenario({"time_scale": 0.01, "vms": [{"match": "vm-1", "fail": "InternalServerError"}]})
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", f"{TAG_DEPLOYMENT}={DEPLOYMENT}", check=False)  # ours, so deletable
    assert sim.state()["vms"]["vm-1"]["provisioningState"] == "Failed"

    await fenced_launch(sim)

    assert "vm delete" not in sim.state()["calls"]
    assert sim.state()["vms"]["vm-1"]["provisioningState"] == "Failed"


def quiet_report() -> Reporter:
    """A reporter of vm-1's first request that sends its events nowhere."""
    return Reporter(lambda _message: asyncio.sleep(0), deployment_id=DEPLOYMENT,
                    vm_name="vm-1", source="w1", id_seed="seed", generation=1)


def slow_creates(sim: AzSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                 seconds: int) -> None:
    """`az` whose `vm create` sleeps `seconds` before it starts (real az under load)."""
    slow = tmp_path / "slow-az"
    slow.write_text(f'#!/bin/sh\n[ "$1 $2" = "vm create" ] && sleep {seconds}\n'
                    f'exec {sim.env["AZ_CLI"]} "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setenv("AZ_CLI", str(slow))


async def test_a_create_its_fence_refuses_after_admission_gives_its_place_back(sim: AzSim):
    """Admitted, then refused at the fence: no PUT was made, so nothing stays in flight in
    the write budget (where it would count as made now for LONGEST_WRITE)."""
    budget = LocalBudget()
    report = quiet_report()
    # Cancelled the moment the budget has admitted the create.
    lease = Lease(60.0, cancelled=lambda: "cancelled meanwhile" if budget.ledger.pending else None)
    with pytest.raises(Fenced, match="cancelled meanwhile"):
        await Lifecycle(vm_spec(), az=AzCli(), report=report, fence=lease,
                        observer=Tracked(AzCli(), budget=budget)).run()
    assert "vm create" not in sim.state()["calls"]
    assert (budget.ledger.pending, len(budget.ledger.times)) == ([], 1)


async def test_a_create_still_on_its_way_when_the_lease_lapses_is_stopped_before_azure(
        sim: AzSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # `az vm create` slow to start (real az under load: a chaos run saw a create still
    # starting 4 s after its lease lapsed, and the request's next owner created it too).
    slow_creates(sim, tmp_path, monkeypatch, seconds=5)
    report = quiet_report()
    lease = Lease(1.5)  # no heartbeat confirmed: it lapses while the create starts
    started = asyncio.get_running_loop().time()
    with pytest.raises(Fenced, match="lapsed"):
        await Lifecycle(vm_spec(), az=AzCli(), report=report, fence=lease).run()
    assert asyncio.get_running_loop().time() - started < 4.5  # not after the create's end
    assert "vm create" not in sim.state()["calls"]  # it never reached Azure
    assert not [p for p in sim.processes() if "sleep" in " ".join(p.cmdline())]


async def test_a_launch_cancelled_while_its_create_starts_ends_that_create(
        sim: AzSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slow_creates(sim, tmp_path, monkeypatch, seconds=3)
    report = quiet_report()
    launch = asyncio.ensure_future(
        Lifecycle(vm_spec(), az=AzCli(), report=report, fence=Lease(30.0)).run())
    await async_wait_until(lambda: [p for p in sim.processes()
                                    if "sleep" in " ".join(p.cmdline())], timeout=10,
                           message="the create to start")
    launch.cancel()  # a vm.create.cancel, or the worker stopping
    with pytest.raises(asyncio.CancelledError):
        await launch
    # Its whole group is gone (a killed client commits nothing): no PUT can follow.
    assert not [p for p in sim.processes() if "sleep" in " ".join(p.cmdline())]
    assert "vm create" not in sim.state()["calls"]


# --- the poller's handover ------------------------------------------------------------------

async def test_the_poller_creates_nothing_before_the_handover(sim: AzSim):
    plan = Plan(deployment_id=DEPLOYMENT, resource_group=RG, vms=[vm_spec()])
    events: list[Message] = []
    loop = asyncio.get_running_loop()

    async def sink(message: Message) -> None:
        events.append(message)

    started = loop.time()
    created_at: list[float] = []

    async def watch() -> None:
        while not created_at:
            if "vm-1" in sim.state()["vms"]:
                created_at.append(loop.time())
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    await run_legacy(plan, az=AzCli(), sink=sink, poll_interval=0.2, concurrency=2,
                     private_key=None, deadline=started + 40, handover_at=started + 3.0,
                     generations={"vm-1": 5})
    await asyncio.wait_for(watcher, 5)

    assert created_at[0] >= started + 3.0
    assert any(isinstance(e.payload, Complete) for e in events)
    assert {e.generation for e in events} == {5}


# --- generations on the bus -----------------------------------------------------------------

async def test_a_duplicate_ack_of_a_new_request_is_an_error(nats_server):
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await publish_request(js, vm_spec(), deployment_id=DEPLOYMENT, generation=1)
        # Resuming: the duplicate is the expected answer.
        await publish_request(js, vm_spec(), deployment_id=DEPLOYMENT, generation=1,
                              fresh=False)
        with pytest.raises(DuplicateRequest, match="generation 1 of vm-1"):
            await publish_request(js, vm_spec(), deployment_id=DEPLOYMENT, generation=1)
    finally:
        await nc.close()


async def test_generations_are_reserved_past_every_one_used(nats_server):
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        await ensure_streams(nc.jetstream())
        store = await Generations.open(nc.jetstream())
        assert await store.reserve(DEPLOYMENT, "vm-1", 1) == 1
        assert await store.reserve(DEPLOYMENT, "vm-1", 1) == 2  # a state file lost meanwhile
        assert await store.reserve(DEPLOYMENT, "vm-1", 7) == 7  # a state file ahead of it
        again = await Generations.open(nc.jetstream())
        assert await again.reserve(DEPLOYMENT, "vm-1", 1) == 8
    finally:
        await nc.close()


async def test_a_cancel_sent_on_an_event_subject_changes_no_owner(nats_server):
    """A worker may publish events but not cancels: a message typed as a cancel that it
    sends on an event subject must not reach the reducer (it would hand the VM to an
    owner of its choosing, whose events alone would count)."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        forged = Message(deployment_id=DEPLOYMENT, vm_name="vm-1", source="w1", generation=1,
                         payload=Cancel(reason="forged", owner="nobody"))
        genuine = Message(deployment_id=DEPLOYMENT, vm_name="vm-1", source="w1", generation=1,
                          payload=Status(state="creating", detail="az vm create"))
        await js.publish(Subject.STATUS.value, encode(forged))
        await js.publish(Subject.STATUS.value, encode(genuine))
        seen: list[Message] = []

        async def collect(message: Message) -> None:
            seen.append(message)

        feed = EventFeed(nc, collect, start=None, deployment_id=DEPLOYMENT,
                         by_event_time=False)
        task = asyncio.create_task(feed.run())
        await asyncio.wait_for(feed.caught_up.wait(), 10)
        await feed.stop(task)
    finally:
        await nc.close()
    assert [m.event_id for m in seen] == [genuine.event_id]
    view = DeploymentView(DEPLOYMENT, [vm_spec()])
    view.follow("vm-1", 1)
    for message in seen:
        view.apply(message)
    assert view.vms["vm-1"].owner in (None, "")


def test_a_dead_letter_names_its_requests_generation_and_spares_the_next():
    """A request left in the queue by an earlier run (generation 1) that goes over the
    delivery limit while a rerun's generation 2 is being created must not fail the VM."""
    old = Message(deployment_id=DEPLOYMENT, vm_name="vm-1", generation=1, source="test",
                  payload=CreateRequest(spec=vm_spec()))
    dead = dead_letter(encode(old), reason="delivered 6 times", request=old, deliveries=6,
                       source="w1", seq=7)
    assert dead.generation == 1
    view = DeploymentView(DEPLOYMENT, [vm_spec()])
    view.follow("vm-1", 2)
    view.apply(dead)
    assert not view.vms["vm-1"].failed


async def test_the_poller_decides_on_a_fresh_read_once_the_handover_comes(sim: AzSim):
    # Found Failed while a worker may still hold the VM: by the time the poller may delete,
    # that worker has replaced it with a good VM. The stale read must not delete that one.
    sim.scenario({"time_scale": 0.01, "location": "westus2",
                  "vms": [{"match": "vm-1", "attempts": [1], "fail": "InternalServerError"}]})
    ours = f"{TAG_DEPLOYMENT}={DEPLOYMENT}"
    sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
           "--tags", ours, check=False)
    assert sim.state()["vms"]["vm-1"]["provisioningState"] == "Failed"
    plan = Plan(deployment_id=DEPLOYMENT, resource_group=RG, vms=[vm_spec()])
    loop = asyncio.get_running_loop()
    started = loop.time()
    polled = asyncio.Event()

    async def sink(message: Message) -> None:
        pass

    async def worker_replaces_it() -> None:  # what the worker holding the lease did
        while sim.state()["calls"].get("vm list", 0) < 1:
            await asyncio.sleep(0.05)
        sim.az("vm", "delete", "-g", RG, "-n", "vm-1", "--yes")
        sim.az("vm", "create", "-g", RG, "-n", "vm-1", "--image", "Debian12", "--zone", "1",
               "--tags", ours)
        polled.set()

    worker = asyncio.create_task(worker_replaces_it())
    await run_legacy(plan, az=AzCli(), sink=sink, poll_interval=0.2, concurrency=2,
                     private_key=None, deadline=started + 40, handover_at=started + 3.0)
    await asyncio.wait_for(worker, 5)

    azure = sim.state()
    assert azure["create_counts"] == {"vm-1": 2}  # the failed one and the worker's
    assert azure["calls"]["vm delete"] == 1  # the worker's; the poller adopted its VM
    assert azure["vms"]["vm-1"]["provisioningState"] == "Succeeded"
