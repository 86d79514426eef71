"""The NATS worker: real nats-server, real `vm_launcher.py serve` processes, the simulator.

Durations are the simulator's defaults scaled by time_scale 0.01 (a create takes 0.6 s)
unless a test sets its own; the shared consumer's AckWait is 2 s (`--ack-wait`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from conftest import PYTHON, REPO, async_wait_until
from verifykit import sshd_server
from workerkit import (
    Bus,
    RestartableNats,
    no_orphans,
    running,
    secret_request,
    spec,
)

from vmlaunch.bus.connection import REQUESTS_STREAM, WORKER_CONSUMER
from vmlaunch.bus.streams import ensure_worker_consumer
from vmlaunch.schema.messages import (
    SCHEMA,
    Cancel,
    CloudInitComplete,
    Complete,
    CreateRequest,
    DeadLetter,
    Failed,
    Message,
    SshVerified,
    Status,
    Subject,
    encode,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on loopback; the simulator gives every VM the public IP 127.0.0.1."""
    yield from sshd_server(tmp_path)


def payloads(events: list[Message], kind: type) -> list:
    return [m.payload for m in events if isinstance(m.payload, kind)]


async def test_one_vm_goes_through_the_exact_event_sequence(nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        request = await bus.request(spec("vm-happy", verify_cloud_init=True))
        await bus.wait_for_event("vm-happy", Subject.CLOUDINIT_COMPLETE.value)
        events = bus.of("vm-happy")
        assert bus.states("vm-happy") == [
            "accepted", "creating", "vm.create.complete", "verifying", "vm.cloudinit.complete"]
        sim_vm = az_sim.state()["vms"]["vm-happy"]
        (complete,) = payloads(events, Complete)
        assert (complete.public_ip, complete.private_ip) == (sim_vm["public_ip"],
                                                             sim_vm["private_ip"])
        assert (complete.zone, complete.size) == ("1", "Standard_D2s_v5")
        assert complete.vm_id.endswith("/virtualMachines/vm-happy")
        (cloud,) = payloads(events, CloudInitComplete)
        assert cloud.result == "done"
        creating = payloads(events, Status)[1]
        assert creating.detail == "az vm create vm-happy (Standard_D2s_v5, zone 1)"
        assert {(m.deployment_id, m.source, m.attempt) for m in events} == {("dep-1", "w1", 1)}
        assert len({m.event_id for m in events}) == len(events)
        assert request.event_id not in {m.event_id for m in events}
        await bus.wait_no_pending_requests()
        assert az_sim.state()["create_counts"] == {"vm-happy": 1}



async def test_twenty_vms_over_three_workers_are_each_created_once_by_all_of_them(
        nats_server, az_sim, tmp_path):
    names = [f"vm-{i:02d}" for i in range(20)]
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        for worker_id in ("w1", "w2", "w3"):
            w.start(worker_id)
        await bus.wait_for_workers(3)
        for name in names:
            await bus.request(spec(name))
        await bus.wait_for(lambda: all(bus.of(n, Complete) for n in names), timeout=60,
                           message="20 VMs complete")
        await bus.wait_no_pending_requests()
        assert az_sim.state()["create_counts"] == dict.fromkeys(names, 1)
        assert {bus.of(n, Complete)[0].source for n in names} == {"w1", "w2", "w3"}
        assert not [m for m in bus.events if isinstance(m.payload, Failed)]


async def test_a_worker_killed_mid_create_is_replaced_without_a_second_create(
        nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 400}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("doomed")
        await bus.request(spec("vm-kill"))
        await async_wait_until(lambda: "vm-kill" in az_sim.state()["vms"], timeout=20,
                               message="the create to reach Azure")
        w.signal("doomed", signal.SIGKILL)
        await w.wait_exit("doomed")
        await async_wait_until(lambda: no_orphans(az_sim), timeout=10,
                               message="the killed worker's az to die with it")
        w.start("heir")
        complete = (await bus.wait_for(lambda: bus.of("vm-kill", Complete), timeout=30))[0]
        assert complete.source == "heir"
        heir = [m.payload.state for m in bus.of("vm-kill", Status) if m.source == "heir"]
        assert heir == ["accepted", "provisioning"]  # adopted, not created again
        assert az_sim.state()["create_counts"] == {"vm-kill": 1}
        await bus.wait_no_pending_requests()
    assert no_orphans(az_sim)


@pytest.mark.parametrize("code", ["InternalServerError", "ZonalAllocationFailed"])
async def test_a_transient_failure_twice_is_retried_until_success(
        nats_server, az_sim, tmp_path, code):
    az_sim.scenario({"time_scale": 0.01,
                     "vms": [{"match": "vm-flaky", "attempts": [1, 2], "fail": code}]})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.request(spec("vm-flaky"))
        await bus.wait_for(lambda: bus.of("vm-flaky", Complete), timeout=30)
        failures = payloads(bus.of("vm-flaky"), Failed)
        assert [(f.error_code, f.final, f.attempts) for f in failures] == [
            (code, False, 1), (code, False, 2)]
        assert bus.states("vm-flaky") == [
            "accepted", "creating", "vm.create.failed", "deleting", "retrying",
            "creating", "vm.create.failed", "deleting", "retrying",
            "creating", "vm.create.complete"]
        assert bus.of("vm-flaky", Complete)[0].attempt == 3


@pytest.mark.parametrize("code", ["InvalidParameter", "OperationNotAllowed"],
                         ids=["invalid-parameter", "quota"])
async def test_a_permanent_failure_is_final_at_once(nats_server, az_sim, tmp_path, code):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "vm-bad", "fail": code, "fail_phase": "preflight"}]})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.request(spec("vm-bad"))
        await bus.wait_for_event("vm-bad", Subject.FAILED.value)
        await bus.wait_no_pending_requests()
        (failed,) = payloads(bus.of("vm-bad"), Failed)
        assert (failed.error_code, failed.final, failed.retryable, failed.attempts) == (
            code, True, False, 1)
        assert bus.states("vm-bad") == ["accepted", "creating", "vm.create.failed"]
        assert az_sim.state()["calls"]["vm create"] == 1


