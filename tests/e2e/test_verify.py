"""Verification at scale: run-command checks in a bounded pool of their own, and cloud-init
checked over SSH (against a real sshd) with no az process at all.

Real worker and orchestrator processes, a real nats-server, the simulator as az.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import async_wait_until
from orchestratorkit import orchestrate, state, vm_args
from verifykit import DEGRADED, CloudInit, peak_processes, sshd_server
from workerkit import Bus, running, spec

from vmlaunch.schema.messages import CloudInitComplete, Failed, SshVerified

pytestmark = pytest.mark.timeout(120)

# Leases outlast a loaded machine's slow heartbeats: these tests are about the checks.
LEASE = 10.0
# A run-command lasts 1.5 s (150 s simulated at time scale 0.01): long enough to be seen.
SLOW_RUN_COMMANDS = {"time_scale": 0.01, "location": "westus2",
                     "defaults": {"create_seconds": 60, "run_command_seconds": 150}}


@pytest.fixture
def sshd(tmp_path):
    yield from sshd_server(tmp_path)


def ssh_spec(name: str, sshd, **fields):
    return spec(name, verify_ssh=True, verify_cloud_init=True, cloud_init_check="ssh",
                ssh_port=sshd.port, ssh_user=sshd.user, ssh_connect_timeout=5, **fields)


async def test_a_worker_runs_at_most_n_run_command_checks_at_once(nats_server, az_sim,
                                                                 tmp_path):
    az_sim.scenario(SLOW_RUN_COMMANDS)
    names = [f"vm-{i}" for i in range(20)]
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--concurrency", "20", "--run-command-concurrency", "3", ack_wait=LEASE)
        with peak_processes(az_sim, "run-command") as counts:
            for name in names:
                await bus.request(spec(name, verify_cloud_init=True))
            await bus.wait_for(lambda: all(bus.of(n, CloudInitComplete) for n in names),
                               timeout=90)
    assert max(counts) == 3  # reached, never passed
    results = {n: bus.of(n, CloudInitComplete)[0].payload.result for n in names}
    assert results == dict.fromkeys(names, "done")
    assert not [m for n in names for m in bus.of(n, Failed)]


def test_legacy_mode_runs_at_most_n_run_command_checks_at_once(az_sim, tmp_path):
    az_sim.scenario(SLOW_RUN_COMMANDS)
    names = [f"vm-{i}" for i in range(8)]
    with peak_processes(az_sim, "run-command") as counts:
        done = orchestrate(tmp_path, az_sim, "deploy", "--legacy-poll", "--poll-interval",
                           "0.2", "--run-command-concurrency", "2", *vm_args(*names),
                           "--image", "Debian12", "--no-verify-ssh", "--verify-cloud-init",
                           "--retry-backoff", "0.05", "-y", "-q")
    assert done.returncode == 0, done.stderr
    assert max(counts) == 2
    vms = state(tmp_path)["vm_states"]
    assert all(vms[n]["state"] == "Succeeded" and vms[n]["verified"] for n in names)


async def test_cloud_init_is_checked_over_ssh_without_any_az_process(nats_server, az_sim,
                                                                    tmp_path, sshd):
    cloud_init = CloudInit(sshd, tmp_path / "cloud-init", output=DEGRADED, exit_code=2)
    az_sim.scenario({"time_scale": 0.01, "public_ip": "127.0.0.1"})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--ssh-private-key", str(sshd.key), ack_wait=LEASE)
        await bus.request(ssh_spec("vm-ci", sshd))
        await async_wait_until(cloud_init.waiting, timeout=30,
                               message="cloud-init status --wait over ssh")
        assert not bus.of("vm-ci", CloudInitComplete)  # still waiting for cloud-init
        cloud_init.release()
        (complete,) = await bus.wait_for(lambda: bus.of("vm-ci", CloudInitComplete))
    assert complete.payload == CloudInitComplete(
        result="degraded", detail="cloud-init finished with warnings: WARNING:; "
                                  "apt mirror unreachable")
    assert bus.of("vm-ci", SshVerified)[0].payload.port == sshd.port
    assert bus.states("vm-ci")[-2:] == ["vm.ssh.verified", "vm.cloudinit.complete"]
    assert cloud_init.calls() == ["status --wait --long"]
    assert not [c for c in az_sim.state()["calls"] if "run-command" in c]


async def test_a_dropped_ssh_connection_during_the_cloud_init_check_is_tried_again(
        nats_server, az_sim, tmp_path: Path, sshd):
    cloud_init = CloudInit(sshd, tmp_path / "cloud-init", drops=1, wait=False)
    az_sim.scenario({"time_scale": 0.01, "public_ip": "127.0.0.1"})
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--ssh-private-key", str(sshd.key), ack_wait=LEASE)
        await bus.request(ssh_spec("vm-drop", sshd))
        (complete,) = await bus.wait_for(lambda: bus.of("vm-drop", CloudInitComplete))
    assert complete.payload.result == "done"
    assert cloud_init.calls() == ["status --wait --long"] * 2
    assert not bus.of("vm-drop", Failed)
