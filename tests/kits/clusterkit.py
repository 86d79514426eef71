"""Helpers for the end-to-end tests beyond one server: a 3-node cluster through
scripts/nats-cluster.sh, and an orchestrator run with its output in files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, AzSim, wait_until
from orchestratorkit import ORCHESTRATOR, env_for

CLUSTER_SCRIPT = REPO / "scripts" / "nats-cluster.sh"


class NatsCluster:
    """Three routed nats-server processes on loopback, managed by scripts/nats-cluster.sh."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.urls = ""

    def _script(self, action: str) -> str:
        return subprocess.run([str(CLUSTER_SCRIPT), action, str(self.root)], check=True,
                              capture_output=True, text=True, timeout=60).stdout

    def start(self) -> str:
        self.urls = self._script("start").strip()
        return self.urls

    def stop(self) -> None:
        self._script("stop")

    def running(self) -> set[str]:
        return {line.split()[0] for line in self._script("status").splitlines()
                if line.endswith(" running")}

    def kill(self, node: str) -> None:
        """SIGKILL one node, as a crashed host would go."""
        os.kill(int((self.root / f"{node}.pid").read_text()), signal.SIGKILL)
        wait_until(lambda: node not in self.running(), timeout=10, message=f"{node} to die")


class Orchestrator:
    """`orchestrator.py deploy ...` as a real process; stdout and stderr go to files.
    As a context manager it never outlives the test (a failed test must not leave it
    polling a simulator that the next run reuses)."""

    def __init__(self, cwd: Path, az_sim: AzSim, *args: str) -> None:
        self.cwd = cwd
        with (cwd / "orchestrator.out").open("wb") as out, \
                (cwd / "orchestrator.err").open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(ORCHESTRATOR), *args], cwd=cwd,
                                         env=env_for(az_sim), stdout=out, stderr=err)

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return ((self.cwd / "orchestrator.out").read_text(errors="replace")
                + (self.cwd / "orchestrator.err").read_text(errors="replace"))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"orchestrator still running after {timeout:g} s:\n"
                                 f"{self.output()[-4000:]}") from None
