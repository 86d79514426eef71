"""Our side of procguard.py: one guard process per tool process runs every command.

The guard is started on first use by a thread of our own that lives as long as we do (the
kernel's parent-death signal follows the thread that forked, not the process) and that
reads the guard's replies, handing each exit code to the event loop of the call it ends.
A call's output comes back through pipes we create and read ourselves. If the guard is
lost (it never is, short of a SIGKILL), its calls end with exit code NOT_RUN (-1) and the next call
starts another guard. A guard that ends before it says it is ready is `GuardUnavailable`
(exit 3): no command can run here, and a NOT_RUN, an unknown outcome, would be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import marshal
import os
import socket
import subprocess
import sys
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path

from vmlaunch.errors import ExitCode, HostError
from vmlaunch.host.procguard import NOT_RUN

log = logging.getLogger("procs")

_GUARD = str(Path(__file__).with_name("procguard.py"))
START_WAIT = 30.0  # for a new guard to say it is ready: a Python start, on a busy machine


class GuardUnavailable(HostError, exit_code=ExitCode.CANNOT_RUN):
    """The guard process did not start: no command (az, ssh) can run from this process."""


@dataclass
class Call:
    """One command the guard runs: its exit code, then what it wrote."""

    guard: Guard
    key: int
    exited: asyncio.Future[int]
    stdout: _Output
    stderr: _Output

    async def stop(self, *, grace: float) -> None:
        """SIGTERM the command's group, SIGKILL it after `grace`; return once it is gone."""
        self.guard.send(("stop", self.key))
        # The guard reports within grace + its 2 s for a process stuck in the kernel.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exited), grace + 10)
        self.close()

    async def output(self, *, wait: float) -> tuple[bytes, bytes]:
        """What the command wrote. Its group is gone by now; a process that left the group
        (a daemon) may still hold a pipe: we wait for that `wait` seconds at most, then
        take what came."""
        try:
            await asyncio.wait_for(asyncio.gather(self.stdout.done, self.stderr.done), wait)
        except TimeoutError:
            log.warning("call %s: its output is still held by an unknown process", self.key)
        self.close()
        return bytes(self.stdout.chunks), bytes(self.stderr.chunks)

    def close(self) -> None:
        for output in (self.stdout, self.stderr):
            output.done.cancel()  # which closes the pipe


class Guard:
    """The connection to one guard process (see the module docstring)."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.alive = True
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = {}
        self._failed_start = f"no answer in {START_WAIT:g} s"  # until it says it is ready
        self._proc: subprocess.Popen[bytes] | None = None
        started = threading.Event()
        threading.Thread(target=self._serve, args=(theirs, started), name="procguard",
                         daemon=True).start()
        if not started.wait(START_WAIT) or not self.alive:
            self.alive = False
            if self._proc is not None:
                self._proc.kill()  # stuck in its start (it runs no command yet): the
                # reader then sees EOF, and closes and reaps
            raise GuardUnavailable(f"the process guard ({_GUARD}) did not start: "
                                   f"{self._failed_start}")

    def _serve(self, theirs: socket.socket, started: threading.Event) -> None:
        self._proc = proc = self._start(theirs)
        ready = proc is not None and self._receive() == ("ready",)
        if not ready:
            self.alive = False
            self.sock.close()
            if proc is not None:
                self._failed_start = f"exit code {proc.wait()}"
            started.set()
            return
        started.set()
        while message := self._receive():
            self._settle(message[1], message[2])
        self.alive = False
        self.sock.close()
        log.warning("procguard ended (exit code %s); its calls are lost", proc.wait())
        with self._lock:
            keys = list(self._waiting)
        for key in keys:
            self._settle(key, NOT_RUN)

    def _start(self, theirs: socket.socket) -> subprocess.Popen[bytes] | None:
        try:
            # Its own session (with its commands): a Ctrl-C on the terminal reaches only us,
            # and we stop the commands.
            return subprocess.Popen(
                [sys.executable, "-I", "-S", _GUARD, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._failed_start = str(exc)
            return None
        finally:
            theirs.close()

    def _receive(self) -> tuple | None:
        try:
            return marshal.loads(self.sock.recv(1 << 16)) or None
        except (OSError, EOFError, ValueError):
            return None

    def _settle(self, key: int, code: int) -> None:
        with self._lock:
            loop, future = self._waiting.pop(key, (None, None))
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # that call's event loop is closed
                loop.call_soon_threadsafe(_set, future, code)

    def send(self, message: tuple, fds: tuple[int, ...] = ()) -> bool:
        """False if the message did not go; a guard that is gone is not used again."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        try:
            # Blocking: the guard reads at once, and a dead one closes the socket (ours is
            # the only end it has: commands never inherit it).
            self.sock.sendmsg([marshal.dumps(message)], ancillary)
        except (BrokenPipeError, ConnectionError):
            self.alive = False  # the reader settles the calls it had
            return False
        except (OSError, ValueError):  # this message only (too large, not marshal-able)
            return False
        return True

    def run(self, argv: list[str], *, env: dict[str, str], niceness: int,
            grace: float) -> Call:
        loop = asyncio.get_running_loop()
        key, exited = next(self._keys), loop.create_future()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        with self._lock:
            self._waiting[key] = (loop, exited)
        try:
            sent = self.send(("run", key, argv, env, _cwd(), niceness, grace), (out_w, err_w))
        finally:
            os.close(out_w)
            os.close(err_w)
        if not sent or not self.alive:
            self._settle(key, NOT_RUN)
        return Call(self, key, exited, _Output(loop, out_r), _Output(loop, err_r))


def _set(future: asyncio.Future[int], code: int) -> None:
    if not future.done():
        future.set_result(code)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed under us
        return "/"


class _Output:
    """A pipe read to its end on the event loop; cancelling `done` closes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.chunks = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.chunks.extend(data)
            elif not self.done.done():
                self.done.set_result(None)

        def closed(_: asyncio.Future[None]) -> None:
            loop.remove_reader(fd)
            os.close(fd)

        loop.add_reader(fd, readable)
        self.done.add_done_callback(closed)


_guard: Guard | None = None
_starting = threading.Lock()


def guard() -> Guard:
    """This process's guard, started on first use (and again if it was lost)."""
    global _guard
    with _starting:
        if _guard is None or not _guard.alive:
            _guard = Guard()
        return _guard


def _forget() -> None:
    """A forked child of ours starts a guard of its own: the parent's is not its to use."""
    global _guard, _starting
    _guard, _starting = None, threading.Lock()


os.register_at_fork(after_in_child=_forget)
