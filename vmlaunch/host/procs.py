"""Subprocesses that never outlive us: spawned under procguard, run with a timeout, and
killed as whole trees.

Used by the az layer and by the SSH check: nothing else starts processes (except the
embedded nats-server and workers, which use `die_with_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger("procs")


@dataclass(frozen=True)
class ProcessResult:
    """A finished (or timed-out) command: data, not an exception."""

    argv: list[str]  # as run (executable first)
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        # Never judge by stderr: warnings and cost hints go there on success.
        return self.exit_code == 0 and not self.timed_out


# Every command runs under procguard.py, so a launcher that forks the CLI (rather than
# exec'ing it) cannot leave an orphan when we die.
_GUARD = str(Path(__file__).with_name("procguard.py"))
_LIBC = ctypes.CDLL(None, use_errno=True)  # the running program, libc included
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel SIGKILLs the child when its parent dies, even by SIGKILL.
    Only the direct child: a launcher that forks (rather than execs) the CLI is not covered."""
    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def terminate_tree(pid: int, *, grace: float, create_time: float | None = None) -> None:
    """SIGTERM a process and its descendants, SIGKILL what survives `grace` seconds. With
    `create_time`, a different process now holding `pid` (PID reuse) is left alone. Never
    reaps (waitpid): the asyncio child watcher owns our children's exit status."""
    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 0.01:
            return
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    _signal_all(tree, signal.SIGTERM)
    _signal_all(_wait_gone(tree, grace), signal.SIGKILL)
    _wait_gone(tree, grace)


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the create time first


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process is gone or a zombie; return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _without_nats(environ: Mapping[str, str]) -> dict[str, str]:
    """Our environment for az and ssh: no NATS_* setting, which they never need and which
    may hold a password, a token or a URL with credentials."""
    return {key: value for key, value in environ.items() if not key.startswith("NATS_")}


async def spawn(argv: list[str], *, capture: bool = False, env: Mapping[str, str] | None = None,
                kill_grace: float = 3.0) -> asyncio.subprocess.Process:
    """Start a command in its own session that dies with us. Output is dropped unless
    `capture`, in which case the caller must read it (`communicate()`)."""
    pipe = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    guarded = [sys.executable, "-I", "-S", _GUARD, str(kill_grace), *argv]
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *guarded, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe,
        env={**_without_nats(os.environ), **(env or {})}, start_new_session=True,
        preexec_fn=die_with_parent(os.getpid()),
    ))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The process may exist before the spawn returns: never leave it running unowned.
        await stop_process(await starting, grace=kill_grace)
        raise


async def stop_process(proc: asyncio.subprocess.Process, *, grace: float) -> None:
    """Kill a spawned process with its whole tree, and reap it."""
    if proc.returncode is None:  # once reaped, the pid may belong to someone else
        # Shielded so a second cancel cannot leave the tree half killed.
        await asyncio.shield(asyncio.to_thread(terminate_tree, proc.pid, grace=grace))
    # Stragglers whose parent already exited are still in the session's process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:  # wait() also waits for the pipes: bounded, in case a daemon escaped with them
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        log.warning("pid %s: its output is still held by an unknown process", proc.pid)


async def run_process(argv: list[str], *, timeout: float | None = None,
                      env: Mapping[str, str] | None = None,
                      kill_grace: float = 3.0) -> ProcessResult:
    """Run a command to completion. A failure is a result; a timeout kills the tree and is
    a result with `timed_out`; a cancellation kills the tree and propagates. `env` is
    added to ours."""
    started = time.monotonic()
    proc = await spawn(argv, capture=True, env=env, kill_grace=kill_grace)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        await stop_process(proc, grace=kill_grace)
        if isinstance(exc, asyncio.CancelledError):
            raise
        out, err, timed_out = b"", b"", True
    else:
        timed_out = False
    return ProcessResult(
        argv=argv, exit_code=-1 if proc.returncode is None else proc.returncode,
        stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
        duration=time.monotonic() - started, timed_out=timed_out,
    )
