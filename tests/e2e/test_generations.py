"""One owner per VM: a run follows its own request's generation (never a clock), generations
outlive the state file, and a worker is fenced out of a VM the legacy poller took over.

Real orchestrator and worker processes, a real nats-server, the simulator as Azure. Where a
test needs a worker that behaves in a precise way (a clock behind, a quick final failure),
the test itself plays the worker on the real bus: it takes the request from the workers'
consumer and publishes the events a worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from conftest import REPO, AzSim, async_wait_until
from nats.js.errors import NotFoundError
from workerkit import Bus, RestartableNats, running

from vmlaunch.bus.connection import REQUESTS_STREAM, WORKER_CONSUMER
from vmlaunch.bus.streams import ensure_streams, ensure_worker_consumer
from vmlaunch.schema.messages import Complete, Failed, Message, Payload, Status, decode, encode

pytestmark = pytest.mark.timeout(120)

ORCHESTRATOR = REPO / "orchestrator.py"
FAST = ["--image", "Debian12", "--no-verify-ssh", "--no-verify-cloud-init",
        "--retry-backoff", "0.05", "-y", "--resource-group", "rg-test"]


def env_for(az_sim: AzSim) -> dict[str, str]:
    env = {key: value for key, value in az_sim.env.items() if key != "NATS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


async def deploy(cwd: Path, az_sim: AzSim, *args: str) -> tuple[int, str]:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ORCHESTRATOR), "deploy", *args, cwd=cwd, env=env_for(az_sim),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


def vm_state(cwd: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((cwd / "state" / "deployment-state.yaml").read_text())[
        "vm_states"][name]


def clock(offset: float) -> str:
    """Now on a clock `offset` seconds off ours, in the envelope's format."""
    when = datetime.now(UTC) + timedelta(seconds=offset)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


Answer = Callable[[Message, int], list[tuple[int, Payload]]]


class HandWorker:
    """Takes requests from the workers' consumer and answers each with events
    `answer(request, its generation)` gives as (generation, payload), as a 1.1 worker
    writes them on the wire."""

    def __init__(self, url: str, answer: Answer, *, clock_offset: float = 0.0) -> None:
        self.url, self.answer, self.offset = url, answer, clock_offset
        self.generations: list[int] = []

    async def serve(self) -> None:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await ensure_worker_consumer(js)
            sub = await js.pull_subscribe_bind(durable=WORKER_CONSUMER, stream=REQUESTS_STREAM)
            while True:
                try:
                    batch = await sub.fetch(1, timeout=0.5)
                except TimeoutError:
                    continue
                for msg in batch:
                    await self._answer(js, decode(msg.data),
                                       json.loads(msg.data).get("generation", 0))
                    await msg.ack()
        finally:
            await nc.close()

    async def _answer(self, js: Any, request: Message, generation: int) -> None:
        self.generations.append(generation)
        for event_generation, payload in self.answer(request, generation):
            event = Message(deployment_id=request.deployment_id, vm_name=request.vm_name,
                            payload=payload, attempt=1, source="hand-worker",
                            time=clock(self.offset))
            body = {**json.loads(encode(event)), "schema": "azure-vm-launch/1.1",
                    "generation": event_generation}
            await js.publish(event.subject, json.dumps(body).encode(), headers={
                "Nats-Msg-Id": event.event_id})


def created(request: Message, generation: int) -> list[tuple[int, Payload]]:
    return [(generation, p) for p in (
        Status(state="accepted", detail="taken"), Status(state="creating", detail="create"),
        Complete(public_ip="20.0.0.1", private_ip="10.0.0.4", vm_id="id",
                 duration_seconds=1.0))]


FINAL_FAILURE = Failed(error_code="QuotaExceeded", message="no quota", retryable=False,
                       attempts=1, final=True)


