"""What the fleet bench watches while a run goes on: the state file and the processes.

The state-file watcher polls the file's identity (inode, mtime, size) every 2 ms and, on a
change, reads it with a line scan instead of a YAML parse: a 500-VM file parses in ~1 ms this
way, against ~100 ms with PyYAML, which would show up in the latencies being measured.
The process sampler runs in its own process so that psutil's walk of /proc (tens of ms with
hundreds of `az` processes) never holds the watcher's GIL.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import psutil

WATCH_INTERVAL = 0.002
SAMPLE_INTERVAL = 0.1
KINDS = ("orchestrator", "worker", "nats-server", "az")


def vm_states(text: str) -> dict[str, str]:
    """`vm_states.<host>.state` of a state file, read line by line (the layout the tool and
    the bash scripts write: hosts at two spaces, their keys at four)."""
    states: dict[str, str] = {}
    inside, host = False, ""
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line.startswith("vm_states:")
        elif inside and line.startswith("  ") and not line.startswith("   "):
            host = line.strip().rstrip(":").strip("\"'")
        elif inside and host and line.strip().startswith("state:"):
            states[host] = line.split(":", 1)[1].strip().strip("\"'")
    return states


class StateWatcher:
    """Records when each VM first shows `Succeeded` in the state file, and the rewrites seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self.rewrites = 0
        self._last: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()  # the last rewrite, if the loop missed it

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._look()
            time.sleep(WATCH_INTERVAL)

    def _look(self) -> None:
        ident = self._identity()
        if ident is None or ident == self._last:
            return
        self._last, now = ident, time.time()
        self.rewrites += 1
        try:
            text = self.path.read_text()
        except OSError:
            return
        for name, state in vm_states(text).items():
            if state == "Succeeded" and name not in self.seen:
                self.seen[name] = now


def kind_of(cmdline: list[str]) -> str | None:
    """The kind of a process, by its program (a worker's arguments name the az path too)."""
    line = " ".join(cmdline[:4])  # az-sim runs as `python3 -I -S az-sim ...`
    if "vmlaunch.cli.launcher" in line or "vm_launcher.py" in line:
        return "worker"
    if "orchestrator.py" in line:
        return "orchestrator"
    if "nats-server" in line:
        return "nats-server"
    if "az-sim" in line:
        return "az"
    return None


def _sample(root: int, ready: Event, stop: Event, out: multiprocessing.Queue) -> None:
    peak_rss: dict[str, int] = {}
    peak_az, peak_az_rss = 0, 0
    parent = psutil.Process(root)
    ready.set()
    while not stop.is_set():
        az, az_rss = 0, 0
        for proc in parent.children(recursive=True):
            try:
                kind = kind_of(proc.cmdline())  # read each time: a fork runs its parent's
                rss = proc.memory_info().rss if kind else 0
            except psutil.Error:
                continue
            if kind:
                peak_rss[kind] = max(peak_rss.get(kind, 0), rss)
            if kind == "az":
                az, az_rss = az + 1, az_rss + rss
        peak_az, peak_az_rss = max(peak_az, az), max(peak_az_rss, az_rss)
        stop.wait(SAMPLE_INTERVAL)
    out.put({"peak_rss_mb": {k: round(v / 2**20, 1) for k, v in peak_rss.items()},
             "peak_az": peak_az, "peak_az_total_mb": round(peak_az_rss / 2**20, 1)})


class ProcessSampler:
    """Peak `az` processes at once and peak RSS of one process of each kind, every 100 ms,
    over every descendant of this process."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_sample, daemon=True,
                                 args=(os.getpid(), self._ready, self._stop, self._out))
        self.result: dict = {}

    def __enter__(self) -> ProcessSampler:
        self._proc.start()
        self._ready.wait(timeout=60)  # a run starts only once its processes are watched
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.result = self._out.get(timeout=30)
        self._proc.join(timeout=30)
