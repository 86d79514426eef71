"""The guard: one process per tool process that starts every command (az, ssh) for it, and
when the tool dies, even by SIGKILL, takes each command's whole process group with it.

PR_SET_PDEATHSIG reaches only a direct child, but real `az` launchers (the deb/rpm bash
wrapper, pip's entry script) start the CLI as a *grandchild*: SIGKILL of a worker would
orphan it. So the guard forks every command as the leader of a process group of its own,
and:
- when the command's direct child exits, it SIGTERMs what is left of that group and
  SIGKILLs what survives the grace, and only then reports the exit: nothing of a command
  outlives its call;
- told to stop a command, it SIGTERMs the group and SIGKILLs it after the grace;
- when the tool dies (the kernel's SIGTERM, or EOF on the socket), it stops every group.
It reaps a command only once its group is empty: the zombie keeps the group's id reserved,
so a signal to the group can never reach a process that reused the number.

One guard per tool process, not one per command: a Python start per `az` call was ~30 ms
of CPU on a 2-core machine running 500 creates, all of it competing with the reports.

Usage: python -I -S procguard.py SOCKET_FD PARENT_PID (stdlib only, no shell). The socket is
a SOCK_SEQPACKET pair; each message is one marshal'd tuple:
- tool -> guard: ("run", id, argv, env, cwd, niceness, grace) with the command's stdout and
  stderr as SCM_RIGHTS; ("stop", id);
- guard -> tool: ("ready",) once, when it is watching for the tool's death; then
  ("exited", id, code), subprocess's convention: -N for signal N (a killed `az` is an
  unknown outcome, not a failure).

`on_parent_death` is also what `procs.die_with_parent` uses: one place knows the prctl.
"""

import contextlib
import ctypes
import marshal
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Loaded at import: a preexec_fn (after fork, maybe in a threaded parent) must not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True)  # the running program, libc included
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_TICK = 0.02  # how often a group that is being ended is looked at again
_STUCK = 2.0  # after the grace: a process stuck in the kernel must not hang the guard
_MAX_MESSAGE = 1 << 20
NOT_RUN = -1  # the exit code of a call the guard could not start (or was lost under)


def on_parent_death(sig: int, parent: int) -> bool:
    """Have the kernel send us `sig` when our parent dies, even by SIGKILL. False
    when `parent` is already gone (it died before the prctl took effect)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


@dataclass
class Command:
    pid: int  # also its process group's id: it leads a group of its own
    grace: float
    exited: bool = False  # the direct child exited (it stays a zombie until we report)
    kill_at: float | None = None  # set once the group is being ended


def group_members(commands: list[Command]) -> dict[int, list[int]]:
    """The live members of each command's group, its zombie leader left out (from /proc)."""
    wanted: dict[int, list[int]] = {c.pid: [] for c in commands}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:  # os.open and os.read: half the cost of open() (a scan per command's end)
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
            try:
                # After the ")" closing the command name: state, ppid, pgrp, ...
                fields = os.read(fd, 1024).rpartition(b")")[2].split()
            finally:
                os.close(fd)
        except OSError:
            continue  # gone meanwhile
        group = int(fields[2])
        if fields[0] != b"Z" and group in wanted:
            wanted[group].append(int(entry))
    return wanted


def signal_group(pgid: int, sig: int) -> None:
    # The leader is not reaped yet, so the group's id is still its own.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start(argv: list[str], env: dict, cwd: str, niceness: int, fds: list[int]) -> int:
    """Fork the command as the leader of its own process group, `niceness` nicer than we
    are. In our session, not one of its own: with the scheduler's autogroups (on by
    default), each session shares the CPU equally with every other and a nice value counts
    only within its session, so 30 creates in 30 sessions took as much CPU as 30 reads."""
    guard = os.getpid()
    # Blocked across the fork: our handlers must never run in the child.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    finally:
        if os.getpid() == guard:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if pid:
        # Also here, so a stop right after the fork finds the group (whichever runs first).
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return pid
    try:
        signal.set_wakeup_fd(-1)
        for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        os.setpgid(0, 0)
        if not on_parent_death(signal.SIGKILL, guard):
            os._exit(128 + signal.SIGKILL)
        os.nice(niceness)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        with contextlib.suppress(OSError):  # a removed directory: the command decides
            os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # nothing may return into the guard's loop
        os.write(2, f"procguard: cannot run {argv[0]!r}: {exc}\n".encode(errors="replace"))
    finally:
        os._exit(127)