async def with_hand_worker(worker: HandWorker, run: Any) -> Any:
    task = asyncio.create_task(worker.serve())
    try:
        return await run
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_worker_whose_clock_lags_3_s_is_still_followed(tmp_path, az_sim, nats_server):
    az_sim.scenario({"time_scale": 0.01})
    worker = HandWorker(nats_server.url, created, clock_offset=-3.0)

    code, out = await with_hand_worker(worker, deploy(
        tmp_path / "run", az_sim, "--vm", "vm-1:1", *FAST, "--nats-url", nats_server.url,
        "--deadline", "15"))

    assert code == 0, out
    assert vm_state(tmp_path / "run", "vm-1")["state"] == "Succeeded"
    assert vm_state(tmp_path / "run", "vm-1")["public_ip"] == "20.0.0.1"


async def test_a_rerun_does_not_take_the_previous_runs_late_events(
        tmp_path, az_sim, nats_server):
    # The first run's request is answered only once the rerun has asked again: its final
    # failure is newer than the rerun's request by every clock, but of generation 1.
    az_sim.scenario({"time_scale": 0.01})
    args = ["--vm", "vm-1:1", *FAST, "--nats-url", nats_server.url]

    def slow_then_created(request: Message, generation: int) -> list[tuple[int, Payload]]:
        if len(worker.generations) == 1:
            return []
        return [(worker.generations[0], FINAL_FAILURE), *created(request, generation)]

    worker = HandWorker(nats_server.url, slow_then_created)
    task = asyncio.create_task(worker.serve())
    try:
        code, out = await deploy(tmp_path, az_sim, *args, "--deadline", "2")
        assert code == 1, out  # the deadline: nothing answered
        code, out = await deploy(tmp_path, az_sim, *args, "--deadline", "15")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert code == 0, out
    assert worker.generations == [1, 2]
    assert vm_state(tmp_path, "vm-1")["state"] == "Succeeded"
    assert vm_state(tmp_path, "vm-1")["generation"] == 2


async def rerun_without_state(tmp_path: Path, az_sim: AzSim, url: str, *,
                              forget_generations: bool) -> tuple[int, str]:
    """A deployment, then `rm state/*` (and maybe the generations bucket), then a rerun."""
    az_sim.scenario({"time_scale": 0.01})
    args = ["--vm", "vm-1:1", *FAST, "--nats-url", url, "--deadline", "20"]
    async with running(url, az_sim, tmp_path) as workers:
        workers.start("w1")
        code, out = await deploy(tmp_path / "run", az_sim, *args)
        assert code == 0, out
        assert vm_state(tmp_path / "run", "vm-1")["generation"] == 1
        for path in (tmp_path / "run" / "state").glob("deployment-*.yaml"):
            path.unlink()
        if forget_generations:
            nc = await nats.connect(url)
            with contextlib.suppress(NotFoundError):  # (there is none before this feature)
                await nc.jetstream().delete_key_value("VM_GENERATIONS")
            await nc.close()
        return await deploy(tmp_path / "run", az_sim, *args)


async def test_a_rerun_after_the_state_file_was_removed_takes_the_next_generation(
        tmp_path, az_sim, nats_server):
    code, out = await rerun_without_state(tmp_path, az_sim, nats_server.url,
                                          forget_generations=False)

    assert code == 0, out
    assert vm_state(tmp_path / "run", "vm-1")["generation"] == 2
    assert vm_state(tmp_path / "run", "vm-1")["state"] == "Succeeded"
    assert az_sim.state()["create_counts"] == {"vm-1": 1}  # adopted, not created again


async def test_a_duplicate_ack_of_a_new_request_moves_to_the_next_generation(
        tmp_path, az_sim, nats_server):
    # Without the bucket only the server's duplicate ack tells that generation 1 was used.
    code, out = await rerun_without_state(tmp_path, az_sim, nats_server.url,
                                          forget_generations=True)

    assert code == 0, out
    assert "DeadlineExceeded" not in out
    assert vm_state(tmp_path / "run", "vm-1")["generation"] == 2
    assert az_sim.state()["create_counts"] == {"vm-1": 1}