async def test_a_capacity_failure_moves_to_the_fallback_zone(nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "vm-cap", "attempts": [1], "fail": "ZonalAllocationFailed"}]})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.request(spec("vm-cap", fallback_zones=["3"]))
        (complete,) = await bus.wait_for(lambda: payloads(bus.of("vm-cap"), Complete))
        creating = [s for s in payloads(bus.of("vm-cap"), Status) if s.state == "creating"]
        assert [s.zone for s in creating] == ["1", "3"]
        assert complete.zone == "3"
        assert az_sim.state()["vms"]["vm-cap"]["zone"] == "3"


async def test_a_hung_create_is_killed_at_its_timeout_and_retried(nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "vm-hang", "attempts": [1], "hang": True}]})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.request(spec("vm-hang", create_timeout=1.5))
        await bus.wait_for(lambda: bus.of("vm-hang", Complete), timeout=30)
        (failed,) = payloads(bus.of("vm-hang"), Failed)
        assert (failed.error_code, failed.final) == ("Timeout", False)
        assert az_sim.state()["create_attempts"] == {"vm-hang": 2}
        await async_wait_until(lambda: no_orphans(az_sim), timeout=10, message="no az left")


async def test_unreadable_requests_are_dead_lettered_and_the_worker_keeps_serving(
        nats_server, az_sim, tmp_path):
    newer = encode(secret_request("vm-new")).replace(
        f'"{SCHEMA}"'.encode(), b'"azure-vm-launch/2.0"')
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.publish_raw(b"\x00garbage, not json")
        await bus.publish_raw(newer)
        await bus.request(spec("vm-good"))
        await bus.wait_for(lambda: bus.of("vm-good", Complete))
        letters = await bus.wait_for(lambda: len(dead := [
            m for m in bus.events if isinstance(m.payload, DeadLetter)]) == 2 and dead)
        reasons = {m.deployment_id: m.payload.reason for m in letters}
        assert reasons.keys() == {"unknown", "dep-1"}  # read from the JSON when it is JSON
        assert "not JSON" in reasons["unknown"]
        assert "unsupported schema version 2.0" in reasons["dep-1"]
        assert {m.payload.subject for m in letters} == {Subject.REQUEST.value}
        assert not [m for m in letters if "secret" in m.payload.excerpt]
        assert "secret" not in w.log("w1")
        await bus.wait_no_pending_requests()


