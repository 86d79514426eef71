"""Running `orchestrator.py` as a real process in a test's own directory, and reading
the state and events files it keeps (shared by the end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import yaml
from conftest import REPO, AzSim, wait_until

ORCHESTRATOR = REPO / "orchestrator.py"
VM_LAUNCHER = REPO / "vm_launcher.py"
FAST = ["--image", "Debian12", "--no-verify-ssh", "--no-verify-cloud-init",
        "--retry-backoff", "0.05", "-y"]
SIX = ["k0s-controller-1:1", "k0s-controller-2:2", "k0s-controller-3:3", "k0s-worker-1:2",
       "k0s-worker-2:3", "k0s-worker-3:1"]
SIX_NAMES = [v.split(":")[0] for v in SIX]

def env_for(az_sim: AzSim, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in az_sim.env.items() if key != "NATS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def vm_args(*vms: str, group: str = "rg-test") -> list[str]:
    return [*(arg for vm in vms for arg in ("--vm", vm)), "--resource-group", group]


def orchestrate(tmp_path: Path, az_sim: AzSim, *args: str,
                timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ORCHESTRATOR), *args], cwd=tmp_path,
                          env=env_for(az_sim), capture_output=True, text=True, timeout=timeout)


def start_orchestrator(tmp_path: Path, az_sim: AzSim, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ORCHESTRATOR), *args], cwd=tmp_path,
                            env=env_for(az_sim), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def state(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "state" / "deployment-state.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "deployment-events.yaml"
    return yaml.safe_load(path.read_text())["events"] if path.exists() else []


def actions_of(tmp_path: Path, vm: str) -> list[str]:
    return [e["action"] for e in events(tmp_path) if f" {vm} " in f" {e['message']} "
            or f" {vm}:" in e["message"]]


def assert_no_process_left(az_sim: AzSim) -> None:
    """Every process started with this simulator's state (workers, az, nats) is gone."""
    wait_until(lambda: not [p for p in az_sim.processes() if _alive(p)], timeout=10,
               message="no process left behind")


def assert_ready(tmp_path: Path, az_sim: AzSim, names: list[str]) -> None:
    vms = state(tmp_path)["vm_states"]
    sim = az_sim.state()["vms"]
    for name in names:
        assert vms[name]["state"] == "Succeeded", vms[name]
        assert vms[name]["public_ip"] == sim[name]["public_ip"]
        assert vms[name]["private_ip"] == sim[name]["private_ip"]
        assert vms[name]["verified"] is True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
