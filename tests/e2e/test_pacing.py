"""Fleet-wide write pacing (issue 10): every worker's creates share one budget in the KV
bucket VM_PACING. Real nats-server, real `vm_launcher.py serve` processes, the simulator
with a small PutVM budget (time_scale 0.01: a create takes 0.6 s). AckWait is 10 s where
many creates run at once, so that a loaded machine does not redeliver requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from conftest import async_wait_until
from nats.js.errors import KeyNotFoundError
from workerkit import Bus, RestartableNats, running, spec

from vmlaunch.azure.writebudget import Ledger
from vmlaunch.bus.pacing import KEY
from vmlaunch.bus.streams import PACING_BUCKET, PACING_STREAM
from vmlaunch.schema.messages import Complete, Failed, Subject

pytestmark = pytest.mark.timeout(120)

# The workers admit 10 creates per 4 s; the simulator's bucket is 10 per 2 s, so that the
# time between an admission and its PUT (an az process starting, up to JITTER) never
# makes the simulator see more than the workers admitted. A 1 s JITTER was too little in
# a full suite on 2 cores: a create runs 19 nicer than the tool, and under load its start
# was late by more (17 throttles, 1 suite of 3).
WINDOW, JITTER = 4.0, 2.0
BUDGET = f"10/{WINDOW:g}"
SIM_BUDGET = {"PutVM3Min": {"calls": 10, "seconds": 200}}  # 200 s simulated = 2 s


def creates_in_windows(times: list[float], calls: int, seconds: float) -> list[float]:
    """The start of each window of `seconds` that holds more than `calls` creates."""
    times = sorted(times)
    return [t for i, t in enumerate(times)
            if i + calls < len(times) and times[i + calls] - t < seconds]


def finished(bus: Bus, name: str) -> bool:
    """Ready, or failed for good."""
    return bool(bus.of(name, Complete)) or any(m.payload.final for m in bus.of(name, Failed))


async def shared_pause(bus: Bus, *, after: float, timeout: float = 20.0) -> float:
    """The ledger's "no writes before" once a worker has shared one later than `after`."""
    bucket, deadline = await bus.js.key_value(PACING_BUCKET), time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyNotFoundError):
            ledger = Ledger.decode((await bucket.get(KEY)).value, time.time())
            if ledger.not_before > after:
                return ledger.not_before
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for a shared pause")


async def test_three_workers_keep_thirty_creates_inside_one_shared_budget(
        nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "put_vm_budget": SIM_BUDGET})
    names = [f"vm-{i:02d}" for i in range(30)]
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        for worker_id in ("w1", "w2", "w3"):
            w.start(worker_id, "--concurrency", "5", "--write-budget", BUDGET, ack_wait=10.0)
        await bus.wait_for_workers(3)
        for name in names:
            await bus.request(spec(name))
        await bus.wait_for(lambda: all(finished(bus, n) for n in names), timeout=90,
                           message="30 VMs finished")
        state = az_sim.state()
    assert state["put_vm_budget"]["PutVM3Min"]["throttled"] == 0
    assert all(bus.of(n, Complete) for n in names)
    assert state["create_counts"] == dict.fromkeys(names, 1)
    assert {bus.of(n, Complete)[0].source for n in names} == {"w1", "w2", "w3"}
    created = [state["vms"][n]["created_at"] for n in names]
    assert creates_in_windows(created, 10, WINDOW - JITTER) == []
    assert max(created) - min(created) >= 2 * WINDOW - JITTER  # three windows' worth