async def test_a_request_delivered_too_often_is_dead_lettered(nats_server, az_sim, tmp_path):
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        await ensure_worker_consumer(bus.js, ack_wait=2.0)
        await bus.publish_raw(encode(secret_request("vm-often")))
        sub = await bus.js.pull_subscribe_bind(durable=WORKER_CONSUMER, stream=REQUESTS_STREAM)
        (first,) = await sub.fetch(1, timeout=5)
        await first.nak()  # delivery 1 given back; the worker gets delivery 2
        await sub.unsubscribe()
        w.start("w1", "--max-deliveries", "1")
        (letter,) = await bus.wait_for(lambda: bus.of("vm-often", DeadLetter))
        assert letter.payload.deliveries == 2
        assert "delivered 2 times" in letter.payload.reason
        assert "secret" not in letter.payload.excerpt
        await bus.wait_no_pending_requests()
        assert az_sim.state()["calls"] == {}
    assert "secret" not in w.log("w1")


async def test_sigterm_with_work_in_flight_releases_it_to_another_worker(
        nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 300}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("leaving", "--grace", "0.3")
        await bus.request(spec("vm-term"))
        await async_wait_until(lambda: "vm-term" in az_sim.state()["vms"], timeout=20,
                               message="the create to reach Azure")
        w.signal("leaving", signal.SIGTERM)
        assert await w.wait_exit("leaving") == 0
        assert no_orphans(az_sim)
        assert "released 1 unfinished request" in w.log("leaving")
        w.start("taking-over")
        complete = (await bus.wait_for(lambda: bus.of("vm-term", Complete), timeout=30))[0]
        assert complete.source == "taking-over"
        assert az_sim.state()["create_counts"] == {"vm-term": 1}
        await bus.wait_no_pending_requests()


async def test_a_second_sigterm_ends_the_grace_period_at_once(nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 3000}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("leaving", "--grace", "60")
        await bus.request(spec("vm-hurry"))
        await bus.wait_for_event("vm-hurry", "creating")
        w.signal("leaving", signal.SIGTERM)
        await async_wait_until(lambda: "waiting up to 60 s" in w.log("leaving"), timeout=10,
                               message="the grace period to begin")
        w.signal("leaving", signal.SIGTERM)
        assert await w.wait_exit("leaving", timeout=10) == 0
        assert "released 1 unfinished request" in w.log("leaving")
        assert no_orphans(az_sim)
        assert await bus.pending_requests() == 1  # nak'ed: waiting for the next worker


async def test_a_cancel_stops_the_deployment_and_a_later_rerun_is_served(
        nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 1000}})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--concurrency", "1")
        await bus.request(spec("vm-c1"), deployment_id="dep-c")
        await bus.request(spec("vm-c2"), deployment_id="dep-c")  # waits: concurrency 1
        await bus.wait_for_event("vm-c1", "creating")
        await bus.cancel("dep-c")
        await bus.wait_for_event("vm-c1", "cancelled")
        await bus.wait_for_event("vm-c2", "cancelled")  # published before the cancel
        await async_wait_until(lambda: no_orphans(az_sim), timeout=10, message="no az left")
        assert bus.states("vm-c2") == ["cancelled"]
        await bus.wait_no_pending_requests()
        az_sim.scenario({"time_scale": 0.01})
        await bus.request(spec("vm-c2"), deployment_id="dep-c")  # a rerun after the cancel
        await bus.wait_for(lambda: bus.of("vm-c2", Complete))
        stats = (await bus.services())[0]["endpoints"][0]["data"]
        assert (stats["cancelled"], stats["completed"]) == (2, 1)


async def test_the_micro_service_reports_each_workers_counts(nats_server, az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "vm-no", "fail": "InvalidParameter", "fail_phase": "preflight"}]})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--concurrency", "3")
        await bus.request(spec("vm-yes"))
        await bus.request(spec("vm-no"))
        await bus.wait_for(lambda: bus.of("vm-yes", Complete) and bus.of("vm-no", Failed))
        expected = {"worker_id": "w1", "in_flight": 0, "completed": 1, "failed": 1,
                    "concurrency": 3}
        for _ in range(50):  # a job is counted once settled, a moment after its last event
            (stats,) = await bus.services()
            (endpoint,) = stats["endpoints"]
            if endpoint["data"].items() >= expected.items():
                break
            await asyncio.sleep(0.1)
        assert stats["name"] == "vm-launcher" and stats["metadata"] == {"worker_id": "w1"}
        assert endpoint["data"].items() >= expected.items()
        reply = await bus.nc.request("vm-launcher.status", b"", timeout=5)
        assert json.loads(reply.data).items() >= expected.items()


