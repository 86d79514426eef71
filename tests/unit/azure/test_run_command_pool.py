"""The cloud-init check by run-command: at most N at once per AzCli, and its timeout counted
from its slot, not from its place in the queue. Real az-sim processes through AzCli."""

from __future__ import annotations

import asyncio
import threading

import psutil
import pytest
from conftest import AZ_SIM, AzSim
from verifykit import peak_processes

from vmlaunch.azure import verify
from vmlaunch.azure.azcli import AzCli
from vmlaunch.schema.vmspec import VMSpec

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def az(az_sim: AzSim, monkeypatch: pytest.MonkeyPatch) -> AzCli:
    for key in ("AZ_SIM_STATE", "AZ_SIM_SCENARIO", "PATH"):
        monkeypatch.setenv(key, az_sim.env[key])
    return AzCli(str(AZ_SIM))


def running_vms(az_sim: AzSim, names: list[str], *, run_command_seconds: float) -> list[VMSpec]:
    az_sim.scenario({"time_scale": 0.01, "location": "westus2", "defaults": {
        "create_seconds": 1, "run_command_seconds": run_command_seconds}})
    for name in names:
        az_sim.az("vm", "create", "-g", "rg", "-n", name, "--image", "Ubuntu2204")
    return [VMSpec(name=name, resource_group="rg", image="Ubuntu2204",
                   cloud_init_timeout=2.0) for name in names]


async def test_a_check_queued_behind_others_is_not_timed_out_for_the_wait(az_sim, az):
    names = [f"vm-{i}" for i in range(5)]
    specs = running_vms(az_sim, names, run_command_seconds=50)  # 0.5 s each
    verify.limit_run_commands(az, 1)
    with peak_processes(az_sim, "run-command") as counts:
        results = await asyncio.gather(*(verify.check_cloud_init(
            spec, az=az, ip="", private_key=None) for spec in specs))
    # The last waited > 2 s for its slot, past its 2 s timeout, and still passes.
    assert [r.result for r in results] == ["done"] * 5
    assert max(counts) == 1


async def test_a_check_longer_than_its_timeout_fails_and_frees_its_slot(az_sim, az):
    (slow,) = running_vms(az_sim, ["vm-slow"], run_command_seconds=300)  # 3 s
    verify.limit_run_commands(az, 1)
    timed_out = await verify.check_cloud_init(slow, az=az, ip="", private_key=None)
    assert (timed_out.ok, timed_out.detail) == (False,
                                                "cloud-init did not finish within 2 s")
    assert az_sim.az_processes() == []  # the run-command process was killed
    assert verify.run_command_pool(az).locked() is False


async def test_ssh_checks_run_at_most_ssh_at_once_however_many_vms_wait():
    """A listener that never answers holds each ssh for its ConnectTimeout: 40 checks at
    once (a worker's VMs that all succeeded together) keep SSH_AT_ONCE clients running."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    spec = VMSpec(name="vm-1", resource_group="rg", image="Debian12", location="westus2",
                  ssh_port=port, ssh_connect_timeout=1)
    counts: list[int] = []
    stop = threading.Event()

    def ssh(proc: psutil.Process) -> bool:
        try:
            return proc.name() == "ssh"
        except psutil.Error:  # gone meanwhile
            return False

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            counts.append(sum(1 for child in me.children(recursive=True) if ssh(child)))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = await asyncio.gather(*(verify.check_ssh(spec, ip="127.0.0.1",
                                                          private_key=None, backoff=0.01)
                                         for _ in range(40)))
    finally:
        stop.set()
        sampler.join()
        silent.close()
    assert not any(result.ok for result in results)
    assert verify.SSH_AT_ONCE - 4 <= max(counts) <= verify.SSH_AT_ONCE
