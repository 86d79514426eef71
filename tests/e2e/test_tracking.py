"""Submit, then track: real `vm_launcher.py serve` processes, a real nats-server, the simulator.

A worker submits every create with `az vm create --no-wait` and follows all its VMs with
one `az vm list -g RG` per --track-interval; `az vm show -d` once per VM that succeeds,
`az vm get-instance-view` once per VM that fails. The machine-wide az-process limit
(--max-az-processes) holds across separate processes sharing one runtime directory.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
import pytest
from conftest import AzSim, async_wait_until
from workerkit import Bus, running, spec

from vmlaunch.schema.messages import Complete, Failed, Subject

pytestmark = pytest.mark.timeout(120)

INTERVAL = 0.2
N = 8


def lro_scenario(**extra: object) -> dict[str, object]:
    """Creates of 60 s at time scale 0.05 (3 s). A blocking create would learn its outcome
    only at its first long-running-operation poll, 5,000 s away here: only a create that
    does not wait for it (--no-wait) lets a VM complete within these tests."""
    return {"time_scale": 0.05, "lro_poll_seconds": 100000, **extra}


async def test_a_worker_submits_with_no_wait_and_follows_every_vm_with_one_listing(
        nats_server, az_sim: AzSim, tmp_path: Path):
    az_sim.scenario(lro_scenario())
    names = [f"vm-{i}" for i in range(N)]
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--concurrency", str(N), "--track-interval", str(INTERVAL))
        await bus.wait_for_workers(1)
        started = time.monotonic()
        for name in names:
            await bus.request(spec(name))
        for name in names:
            await bus.wait_for_event(name, Subject.COMPLETE.value, timeout=15)
        elapsed = time.monotonic() - started
    calls = az_sim.state()["calls"]
    assert calls["vm create"] == N and "vm show" not in calls  # IPs: the group's listing
    assert "vm get-instance-view" not in calls  # no VM failed
    # One listing (and one IP listing) per interval for all of them: bounded by the time,
    # not by N times the time.
    listings = calls["vm list"] + calls["vm list-ip-addresses"]
    assert calls["vm list"] <= elapsed / INTERVAL + 3
    assert calls["vm list-ip-addresses"] <= elapsed / INTERVAL + 3
    assert sum(calls.values()) - listings <= 3 * N
    assert {name: len(bus.of(name, Complete)) for name in names} == dict.fromkeys(names, 1)


async def test_a_vm_that_fails_is_read_once_and_its_code_drives_the_zone_fallback(
        nats_server, az_sim: AzSim, tmp_path: Path):
    az_sim.scenario(lro_scenario(
        vms=[{"match": "vm-f", "attempts": [1], "fail": "ZonalAllocationFailed"}]))
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1", "--track-interval", str(INTERVAL))
        await bus.request(spec("vm-f", fallback_zones=["2"]))
        await bus.wait_for_event("vm-f", Subject.COMPLETE.value, timeout=30)
    (failed,) = bus.of("vm-f", Failed)
    assert (failed.payload.error_code, failed.payload.final) == ("ZonalAllocationFailed", False)
    (complete,) = bus.of("vm-f", Complete)
    assert complete.payload.zone == "2"  # the capacity failure moved it to the next zone
    azure = az_sim.state()
    assert azure["calls"]["vm get-instance-view"] == 1
    assert azure["vms"]["vm-f"]["zone"] == "2"


def az_clients(az_sim: AzSim) -> list[psutil.Process]:
    """The simulator's az processes, without the small guard each one runs under."""
    found = []
    for proc in az_sim.az_processes():
        with contextlib.suppress(psutil.Error):
            if not any("procguard" in part for part in proc.cmdline()):
                found.append(proc)
    return found


async def test_the_az_process_limit_holds_across_two_worker_processes(
        nats_server, az_sim: AzSim, tmp_path: Path):
    az_sim.scenario(lro_scenario())
    names = [f"vm-{i}" for i in range(N)]
    shared_tmp = tmp_path / "tmp"  # one runtime directory, as on one machine
    shared_tmp.mkdir()
    peak = 0

    def all_complete() -> bool:
        nonlocal peak
        peak = max(peak, len(az_clients(az_sim)))
        return all(bus.of(name, Complete) for name in names)

    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as w:
        for worker_id in ("w1", "w2"):
            w.start(worker_id, "--concurrency", str(N), "--max-az-processes", "2",
                    "--track-interval", str(INTERVAL), env={"TMPDIR": str(shared_tmp)})
        await bus.wait_for_workers(2)
        for name in names:
            await bus.request(spec(name))
        await async_wait_until(all_complete, timeout=60, interval=0.01,
                               message="every VM complete")
    assert 1 <= peak <= 2
    assert az_sim.state()["create_counts"] == dict.fromkeys(names, 1)
