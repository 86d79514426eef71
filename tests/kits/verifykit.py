"""Helpers for the verification tests and bench/verify_checks.py: a real sshd for the SSH
checks, a `cloud-init` for its sessions, and the most az processes of one kind seen at once.

The sshd is real (loopback, the current user); what the session runs stands in for the
VM's own `cloud-init status`, which this machine does not have.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import AzSim, is_az_sim_client
from workerkit import SSHD, Sshd

DONE = "status: done\nextended_status: done\nboot_status_code: enabled-by-generator\n"
DEGRADED = ("status: done\nextended_status: degraded done\nboot_status_code: "
            "enabled-by-generator\nrecoverable_errors:\nWARNING:\n\t- apt mirror unreachable\n")


def sshd_server(root: Path) -> Iterator[Sshd]:
    """The body of an `sshd` fixture: a real sshd on loopback (the simulator can give
    every VM the public IP 127.0.0.1), stopped afterwards; skips where sshd cannot run."""
    if not SSHD.exists():
        pytest.skip("sshd not installed (apt-get install openssh-server)")
    try:  # sshd refuses to start without its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"sshd needs /run/sshd, which cannot be created here ({exc.strerror})")
    (root / "sshd").mkdir()
    server = Sshd(root / "sshd").start()
    yield server
    server.stop()


class CloudInit:
    """A `cloud-init` first on the PATH of `sshd`'s sessions (a forced command in its
    authorized_keys runs the requested command with it). `status --wait` blocks until
    `release()`; the first `drops` calls end as a dropped connection does (ssh exit 255)."""

    def __init__(self, sshd: Sshd, root: Path, *, output: str = DONE, exit_code: int = 0,
                 drops: int = 0, wait: bool = True) -> None:
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        (root / "output").write_text(output)
        self.released = root / "released"
        if not wait:
            self.released.touch()
        self.calls_log = root / "calls"
        calls, released = shlex.quote(str(self.calls_log)), shlex.quote(str(self.released))
        _script(bin_dir / "cloud-init", f"""echo "$*" >> {calls}
[ "$(wc -l < {calls})" -le {drops} ] && exit 255
case " $* " in *" --wait "*) while [ ! -e {released} ]; do sleep 0.05; done;; esac
cat {shlex.quote(str(root / "output"))}
exit {exit_code}""")
        forced = _script(root / "session", f'PATH={shlex.quote(str(bin_dir))}:"$PATH" '
                                           'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"')
        key = Path(f"{sshd.key}.pub").read_text()
        (sshd.root / "authorized_keys").write_text(f'command="{forced}" {key}')

    def calls(self) -> list[str]:
        """The arguments of every call so far, in order."""
        return self.calls_log.read_text().splitlines() if self.calls_log.exists() else []

    def waiting(self) -> bool:
        """Some call is waiting in `status --wait`."""
        return any("--wait" in call for call in self.calls()) and not self.released.exists()

    def release(self) -> None:
        self.released.touch()


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def peak_processes(az_sim: AzSim, word: str, *, interval: float = 0.05) -> Iterator[list[int]]:
    """Samples, in a thread, how many of the simulator's az processes have `word` in their
    command line (their parent is the launcher's guard, not counted); yields the list of
    counts, complete once the block ends."""
    counts: list[int] = []
    stop = threading.Event()
    marker = f"{az_sim.state_path}"

    def sample() -> None:
        while not stop.is_set():
            counts.append(sum(1 for proc in psutil.process_iter(["cmdline"])
                              if _is(proc, word, marker)))
            stop.wait(interval)

    thread = threading.Thread(target=sample, name="peak-processes")
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join()


def _is(proc: psutil.Process, word: str, state_path: str) -> bool:
    """An az-sim client of this simulator with `word` in its command line; the command
    line is read first, as it is cheap."""
    argv = proc.info["cmdline"] or []
    if not is_az_sim_client(argv) or word not in argv:
        return False
    try:
        return proc.environ().get("AZ_SIM_STATE") == state_path
    except psutil.Error:
        return False