async def test_a_worker_back_after_a_fallback_to_polling_leaves_the_vm_to_the_poller(
        tmp_path, az_sim):
    # vm-1's first create (zone 1) fails for capacity. NATS goes away just as the worker
    # backs off: its retry looks (nothing there) and waits to report `creating`, while the
    # poller takes the VM over and creates it in zone 1. Then NATS returns: the worker must
    # neither create the VM in zone 2 on top of the poller's nor delete it.
    az_sim.scenario({"time_scale": 0.01, "vms": [{
        "match": "vm-1", "attempts": [1], "fail": "ZonalAllocationFailed",
        "fail_phase": "preflight"}]})
    server = RestartableNats(tmp_path / "nats")
    server.start()
    cwd = tmp_path / "run"
    cwd.mkdir()
    try:
        async with running(server.url, az_sim, tmp_path) as workers, Bus(server.url) as bus:
            workers.start("w1")
            await bus.wait_for_workers(1)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ORCHESTRATOR), "deploy", "--vm", "vm-1:1",
                "--fallback-zone", "2", *FAST, "--retry-backoff", "1", "--nats-url",
                server.url, "--nats-grace", "1", "--poll-interval", "0.2", "--deadline", "60",
                cwd=cwd, env=env_for(az_sim), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            await bus.wait_for_event("vm-1", "retrying", timeout=30)
            server.stop()
            await async_wait_until(lambda: "vm-1" in az_sim.state()["vms"], timeout=30,
                                   message="the poller to create the VM")
            server.start()
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            await bus.wait_no_pending_requests(timeout=30)  # the worker is done with it
    finally:
        server.stop()

    assert proc.returncode == 0, out.decode()
    assert vm_state(cwd, "vm-1")["state"] == "Succeeded"
    azure = az_sim.state()
    assert azure["calls"].get("vm delete", 0) == 0
    assert "PropertyChangeNotAllowed" not in workers.log("w1")
    assert azure["create_counts"] == {"vm-1": 1}
    assert len(azure["succeeded_at"]["vm-1"]) == 1
    assert "vm_owner_changed" in actions(cwd)


def actions(cwd: Path) -> list[str]:
    path = cwd / "state" / "deployment-events.yaml"
    return [e["action"] for e in yaml.safe_load(path.read_text())["events"]] \
        if path.exists() else []


async def test_a_request_handed_to_the_poller_does_not_stay_queued_after_the_run(
        tmp_path, az_sim):
    # w1 holds vm-1's request when NATS goes away, and dies during the outage; the poller
    # finishes the VM and the run ends once NATS is back. The request stayed in the work
    # queue: a worker started later, with no memory of the handover, would serve it and
    # create the VM again (after a reset, say) with nobody following it. The create lasts
    # 4 s: NATS is back (and the orchestrator reconnected) well before the poller ends the run.
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "vm-1", "create_seconds": 400}]})
    server = RestartableNats(tmp_path / "nats")
    server.start()
    cwd = tmp_path / "run"
    cwd.mkdir()
    try:
        async with running(server.url, az_sim, tmp_path) as workers:
            async with Bus(server.url) as bus:
                workers.start("w1")
                await bus.wait_for_workers(1)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(ORCHESTRATOR), "deploy", "--vm", "vm-1:1", *FAST,
                    "--nats-url", server.url, "--nats-grace", "1", "--poll-interval", "0.2",
                    "--deadline", "60", cwd=cwd, env=env_for(az_sim),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                await bus.wait_for_event("vm-1", "creating", timeout=30)
            server.stop()
            workers.procs["w1"].kill()
            await async_wait_until(lambda: "vm_launch_mode_changed" in actions(cwd),
                                   timeout=30, message="the fallback to polling")
            server.start()
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            async with Bus(server.url) as bus:
                left = await bus.pending_requests()
    finally:
        server.stop()

    assert proc.returncode == 0, out.decode()
    assert az_sim.state()["create_counts"] == {"vm-1": 1}
    assert left == 0
