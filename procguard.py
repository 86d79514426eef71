"""Run one command; when our parent dies, take the command's whole process group with us.

PR_SET_PDEATHSIG reaches only a direct child, but real `az` launchers (the deb/rpm bash
wrapper, pip's entry script) start the CLI as a *grandchild*: SIGKILL of a worker would
orphan it. So every command runs under this guard, which is the direct child and the
leader of a new process group: the kernel sends it SIGTERM when the parent dies, and it
passes that on to the group, then SIGKILLs what is left after a grace period.

Usage: python -I -S procguard.py GRACE_SECONDS COMMAND [ARG ...]   (stdlib only, no shell)
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    grace, command = float(argv[0]), argv[1:]
    parent = os.getppid()
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 128 + signal.SIGTERM
    child = os.fork()
    if child == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)

    def stop(signum: int, frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, grace)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    _, status = os.waitpid(child, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own so killpg(0) spares our parent
    sys.exit(main(sys.argv[1:]))
