"""Run one command; when our parent dies, take the command's whole process group with us.

PR_SET_PDEATHSIG reaches only a direct child, but real `az` launchers (the deb/rpm bash
wrapper, pip's entry script) start the CLI as a *grandchild*: SIGKILL of a worker would
orphan it. So every command runs under this guard, which is the direct child and the
leader of a new process group: the kernel sends it SIGTERM when the parent dies, and it
passes that on to the group, then SIGKILLs what is left after a grace period. The guard
outlives the command's direct child until the group is empty: a grandchild that ignores
SIGTERM (or was left running in the background) is SIGKILLed at the end of the grace.

Usage: python -I -S procguard.py GRACE_SECONDS PARENT_PID NICENESS COMMAND [ARG ...]
(stdlib only, no shell). PARENT_PID is the pid that started it: if that process is already
gone when the guard takes effect, the command is not run. NICENESS is added to the guard's
own, and so to the command's.

`on_parent_death` is also what `procs.die_with_parent` uses: one place knows the prctl.
"""

# Every az command starts one of these: no `signal` (it imports enum) and no contextlib
# (functools and collections), ~4 ms of each command's start.
import _signal as signal
import ctypes
import os
import sys
import time

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Loaded at import: a preexec_fn (after fork, maybe in a threaded parent) must not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True)  # the running program, libc included
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def on_parent_death(sig: int, parent: int) -> bool:
    """Have the kernel send us `sig` when our parent dies, even by SIGKILL. False
    when `parent` is already gone (it died before the prctl took effect)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


def _others() -> list[int]:
    """The live members of our process group other than us (from /proc: stdlib only)."""
    me, group, found = os.getpid(), os.getpgrp(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # After the ")" closing the command name: state, ppid, pgrp, ...
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != b"Z" and int(fields[2]) == group:
            found.append(int(entry))
    return found


def _signal_others(sig: int) -> None:
    for pid in _others():
        try:  # noqa: SIM105 (no contextlib, see the imports)
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _end_group(deadline: float) -> None:
    """SIGTERM the rest of the group, SIGKILL whatever is still there at ``deadline``."""
    if not _others():
        return  # the usual case, and each look reads every process's /proc entry
    _signal_others(signal.SIGTERM)
    while _others() and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(100):  # bounded: a process stuck in the kernel must not hang us
        if not _others():
            return
        _signal_others(signal.SIGKILL)
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    grace, parent, niceness, command = float(argv[0]), int(argv[1]), int(argv[2]), argv[3:]
    stopped_at: list[float] = []

    def stop(signum: int, frame: object) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        stopped_at.append(time.monotonic())
        _signal_others(signal.SIGTERM)
        # A direct child that ignores SIGTERM is SIGKILLed at the end of the grace.
        signal.signal(signal.SIGALRM, lambda *_: _signal_others(signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, grace)

    # Handlers first: a parent that dies once the prctl holds must find us able to pass
    # the SIGTERM on, even to a child forked a moment later (it is in our group).
    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    if not on_parent_death(signal.SIGTERM, parent):
        return 128 + signal.SIGTERM
    os.nice(niceness)
    if stopped_at:  # told to stop before the command started: it never starts
        return 128 + signal.SIGTERM
    child = os.fork()
    if child == 0:
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    if stopped_at:  # the stop came during the fork: the child may have missed it
        _signal_others(signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    # Nothing of the command outlives it, and a stop keeps its deadline.
    _end_group((stopped_at[0] if stopped_at else time.monotonic()) + grace)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own so killpg(0) spares our parent
    sys.exit(main(sys.argv[1:]))