class Guard:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.commands: dict[int, Command] = {}  # by the tool's id
        self.orphaned = False  # the tool is gone: stop everything, then exit

    def receive(self) -> None:
        fds: list[int] = []
        try:
            data, ancdata, _, _ = self.sock.recvmsg(
                _MAX_MESSAGE, socket.CMSG_SPACE(2 * 4), socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                        for i in range(0, len(payload) - len(payload) % 4, 4)]
        try:
            if not data:
                self.orphan()
            else:
                self.handle(marshal.loads(data), fds)
        except (ValueError, EOFError, TypeError, IndexError):
            pass  # not a message of ours; the tool only ever sends well-formed ones
        finally:
            for fd in fds:
                os.close(fd)

    def handle(self, message: tuple, fds: list[int]) -> None:
        if message[0] == "run":
            _, key, argv, env, cwd, niceness, grace = message
            if self.orphaned or len(fds) != 2 or key in self.commands:
                self.reply(("exited", key, NOT_RUN))
                return
            try:
                pid = start(argv, env, cwd, niceness, fds)
            except OSError:  # no fork (a process limit, memory): this call fails, not us
                self.reply(("exited", key, NOT_RUN))
                return
            self.commands[key] = Command(pid, grace)
        elif message[0] == "stop" and message[1] in self.commands:
            self.stop(self.commands[message[1]])

    def stop(self, command: Command) -> None:
        if command.kill_at is None:
            command.kill_at = time.monotonic() + command.grace
            signal_group(command.pid, signal.SIGTERM)

    def orphan(self) -> None:
        self.orphaned = True
        for command in self.commands.values():
            self.stop(command)

    def tend(self) -> None:
        """Notice exited commands; end what is left of their groups; report the ended."""
        now = time.monotonic()
        for command in self.commands.values():
            if self.orphaned:  # also a command forked while the stop signal was held back
                self.stop(command)
            if not command.exited:  # WNOWAIT: the zombie stays, and with it the group's id
                found = os.waitid(os.P_PID, command.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                command.exited = found is not None
            if command.kill_at is not None and now >= command.kill_at:
                signal_group(command.pid, signal.SIGKILL)
        exited = [c for c in self.commands.values() if c.exited]
        members = group_members(exited) if exited else {}
        for key, command in list(self.commands.items()):
            if not command.exited:
                continue
            stuck = command.kill_at is not None and now >= command.kill_at + _STUCK
            if members[command.pid] and not stuck:
                self.stop(command)  # the rest of the group: SIGTERM now, SIGKILL at kill_at
                continue
            # A last SIGKILL for a member forked after the scan: the zombie still holds the id.
            signal_group(command.pid, signal.SIGKILL)
            _, status = os.waitpid(command.pid, 0)
            del self.commands[key]
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self.reply(("exited", key, code))

    def reply(self, message: tuple) -> None:
        if self.orphaned:
            return
        try:
            self.sock.send(marshal.dumps(message))
        except OSError:
            self.orphan()  # the tool is gone

    def timeout(self) -> float | None:
        """Seconds until the next look: none needed while no group is being ended."""
        busy = any(c.exited or c.kill_at is not None for c in self.commands.values())
        return _TICK if busy else None


def serve(sock: socket.socket, parent: int) -> int:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to write to the wakeup fd
    guard = Guard(sock)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: guard.orphan())
    if not on_parent_death(signal.SIGTERM, parent):
        return 128 + signal.SIGTERM
    guard.reply(("ready",))
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(sock, select.POLLIN)
    listening = True
    while not (guard.orphaned and not guard.commands):
        timeout = guard.timeout()
        for fd, _ in poller.poll(None if timeout is None else timeout * 1000):
            if fd == wake_r:
                os.read(wake_r, 4096)
            elif not guard.orphaned:
                guard.receive()
        if guard.orphaned and listening:  # EOF would wake every poll from now on
            poller.unregister(sock)
            listening = False
        guard.tend()
    return 0


if __name__ == "__main__":
    channel = socket.socket(fileno=int(sys.argv[1]))
    channel.set_inheritable(False)  # passed to us inheritable: no command may hold it
    sys.exit(serve(channel, int(sys.argv[2])))
