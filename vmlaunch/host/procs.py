"""Process lifetimes, in one place: every child is spawned here, tied to our life, and
stopped here (SIGTERM, then SIGKILL of its whole tree or session after a grace period).

Short commands (az, ssh) run with a timeout under this process's guard (`run_process`,
guarded.py and procguard.py), which ends each one's whole process group; long-lived
children (the embedded nats-server and workers) are started by `spawn_child` and stopped
by `stop_child`, which signals only the child itself, since it stops its own children in
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from vmlaunch.host import guarded
from vmlaunch.host.procguard import NOT_RUN, on_parent_death

log = logging.getLogger("procs")

# The grace periods between SIGTERM and SIGKILL, and why each is as long as it is.
# az or ssh: room for a Python CLI to act on SIGTERM, yet short, since a stop waits on it.
KILL_GRACE = 3.0
# nats-server: it closes its JetStream store cleanly, and a rerun resumes from that store.
SERVER_GRACE = 5.0
# A worker gets its own --grace for the work in flight plus this margin to give back what
# it still holds, kill its az trees (KILL_GRACE) and close its NATS connection.
WORKER_MARGIN = 5.0


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


# Commands (az, ssh) run this much nicer than we do: 32 az processes of ~1 s of CPU each
# would otherwise take the CPU from the worker or orchestrator that reports their results,
# and a busy machine would delay every report instead of the commands' own work.
COMMAND_NICENESS = 19


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel SIGKILLs the child when its parent dies, even by SIGKILL.
    Only the direct child: a launcher that forks (rather than execs) the CLI is not covered."""
    def preexec() -> None:
        if not on_parent_death(signal.SIGKILL, parent):
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def _without_nats(environ: Mapping[str, str]) -> dict[str, str]:
    """Our environment for az and ssh: no NATS_* setting, which they never need and which
    may hold a password, a token or a URL with credentials."""
    return {key: value for key, value in environ.items() if not key.startswith("NATS_")}


async def spawn_child(argv: list[str], *, env: Mapping[str, str] | None = None,
                      output: IO[bytes] | int = asyncio.subprocess.DEVNULL,
                      ) -> asyncio.subprocess.Process:
    """Start a long-lived child (a server, a worker) in its own session, so a Ctrl-C on the
    terminal reaches only us and we stop it in order, and tied to our life, so it dies
    with us even on SIGKILL. `env` replaces ours; `output` takes stdout and stderr."""
    return await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
        start_new_session=True, preexec_fn=die_with_parent(os.getpid()))


async def stop_child(proc: asyncio.subprocess.Process, *, grace: float) -> None:
    """SIGTERM only the child (it stops its own children in order), SIGKILL it after
    `grace` seconds, then whatever it left in its session; reap it. Safe twice."""
    _send(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        _send(proc, signal.SIGKILL)
    await _end_session(proc, pipe_wait=grace)


def _send(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:  # once reaped, the pid may belong to someone else
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


async def _end_session(proc: asyncio.subprocess.Process, *, pipe_wait: float) -> None:
    """SIGKILL what is left in the child's session (stragglers whose parent has exited),
    and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:  # wait() also waits for the pipes: bounded, in case a daemon escaped with them
        await asyncio.wait_for(proc.wait(), pipe_wait)
    except TimeoutError:
        log.warning("pid %s: its output is still held by an unknown process", proc.pid)


async def run_process(argv: list[str], *, timeout: float | None = None,
                      env: Mapping[str, str] | None = None, kill_grace: float = KILL_GRACE,
                      niceness: int = COMMAND_NICENESS) -> ProcessResult:
    """Run a command under this process's guard (procguard.py): in a session of its own
    that dies with us, `niceness` nicer than we are. A failure is a result; a timeout
    kills the group and is a result with `timed_out`; a cancellation kills the group and
    propagates. `env` is added to ours."""
    started = time.monotonic()
    try:
        guard = guarded.guard()
    except guarded.GuardUnavailable as exc:  # lost, then not restarted: as a lost call
        log.warning("%s", exc)  # (a process that never had one stopped at its AzCli)
        return ProcessResult(argv=argv, exit_code=NOT_RUN, stdout="", stderr=str(exc),
                             duration=time.monotonic() - started, timed_out=False)
    call = guard.run(argv, env={**_without_nats(os.environ), **(env or {})},
                     niceness=niceness, grace=kill_grace)
    try:
        code = await asyncio.wait_for(asyncio.shield(call.exited), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        # Shielded so a second cancel cannot leave the group half killed.
        await asyncio.shield(call.stop(grace=kill_grace))
        if isinstance(exc, asyncio.CancelledError):
            raise
        code = call.exited.result() if call.exited.done() else NOT_RUN
        out, err, timed_out = b"", b"", True
    else:
        out, err = await call.output(wait=kill_grace)
        timed_out = False
    return ProcessResult(
        argv=argv, exit_code=code, stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"), duration=time.monotonic() - started,
        timed_out=timed_out,
    )