async def test_a_throttle_met_by_one_worker_holds_every_worker_s_creates_for_its_retry_after(
        nats_server, az_sim, tmp_path):
    retry_after = 8
    az_sim.scenario({"time_scale": 0.01, "throttle": {
        "first_calls": 1, "commands": ["vm create"], "code": "SubscriptionRequestsThrottled",
        "message": "Number of 'write' requests for subscription 'sub' actually exceeded the "
                   f"limit of '1200' for time interval '01:00:00'. Please try again after "
                   f"'{retry_after}' seconds."}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        for worker_id in ("w1", "w2", "w3"):
            w.start(worker_id, "--concurrency", "1", ack_wait=10.0)
        await bus.wait_for_workers(3)
        published = time.time()  # before the throttle, and so before its pause began
        await bus.request(spec("vm-first"))
        await async_wait_until(lambda: az_sim.state()["throttled_calls_seen"] == 1,
                               timeout=20, message="the first create to be throttled")
        assert await shared_pause(bus, after=published) >= published + retry_after
        for name in ("vm-a", "vm-b"):
            await bus.request(spec(name))
        names = ("vm-first", "vm-a", "vm-b")
        await bus.wait_for(lambda: all(bus.of(n, Complete) for n in names), timeout=60,
                           message="3 VMs complete")
        state = az_sim.state()
    throttled_by = bus.of("vm-first", Complete)[0].source
    others = {bus.of(n, Complete)[0].source for n in ("vm-a", "vm-b")}
    assert throttled_by not in others  # the pause held workers that never met the 429
    for name in names:
        assert state["vms"][name]["created_at"] >= published + retry_after, name


async def test_the_fleet_counts_a_create_from_when_its_az_ended_not_from_its_admission(
        nats_server, az_sim, tmp_path):
    # An `az vm create` slow to start, as a nice create on a busy machine is: Azure counts
    # its PUT when it arrives, so the shared ledger must not keep the earlier admission.
    slow = tmp_path / "slow-az"
    slow.write_text(f'#!/bin/sh\n[ "$1 $2" = "vm create" ] && sleep 1.5\n'
                    f'exec {az_sim.env["AZ_CLI"]} "$@"\n')
    slow.chmod(0o755)
    az_sim.scenario({"time_scale": 0.01})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", env={"AZ_CLI": str(slow)}, ack_wait=10.0)
        await bus.request(spec("vm-1"))
        await bus.wait_for_event("vm-1", Subject.COMPLETE.value, timeout=30)
        bucket = await bus.js.key_value(PACING_BUCKET)
        ledger = Ledger.decode((await bucket.get(KEY)).value, time.time())
    put_at = az_sim.state()["vms"]["vm-1"]["created_at"]  # when the simulator had it
    assert len(ledger.times) == 1
    # Counted from the end of its az, after the PUT (moved long before the VM completed).
    assert ledger.times[0] >= put_at


@pytest.mark.parametrize("value", [
    b"garbage \xff", b'{"v": 1, "times": "no"}',
    json.dumps({"v": 1, "times": [], "not_before": time.time() + 10**7}).encode()],
    ids=["not-json", "wrong-shape", "pause-for-months"])
async def test_a_value_in_the_bucket_that_is_not_a_ledger_is_replaced_not_trusted(
        nats_server, az_sim, tmp_path, value):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        bucket = await bus.js.key_value(PACING_BUCKET)
        await bucket.put(KEY, value)
        w.start("w1")
        await bus.request(spec("vm-1"))
        await bus.wait_for_event("vm-1", Subject.COMPLETE.value, timeout=30)
        ledger = Ledger.decode((await bucket.get(KEY)).value, time.time())
    assert len(ledger.times) == 1 and ledger.not_before == 0.0
    assert "holds a value this tool did not write" in w.log("w1")


async def test_with_nats_away_a_waiting_worker_goes_on_with_its_own_budget_and_says_so_once(
        az_sim, tmp_path):
    server = RestartableNats(tmp_path / "nats")
    server.start()
    try:
        async with Bus(server.url) as bus, running(server.url, az_sim, tmp_path) as w:
            bucket = await bus.js.key_value(PACING_BUCKET)
            # A fleet-wide pause far longer than the test: only the fallback lets vm-1 go.
            await bucket.put(KEY, Ledger([], time.time() + 600).encode())
            w.start("w1", ack_wait=30.0)  # its lease outlasts the outage
            await bus.request(spec("vm-1"))
            await bus.wait_for_event("vm-1", "creating", timeout=20)
            assert "vm-1" not in az_sim.state()["create_counts"]
            server.stop()
            await async_wait_until(lambda: "vm-1" in az_sim.state()["create_counts"],
                                   timeout=40, message="vm-1 created while NATS is away")
            server.start()
            await bus.wait_no_pending_requests(timeout=40)  # finished and acknowledged
    finally:
        server.stop()
    assert w.log("w1").count("shared write budget (VM_PACING) cannot be used") == 1


async def test_the_bucket_is_made_with_the_other_streams(nats_server):
    async with Bus(nats_server.url) as bus:  # Bus runs ensure_streams
        info = await bus.js.stream_info(PACING_STREAM)
    assert info.config.max_msgs_per_subject == 1
