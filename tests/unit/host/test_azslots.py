"""The machine-wide az-process limit: flock'ed slot files shared by separate processes.

Real processes and real file locks: a holder in another process takes a slot from this
one, and the kernel frees it when that process dies (even by SIGKILL).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, async_wait_until

from vmlaunch.host import azslots, customdata

pytestmark = pytest.mark.timeout(30)

HOLDER = """import asyncio, sys
from vmlaunch.host.azslots import MachineSlots
async def main():
    async with MachineSlots(int(sys.argv[1])).held():
        print("held", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of our own, for this process and the holders it starts."""
    monkeypatch.setattr(customdata.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def holder(limit: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(limit)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


async def test_at_most_the_limit_hold_a_slot_at_once_within_one_process(private_tmp: Path):
    slots, inside, peak = azslots.MachineSlots(3), 0, 0

    async def one() -> None:
        nonlocal inside, peak
        async with slots.held(read=True):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(12)))
    assert peak == 3


async def test_creates_leave_the_reserved_slots_to_reads(private_tmp: Path):
    slots, writing = azslots.MachineSlots(16), asyncio.Event()
    holding = 0

    async def write() -> None:
        nonlocal holding
        async with slots.held():
            holding += 1
            await writing.wait()

    writers = [asyncio.create_task(write()) for _ in range(20)]
    await async_wait_until(lambda: holding == 16 - azslots.reserved(16), timeout=10,
                           message="the writers to take every slot they may")
    try:
        async with slots.held(read=True):  # at once, however many writers wait
            assert holding == 14
    finally:
        writing.set()
        await asyncio.gather(*writers)


async def test_a_slot_held_by_another_process_is_freed_when_it_is_killed(private_tmp: Path):
    other = holder(1)
    try:
        waiting = asyncio.ensure_future(_hold(azslots.MachineSlots(1)))
        with pytest.raises(TimeoutError):  # still waiting for the one slot
            await asyncio.wait_for(asyncio.shield(waiting), 0.3)
        other.send_signal(signal.SIGKILL)
        await async_wait_until(waiting.done, timeout=10, message="the freed slot")
    finally:
        other.kill()
        other.wait(timeout=10)
    assert (private_tmp / f"vmlaunch-{customdata.os.getuid()}" / azslots.SLOTS_DIR).is_dir()


async def _hold(slots: azslots.MachineSlots) -> None:
    async with slots.held():
        pass


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        azslots.MachineSlots(0)
