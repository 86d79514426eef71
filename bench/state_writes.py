"""Coalesced state writes versus one locked rewrite per event, side by side.

A burst of events (every VM of a fleet reporting several transitions within a second, as
when a whole wave of creates finishes) is written twice: once the way the legacy script
does it (one read-modify-write of both files per event) and once through the coalescing
`StateWriter` (merged rewrites, each change on disk within ~50 ms). Prints the time the
burst took to reach the disk, the number of rewrites and the ratio.

    .venv/bin/python bench/state_writes.py [--vms 50] [--events-per-vm 6]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vmlaunch.state.statefile import EventsFile, StateFile, make_event  # noqa: E402
from vmlaunch.state.writer import StateWriter  # noqa: E402

SAMPLES = REPO / "tests" / "data"
STATES = ["Creating", "Creating", "Succeeded", "Succeeded", "Succeeded", "Succeeded"]


def fresh_copy() -> tuple[Path, Path]:
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    state, events = work / "deployment-state.yaml", work / "deployment-events.yaml"
    shutil.copy(SAMPLES / "sample-deployment-state.yaml", state)
    shutil.copy(SAMPLES / "sample-deployment-events.yaml", events)
    return state, events


def burst(vms: int, per_vm: int) -> list[tuple[str, dict, str]]:
    return [(f"vm-{v:03d}", {"state": STATES[i % len(STATES)], "public_ip": f"20.0.0.{v}",
                             "attempt": 1}, f"transition {i} of vm-{v:03d}")
            for i in range(per_vm) for v in range(vms)]


def one_rewrite_per_event(changes: list[tuple[str, dict, str]]) -> tuple[float, int]:
    state_path, events_path = fresh_copy()
    state, events = StateFile(state_path), EventsFile(events_path)
    started = time.perf_counter()
    for name, fields, text in changes:
        state.update({name: fields})
        events.append([make_event("vm_progress", text)])
    return time.perf_counter() - started, state.rewrites + events.rewrites


async def coalesced(changes: list[tuple[str, dict, str]]) -> tuple[float, int]:
    state_path, events_path = fresh_copy()
    started = time.perf_counter()
    async with StateWriter(state_path, events_path) as writer:
        for name, fields, text in changes:
            writer.update_vm(name, **fields)
            writer.append_event("vm_progress", text)
        await writer.flush()
        return time.perf_counter() - started, writer.rewrite_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--events-per-vm", type=int, default=6)
    args = parser.parse_args()
    changes = burst(args.vms, args.events_per_vm)
    naive_time, naive_writes = one_rewrite_per_event(changes)
    merged_time, merged_writes = asyncio.run(coalesced(changes))
    print(f"{len(changes)} events for {args.vms} VMs\n")
    print(f"{'writer':<24} {'on disk after':>14} {'file rewrites':>14}")
    print(f"{'one rewrite per event':<24} {naive_time:>13.2f}s {naive_writes:>14}")
    print(f"{'coalescing StateWriter':<24} {merged_time:>13.2f}s {merged_writes:>14}")
    print(f"\nspeed-up {naive_time / merged_time:.0f}x, "
          f"{naive_writes / merged_writes:.0f}x fewer rewrites")


if __name__ == "__main__":
    main()
