"""What the fleet bench watches while a run goes on: the state file and the processes.

Both cost the machine as little as they can, since the run they watch is short of CPU.
The state-file watcher sleeps on inotify until a file in the state directory is written or
renamed into it, then compares the file's identity (inode, mtime, size) and, on a change,
reads it with a line scan instead of a YAML parse: a 500-VM file parses in ~1 ms this way,
against ~100 ms with PyYAML, which would show up in the latencies being measured. (Polling
the identity every 2 ms cost ~4% of a core.)
The process sampler runs in its own process so that its walk of /proc never holds the
watcher's GIL. It reads /proc/N/stat (parent, start time, RSS) and cmdline of each process,
but an `az` process's cmdline only once: psutil's walk cost ~1.7x as much.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import struct
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

WAKE_INTERVAL = 0.2  # to notice the stop: inotify says when the file changes
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


IN_CLOSE_WRITE, IN_MOVED_TO = 0x8, 0x80  # <sys/inotify.h>
EVENT_HEAD = struct.calcsize("iIII")


class DirectoryEvents:
    """Wakes when a file in `directory` is written and closed or renamed into it."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(
                self.fd, os.fsencode(directory), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {directory}")

    def wait(self, timeout: float) -> bool:
        """True once something happened (all pending events read), False at the timeout."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        while True:
            try:
                os.read(self.fd, 64 * (EVENT_HEAD + 256))
            except BlockingIOError:
                return True

    def close(self) -> None:
        os.close(self.fd)


class StateWatcher:
    """Records when each VM first shows `Succeeded` in the state file, and the rewrites seen.
    The state file's directory is made here, so that it can be watched from the start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self.rewrites = 0
        self._last: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._events = DirectoryEvents(path.parent)
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._events.close()
        self._look()  # the last rewrite, if the loop missed it

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._events.wait(WAKE_INTERVAL):
                self._look()

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
    line = " ".join(cmdline[:4])  # az-sim: its native client, or `python3 -I -S .../client.py`
    if "vmlaunch.cli.launcher" in line or "vm_launcher.py" in line:
        return "worker"
    if "orchestrator.py" in line:
        return "orchestrator"
    if "nats-server" in line:
        return "nats-server"
    if "azsim.server" in line:
        return None  # the simulator's server (and its child for a call): the cloud's side
    if "az-sim" in line or "azsim/client.py" in line:
        return "az"
    return None


PAGE = os.sysconf("SC_PAGE_SIZE")


PF_FORKNOEXEC = 0x40  # <linux/sched.h>: forked and not exec'd yet


def _stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, start time, RSS in bytes) of every process, from /proc/N/stat,
    but a fork that has not exec'd yet has no parent here: until its exec it shows its
    parent's cmdline (a client starting the simulator's server would count as one more az)
    and it runs no program of its own yet."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after the command's name
        except OSError:
            continue
        if fields[0] == b"Z":  # ended, not reaped yet: not running, as psutil counted
            continue
        parent = 0 if int(fields[6]) & PF_FORKNOEXEC else int(fields[1])
        found[int(entry.name)] = (parent, int(fields[19]), int(fields[21]) * PAGE)
    return found


def _descendants(root: int, stats: dict[int, tuple[int, int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kind(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return kind_of(f.read().decode(errors="replace").split("\0"))
    except OSError:
        return None


def _sample(root: int, ready: Event, stop: Event, out: multiprocessing.Queue) -> None:
    peak_rss: dict[str, int] = {}
    peak_az, peak_az_rss = 0, 0
    # (pid, start time) of az processes: one stays az (with AZ_SIM_SERVER=0 it execs the
    # call in the same process), so its cmdline is read once.
    known_az: set[tuple[int, int]] = set()
    ready.set()
    while not stop.is_set():
        az, az_rss, stats = 0, 0, _stats()
        for pid in _descendants(root, stats):
            _, started, rss = stats[pid]
            # Read each time but for az: a fork runs its parent's cmdline until it execs.
            kind = "az" if (pid, started) in known_az else _kind(pid)
            if kind == "az":
                known_az.add((pid, started))
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
