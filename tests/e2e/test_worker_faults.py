"""The worker against poison, restarts, lost consumers and signals: real nats-server, real
`vm_launcher.py serve` processes, the simulator. Every fetched request is settled once."""

from __future__ import annotations

import asyncio
import signal

import pytest
from conftest import async_wait_until
from hostile import PUBLISHABLE
from workerkit import Bus, RestartableNats, no_orphans, running, spec

from vmlaunch.bus.connection import REQUESTS_STREAM, WORKER_CONSUMER
from vmlaunch.bus.streams import consumer_exists
from vmlaunch.schema.messages import Complete, DeadLetter, Status

pytestmark = pytest.mark.timeout(120)


def dead_letters(bus: Bus) -> list[DeadLetter]:
    return [m.payload for m in bus.events if isinstance(m.payload, DeadLetter)]


async def test_every_hostile_request_is_dead_lettered_on_its_first_delivery(
        nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        worker = w.start("w1")
        for data in PUBLISHABLE.values():
            await bus.publish_raw(data)
        letters = await bus.wait_for(lambda: len(d := dead_letters(bus)) >= len(PUBLISHABLE)
                                     and d, timeout=60, message="every dead letter")
        assert len(letters) == len(PUBLISHABLE)
        assert [letter.deliveries for letter in letters] == [1] * len(PUBLISHABLE)
        assert all(letter.reason.startswith("unreadable request: ") for letter in letters)
        assert not [letter for letter in letters if "secret" in letter.excerpt]
        await bus.request(spec("vm-after-poison"))  # the worker keeps serving
        await bus.wait_for(lambda: bus.of("vm-after-poison", Complete), timeout=30)
        await bus.wait_no_pending_requests()
        assert worker.poll() is None
        assert "secret" not in w.log("w1")
        assert az_sim.state()["create_counts"] == {"vm-after-poison": 1}


async def test_graceful_restarts_during_one_long_create_never_dead_letter_it(
        nats_server, az_sim, tmp_path):
    # Six graceful stops of the worker holding the request, one more than --max-deliveries:
    # the seventh delivery is its first failure-free count, so the VM is adopted, not
    # dead-lettered. Three workers take turns, so that a restart's start-up overlaps the
    # next holder's work; the create (20 s) outlasts the six restarts.
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 2000}})
    args = ("--max-deliveries", "5", "--grace", "0")
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        for worker_id in ("a", "b", "c"):
            w.start(worker_id, *args)
        await bus.wait_for_workers(3)
        await bus.request(spec("vm-long"))
        for delivery in range(1, 7):
            accepted = await bus.wait_for(
                lambda n=delivery: len(a := [m for m in bus.of("vm-long", Status)
                                             if m.payload.state == "accepted"]) >= n and a,
                timeout=30, message=f"delivery {delivery} to be accepted")
            holder = accepted[delivery - 1].source
            if delivery == 1:
                await bus.wait_for_event("vm-long", "creating")
            w.signal(holder, signal.SIGTERM)
            assert await w.wait_exit(holder) == 0
            w.start(holder, *args)
        await bus.wait_for(lambda: bus.of("vm-long", Complete), timeout=60)
        assert not bus.of("vm-long", DeadLetter)
        states = [m.payload.state for m in bus.of("vm-long", Status)]
        assert states.count("accepted") == 7 and states.count("creating") == 1
        assert az_sim.state()["create_counts"] == {"vm-long": 1}
        await bus.wait_no_pending_requests()