async def test_ssh_is_verified_against_a_real_sshd(nats_server, az_sim, tmp_path, sshd):
    az_sim.scenario({"time_scale": 0.01, "public_ip": "127.0.0.1"})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--ssh-private-key", str(sshd.key))
        await bus.request(spec("vm-ssh", verify_ssh=True, ssh_port=sshd.port,
                               ssh_user=sshd.user, ssh_connect_timeout=5))
        (verified,) = await bus.wait_for(lambda: payloads(bus.of("vm-ssh"), SshVerified))
        assert verified == SshVerified(ip="127.0.0.1", port=sshd.port, user=sshd.user)
        assert bus.states("vm-ssh") == [
            "accepted", "creating", "vm.create.complete", "verifying", "vm.ssh.verified"]


async def test_a_wrong_ssh_key_fails_the_vm_after_retries(nats_server, az_sim, tmp_path, sshd):
    az_sim.scenario({"time_scale": 0.01, "public_ip": "127.0.0.1"})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--ssh-private-key", str(sshd.wrong_key))
        await bus.request(spec("vm-nossh", verify_ssh=True, ssh_port=sshd.port,
                               ssh_user=sshd.user, ssh_connect_timeout=5, max_attempts=2))
        await bus.wait_for(lambda: [f for f in payloads(bus.of("vm-nossh"), Failed) if f.final],
                           timeout=40)
        failures = payloads(bus.of("vm-nossh"), Failed)
        assert [(f.error_code, f.final) for f in failures] == [
            ("SshFailed", False), ("SshFailed", True)]
        assert "Permission denied" in failures[-1].message
        assert not payloads(bus.of("vm-nossh"), SshVerified)


@pytest.mark.parametrize(("args", "reason"), [
    pytest.param(["--nats-url", "nats://127.0.0.1:9", "--nats-connect-timeout", "0.5"],
                 "cannot serve: NATS at nats://127.0.0.1:9 refused the connection",
                 id="nats-unreachable"),
    pytest.param(["--az", "/nonexistent/az"],
                 "cannot serve: the az executable '/nonexistent/az' was not found",
                 id="az-missing"),
])
def test_serve_exits_3_when_it_cannot_run(az_sim, args, reason):
    done = subprocess.run([PYTHON, str(REPO / "vm_launcher.py"), "serve", *args],
                          env=az_sim.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert reason in done.stderr


async def test_events_published_while_nats_is_away_arrive_after_it_returns(az_sim, tmp_path):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 250}})
    server = RestartableNats(tmp_path / "nats")
    server.start()
    try:
        async with running(server.url, az_sim, tmp_path) as w:
            async with Bus(server.url) as bus:
                w.start("w1")
                await bus.request(spec("vm-away"))
                await bus.wait_for_event("vm-away", "creating")
            server.stop()  # the create finishes while NATS is down
            await async_wait_until(lambda: az_sim.state()["succeeded_at"].get("vm-away"),
                                   timeout=20, message="the VM to be created")
            server.start()
            async with Bus(server.url) as bus:
                await bus.wait_no_pending_requests(timeout=30)
                stored = await bus.stored_events()
        assert [getattr(m.payload, "state", m.type.value) for m in stored] == [
            "accepted", "creating", "vm.create.complete"]
    finally:
        server.stop()


async def test_a_cancel_of_one_generation_spares_the_next_whatever_the_clocks_say(
        nats_server, az_sim, tmp_path):
    """A VM's cancel (the deadline's, a handover's) names its generation: a rerun's request,
    the next generation, is served even when its host's clock lags the canceller's; a
    request of the cancelled generation is still dropped."""
    az_sim.scenario({"time_scale": 0.01})
    lagging = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")

    def request(generation: int) -> bytes:
        return encode(Message(deployment_id="dep-g", vm_name="vm-g", source="test",
                              generation=generation, time=lagging,
                              payload=CreateRequest(spec=spec("vm-g"))))
    cancel = Message(deployment_id="dep-g", vm_name="vm-g", source="orchestrator",
                     generation=3, payload=Cancel(reason="deadline"))
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await bus.wait_for_workers(1)
        await bus.nc.publish(Subject.CANCEL.value, encode(cancel))
        await bus.nc.flush()
        await bus.publish_raw(request(3))
        await bus.wait_for_event("vm-g", "cancelled")
        await bus.publish_raw(request(4))
        await bus.wait_for(lambda: bus.of("vm-g", Complete), message="generation 4 served")
        assert az_sim.state()["create_counts"] == {"vm-g": 1}
