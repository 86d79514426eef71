"""What one VM's update of the state file costs as the fleet grows, old way and new.

For state files of 10 to 5,000 VMs (the sample file with generated VM blocks) it times one
VM update written the old way (a full comment-preserving ruamel round trip of the file) and
the new way (`StateFile.update` re-rendering only that VM's block in the text it last
wrote), plus the new way's first write (a full parse, as at start or after another writer
changed the file). Then a new file's first write of every VM at once (the start of a run),
a full round trip before and one VM's round trip plus text edits now. Then the latency from
a change to the state file through an idle `StateWriter` (events file first, then state
file), which no longer waits its 50 ms timer.

    .venv/bin/python bench/state_writes.py [--sizes 10,100,500,2000,5000] [--latency 60]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vmlaunch.state import statefile, yamledit  # noqa: E402
from vmlaunch.state.statefile import StateFile, utc_now_str  # noqa: E402
from vmlaunch.state.writer import StateWriter  # noqa: E402

SAMPLES = REPO / "tests" / "data"
VM_BLOCK = """\
  vm-{n:05d}:
    public_ip: "20.0.{hi}.{lo}"
    private_ip: "10.0.{hi}.{lo}"
    state: "Creating"
    last_checked: "2025-07-20T10:03:11Z"
    attempt: 1
"""


def state_file_of(vms: int) -> Path:
    """A copy of the sample state file with ``vms`` more VM blocks in ``vm_states``."""
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    text = (SAMPLES / "sample-deployment-state.yaml").read_text()
    blocks = "".join(VM_BLOCK.format(n=n, hi=n // 250, lo=n % 250) for n in range(vms))
    head, sep, tail = text.partition("\n# WireGuard setup\n")
    path = work / "deployment-state.yaml"
    path.write_text(head + blocks + sep + tail)
    shutil.copy(SAMPLES / "sample-deployment-events.yaml", work / "deployment-events.yaml")
    return path


def change(i: int) -> dict[str, dict[str, object]]:
    return {f"vm-{i * 7919 % 10:05d}": {"state": "Succeeded", "attempt": i,
                                        "last_checked": utc_now_str()}}


def old_round_trip(path: Path, i: int) -> None:
    """One update as it was written before: parse, edit and dump the whole file."""
    statefile._update_file(path, lambda: "", lambda doc, _blank: yamledit.apply_state(
        doc, change(i), None, utc_now_str()))


def timed(step: Callable[[int], None], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``repeats`` calls; the CPU time leaves out the disk's
    fsyncs and the other processes of a shared machine."""
    wall, cpu = [], []
    for i in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        step(i)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def per_size(vms: int) -> list[tuple[float, float]]:
    """(wall, CPU) of one VM's update: old round trip, new first write, new later write."""
    path = state_file_of(vms)
    old = timed(lambda i: old_round_trip(path, i), 5 if vms <= 500 else 1)
    first = timed(lambda i: StateFile(path).update(change(i)), 1)
    state = StateFile(path)
    state.update(change(0))  # indexes the text once
    new = timed(lambda i: state.update(change(i)), 50)
    assert state.read()["vm_states"]["vm-00009"]["state"] == "Succeeded"
    return [old, first, new]


def batch(vms: int) -> dict[str, dict[str, object]]:
    return {f"vm-{n:05d}": {"state": "Creating", "zone": str(1 + n % 3), "attempt": 1,
                            "last_checked": utc_now_str()} for n in range(vms)}


def first_batch(vms: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, CPU) of writing ``vms`` VMs into a new file at once: old round trip, new."""
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    template = yamledit.STATE_TEMPLATE.format(ts=utc_now_str(), id='"bench"')

    def old(i: int) -> None:
        statefile._update_file(work / f"old-{i}.yaml", lambda: template,
                               lambda doc, _blank: yamledit.apply_state(
                                   doc, batch(vms), None, utc_now_str()))

    return timed(old, 3), timed(lambda i: StateFile(work / f"new-{i}.yaml").update(batch(vms)), 3)


async def writer_latency(vms: int, samples: int) -> list[float]:
    """Seconds from ``record()`` on an idle writer to the change being in the state file."""
    path = state_file_of(vms)
    took = []
    async with StateWriter(path, path.with_name("deployment-events.yaml")) as writer:
        writer.update_vm("vm-00003", attempt=999)
        await writer.flush()  # the first write parses the file (the start of a run)
        for i in range(samples):
            line = f"    attempt: {1000 + i}"
            started = time.perf_counter()
            writer.record("vm-00003", {"state": "Succeeded", "attempt": 1000 + i},
                          [("vm_progress", f"vm-00003 sample {i}")])
            while line not in path.read_text():
                await asyncio.sleep(0.001)
            took.append(time.perf_counter() - started)
            await asyncio.sleep(writer.delay * 1.2)  # idle again: no burst to coalesce
    return sorted(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500,2000,5000")
    parser.add_argument("--latency", type=int, default=60, help="samples of writer latency")
    args = parser.parse_args()
    print("one VM's update, median ms, wall / CPU")
    print(f"{'VMs':>6} {'old round trip':>20} {'new first write':>20} {'new update':>16}"
          f" {'speed-up (CPU)':>15}")
    for vms in (int(size) for size in args.sizes.split(",")):
        cells = per_size(vms)
        print(f"{vms:>6}", *(f"{w * 1000:>11.1f} / {c * 1000:>6.1f}" for w, c in cells[:2]),
              f"{cells[2][0] * 1000:>7.2f} / {cells[2][1] * 1000:>5.2f}",
              f"{cells[0][1] / cells[2][1]:>14.0f}x")
    print("\na new file's first write of every VM at once, median ms, wall / CPU")
    print(f"{'VMs':>6} {'old round trip':>20} {'new':>20} {'speed-up (CPU)':>15}")
    for vms in (int(size) for size in args.sizes.split(",")):
        old, new = first_batch(vms)
        print(f"{vms:>6}", *(f"{w * 1000:>11.1f} / {c * 1000:>6.1f}" for w, c in (old, new)),
              f"{old[1] / new[1]:>14.0f}x")
    if args.latency:
        took = asyncio.run(writer_latency(500, args.latency))
        p50, p99 = took[len(took) // 2], took[min(len(took) - 1, int(len(took) * 0.99))]
        print(f"\nidle StateWriter, 500 VMs, change -> state file: p50 {p50 * 1000:.1f} ms,"
              f" p99 {p99 * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms ({len(took)} samples)")


if __name__ == "__main__":
    main()
