"""Shared fixtures: a real nats-server per test, the az simulator, bounded waits.

The simulator is the only stand-in; everything else (NATS, workers, orchestrator,
files, signals) is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from vmlaunch.bus.embedded import EmbeddedNats

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # sample files shared by the tests
AZ_SIM = REPO / "scripts" / "az-sim"
PYTHON = sys.executable

# Under pytest-xdist each test process gets a temporary directory of its own, so the
# machine-wide az slots (<tmp>/vmlaunch-<uid>/az-slots) of one process's tests never make
# another's wait: every test sees the limits it sets.
if _worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _own = Path(tempfile.gettempdir()) / f"vmlaunch-tests-{_worker}"
    _own.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(_own)
    tempfile.tempdir = None  # read TMPDIR again


def _settled(predicate: Callable[[], Any], deadline: float, timeout: float,
             message: str) -> Any:
    """The predicate's truthy value, None to poll again, or a failure past the deadline."""
    value = predicate()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
    return value


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := _settled(predicate, deadline, timeout, message)):
        time.sleep(interval)
    return value


async def async_wait_until(predicate: Callable[[], Any], *, timeout: float,
                           interval: float = 0.05, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := _settled(predicate, deadline, timeout, message)):
        await asyncio.sleep(interval)
    return value


def is_az_sim_client(cmdline: list[str]) -> bool:
    """An `az` process of the simulator: scripts/az-sim before it execs, the native client
    (scripts/.build/az-sim) or the Python one (`python3 -I -S .../azsim/client.py`)."""
    return any(part.endswith(("az-sim", "azsim/client.py")) for part in cmdline[:4])


class AzSim:
    """One private simulated Azure: its state file, scenario and environment."""

    def __init__(self, root: Path) -> None:
        self.state_path = root / "az-sim-state"
        self.scenario_path = root / "az-sim-scenario.yaml"
        self.scenario({"time_scale": 0.01})

    @property
    def env(self) -> dict[str, str]:
        # The venv's python first on PATH: az-sim starts ~80 ms faster than via a pyenv shim.
        path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {
            **os.environ,
            "PATH": path,
            "AZ_CLI": str(AZ_SIM),
            "AZ_SIM_STATE": str(self.state_path),
            "AZ_SIM_SCENARIO": str(self.scenario_path),
            # Simulated time runs fast here: so does tracking (deploy hands it to its
            # embedded workers). A test that passes --track-interval overrides it.
            "VMLAUNCH_TRACK_INTERVAL": "0.2",
        }

    def scenario(self, scenario: dict[str, Any]) -> None:
        self.scenario_path.write_text(yaml.safe_dump(scenario))

    def az(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(AZ_SIM), *args], env=self.env, capture_output=True,
                              text=True, check=check, timeout=60)

    def state(self) -> dict[str, Any]:
        return json.loads(self.az("sim", "state").stdout)

    def processes(self) -> list[psutil.Process]:
        """Live processes started with this simulator's state file (orphan checks)."""
        marker = f"AZ_SIM_STATE={self.state_path}"
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and marker in "\0".join(
                        f"{k}={v}" for k, v in proc.environ().items()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def az_processes(self) -> list[psutil.Process]:
        """Live `az-sim` processes of this simulator (not workers or orchestrators): the
        clients, the `az` processes the tool ran. A call's work runs in a child of the
        simulator's fork server, which dies with its client (tests/sim/
        test_az_sim_server.py), so a client is what a leftover call leaves behind."""
        alive = []
        for proc in self.processes():
            try:
                if is_az_sim_client(proc.cmdline()):
                    alive.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return alive


@pytest.fixture
def az_sim(tmp_path: Path) -> AzSim:
    return AzSim(tmp_path)


@pytest.fixture
async def nats_server(tmp_path: Path):
    """A real nats-server with JetStream on a free loopback port, stopped after the test."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
