"""Beyond one machine: a deployment with R3 streams on a real 3-node JetStream cluster
(scripts/nats-cluster.sh) survives a SIGKILLed node and a SIGKILLed-and-restarted worker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import nats
import pytest
from clusterkit import NatsCluster, Orchestrator
from conftest import AzSim, async_wait_until
from orchestratorkit import FAST, assert_no_process_left, assert_ready, events, vm_args
from workerkit import running

from vmlaunch.bus.connection import EVENTS_STREAM, REQUESTS_STREAM

pytestmark = pytest.mark.timeout(150)

NAMES = [f"vm-{i}" for i in range(1, 9)]
WORKER = ("--grace", "1", "--concurrency", "4")


@pytest.fixture
def nats_cluster(tmp_path: Path):
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_cluster_script_is_idempotent_and_restarts_a_dead_node(nats_cluster):
    urls = nats_cluster.urls
    assert len(urls.split(",")) == 3 and all(u.startswith("nats://127.0.0.1:")
                                            for u in urls.split(","))
    assert nats_cluster.start() == urls  # already running: nothing changes
    nats_cluster.kill("n2")
    assert nats_cluster.running() == {"n1", "n3"}
    assert nats_cluster.start() == urls  # the dead node comes back on its ports and store
    assert nats_cluster.running() == {"n1", "n2", "n3"}
    nats_cluster.stop()
    nats_cluster.stop()
    assert nats_cluster.running() == set()


async def _replicas(urls: str) -> dict[str, int]:
    """Each stream's replicas. Just after a node was killed the cluster may still be
    electing leaders, and a JetStream API call times out meanwhile: asked again, for 30 s."""
    nc = await nats.connect(servers=urls.split(","))
    try:
        js = nc.jetstream()
        for _ in range(6):
            try:
                return {name: (await js.stream_info(name)).config.num_replicas
                        for name in (REQUESTS_STREAM, EVENTS_STREAM)}
            except nats.errors.TimeoutError:
                continue  # stream_info waited its 5 s: the next try waits again
        raise AssertionError("no stream info within 30 s of the node's loss")
    finally:
        await nc.close()


async def _requests_leader(urls: str) -> str:
    """The node that leads the work queue: the most disruptive one to lose."""
    nc = await nats.connect(servers=urls.split(","))
    try:
        js = nc.jetstream()

        async def leader() -> str | None:
            try:
                info = await js.stream_info(REQUESTS_STREAM)
            except nats.errors.Error:
                return None
            return info.cluster.leader if info.cluster else None

        deadline = asyncio.get_running_loop().time() + 30
        while (found := await leader()) is None:
            assert asyncio.get_running_loop().time() < deadline, "no stream leader in 30 s"
            await asyncio.sleep(0.1)
        return found
    finally:
        await nc.close()


async def _disrupted_run(orchestrator: Orchestrator, tmp_path: Path, az_sim: AzSim,
                         nats_cluster: NatsCluster) -> tuple[int, str]:
    """Two workers; mid-run the work queue's leader node and one worker are SIGKILLed and
    the worker is replaced. The orchestrator's exit code and the node killed."""
    urls = nats_cluster.urls
    leader = await _requests_leader(urls)  # the orchestrator made the streams
    async with running(urls, az_sim, tmp_path) as workers:
        for worker_id in ("w0", "w1"):
            workers.start(worker_id, *WORKER, ack_wait=3.0)
        await async_wait_until(lambda: len(az_sim.state()["vms"]) >= 6, timeout=60,
                               message="creations in flight on both workers")
        # Workers started without --replicas must leave the orchestrator's R3 streams alone.
        assert await _replicas(urls) == {REQUESTS_STREAM: 3, EVENTS_STREAM: 3}

        nats_cluster.kill(leader)
        workers.signal("w0", signal.SIGKILL)
        await workers.wait_exit("w0")
        workers.start("w0-again", *WORKER, ack_wait=3.0)
        return await asyncio.to_thread(orchestrator.wait, 90), leader


async def test_an_r3_deployment_survives_a_killed_node_and_a_restarted_worker(
        tmp_path, az_sim, nats_cluster):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 600}})
    urls = nats_cluster.urls
    with Orchestrator(tmp_path, az_sim, "deploy", *vm_args(*NAMES), *FAST, "--nats-url",
                      urls, "--replicas", "3", "--require-nats") as orchestrator:
        code, leader = await _disrupted_run(orchestrator, tmp_path, az_sim, nats_cluster)

    assert code == 0, orchestrator.output()[-4000:]
    assert_ready(tmp_path, az_sim, NAMES)
    assert az_sim.state()["create_counts"] == dict.fromkeys(NAMES, 1)
    # No fallback to polling: the cluster carried the whole run.
    assert "vm_launch_mode_changed" not in [e["action"] for e in events(tmp_path)]
    assert nats_cluster.running() == {"n1", "n2", "n3"} - {leader}
    assert await _replicas(urls) == {REQUESTS_STREAM: 3, EVENTS_STREAM: 3}
    assert_no_process_left(az_sim)