async def test_redeliveries_to_a_holder_whose_work_went_on_are_not_failures(
        nats_server, az_sim, tmp_path):
    # The holder is frozen four times for longer than its AckWait (the fault is the length
    # of the freeze, so it is slept), and each time the request comes back to it while its
    # create goes on. Then it is SIGKILLed: its one failure, which may have cost two
    # deliveries (the one it held, and one the server put into its frozen fetch). The next
    # worker counts at most four failed deliveries out of seven or more (a loaded machine
    # may add one), within its limit of four, and adopts the VM instead of dead-lettering
    # it; counting every delivery, as before, dead-letters it.
    # The create (30 s) ends within the adopting worker's 30 s wait however long the freezes
    # took: it adopts when the create is at least a few seconds old.
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 3000}})
    args = ("--max-deliveries", "4")
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("a", *args, ack_wait=1.0)
        await bus.request(spec("vm-frozen"))
        # Its PUT in Azure, not only the "creating" event: a freeze before the PUT fences
        # the create (the lease lapsed), and the next worker would create it itself.
        await async_wait_until(lambda: "vm-frozen" in az_sim.state()["vms"], timeout=30,
                               message="the create to reach Azure")

        def comebacks() -> int:
            return w.log("a").count("came back while in flight")

        for freeze in range(1, 5):
            before = comebacks()
            w.signal("a", signal.SIGSTOP)
            await asyncio.sleep(2.5)
            w.signal("a", signal.SIGCONT)
            await async_wait_until(lambda n=before: comebacks() > n, timeout=20,
                                   message=f"redelivery to the holder after freeze {freeze}")
        w.signal("a", signal.SIGKILL)
        await w.wait_exit("a")
        w.start("b", *args, ack_wait=1.0)
        await bus.wait_for(lambda: bus.of("vm-frozen", Complete), timeout=90)
        assert not bus.of("vm-frozen", DeadLetter)
        assert [m.source for m in bus.of("vm-frozen", Complete)] == ["b"]
        assert az_sim.state()["create_counts"] == {"vm-frozen": 1}
        await bus.wait_no_pending_requests()


async def test_a_deleted_consumer_is_recreated_and_the_next_request_served(
        nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.wait_for_workers(1)
        await bus.js.delete_consumer(REQUESTS_STREAM, WORKER_CONSUMER)
        await bus.request(spec("vm-after-wipe"))
        await bus.wait_for(lambda: bus.of("vm-after-wipe", Complete), timeout=30)
        assert f"the consumer {WORKER_CONSUMER} is gone; recreating it" in w.log("w1")
        await bus.wait_no_pending_requests()


async def test_a_deleted_stream_is_recreated_and_the_next_request_served(
        nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.wait_for_workers(1)
        await bus.js.delete_stream(REQUESTS_STREAM)
        await async_wait_until(lambda: "recreating it" in w.log("w1"), timeout=20,
                               message="the worker to start recreating the stream")
        for _ in range(200):  # the log line comes first; publish once the stream is back
            if await consumer_exists(bus.js):
                break
            await asyncio.sleep(0.1)
        await bus.request(spec("vm-after-stream-loss"))
        await bus.wait_for(lambda: bus.of("vm-after-stream-loss", Complete), timeout=30)


async def test_a_worker_whose_stream_became_unusable_exits_3_with_the_reason(
        nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.wait_for_workers(1)
        await bus.js.delete_stream(REQUESTS_STREAM)  # and an admin recreates it wrongly
        await bus.js.add_stream(name=REQUESTS_STREAM, subjects=["vm.create.request"],
                                retention="limits")
        assert await w.wait_exit("w1", timeout=30) == 3
        log = w.log("w1")
        assert "cannot serve any longer" in log
        assert f"stream {REQUESTS_STREAM} exists but retention is limits" in log


async def test_sighup_stops_a_worker_gracefully_like_sigterm(nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 300}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("hung-up", "--grace", "0.3")
        await bus.request(spec("vm-hup"))
        await bus.wait_for_event("vm-hup", "creating")
        w.signal("hung-up", signal.SIGHUP)
        assert await w.wait_exit("hung-up") == 0
        assert "SIGHUP: stopping" in w.log("hung-up")
        assert "released 1 unfinished request" in w.log("hung-up")
        await async_wait_until(lambda: no_orphans(az_sim), timeout=10, message="no az left")
        w.start("heir")
        await bus.wait_for(lambda: bus.of("vm-hup", Complete), timeout=30)
        assert az_sim.state()["create_counts"] == {"vm-hup": 1}


@pytest.mark.parametrize("server_back", [False, True], ids=["server-gone", "server-restarting"])
async def test_a_worker_stopping_while_nats_is_away_exits_0_without_a_traceback(
        az_sim, tmp_path, server_back):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 300}})
    server = RestartableNats(tmp_path / "nats")
    server.start()
    try:
        async with running(server.url, az_sim, tmp_path) as w:
            async with Bus(server.url) as bus:
                w.start("w1", "--grace", "0")
                await bus.request(spec("vm-away"))
                await bus.wait_for_event("vm-away", "creating")
            server.stop()
            w.signal("w1", signal.SIGTERM)
            if server_back:
                server.start()
            assert await w.wait_exit("w1", timeout=30) == 0
            assert "Traceback" not in w.log("w1")
    finally:
        server.stop()
