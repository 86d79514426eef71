"""The bash drop-in end to end: scripts/deploy.sh (which calls scripts/vm-launch.sh) in a
deployment directory of its own, against the simulator; then the state file is read the
way the bash scripts read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, AzSim

pytestmark = pytest.mark.timeout(120)

DEPLOY_SH = REPO / "scripts" / "deploy.sh"
HOSTS = {"k0s-controller-1": ("1", "Standard_D2s_v5"), "k0s-worker-1": ("2", "Standard_D4s_v5"),
         "k0s-worker-2": ("3", "Standard_D4s_v5")}
# Verification as the simulator allows: cloud-init through run-command instead of SSH.
SIM_OPTIONS = "--no-verify-ssh --cloud-init-check run-command --retry-backoff 0.05"


def deploy_sh(directory: Path, az_sim: AzSim, **env: str) -> subprocess.CompletedProcess[str]:
    cloud_init = directory / "cloud-init-yaml"
    cloud_init.mkdir(parents=True)
    for host in HOSTS:
        (cloud_init / f"{host}-cloud-init.yaml").write_text(f"#cloud-config\nhostname: {host}\n")
    base = {key: value for key, value in az_sim.env.items() if key != "NATS_URL"}
    return subprocess.run(
        ["bash", str(DEPLOY_SH)], cwd=directory, capture_output=True, text=True, timeout=100,
        env={**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}",
             "K0RDENT_CLUSTERID": "k0rdent-bash0001", "K0S_CONTROLLER_COUNT": "1",
             "K0S_WORKER_COUNT": "2", "CONTROLLER_ZONES": "1 2 3", "WORKER_ZONES": "2 3",
             "VM_WAIT_CHECK_INTERVAL": "0.2", "VM_CREATION_TIMEOUT_MINUTES": "1", **env})


def state_get(directory: Path, key_path: str) -> Any:
    """`.vm_states.<host>.public_ip` as a YAML query tool reads it."""
    node = yaml.safe_load((directory / "state" / "deployment-state.yaml").read_text())
    for key in key_path.strip(".").split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


@pytest.mark.parametrize("options", [
    pytest.param(f"--legacy-poll {SIM_OPTIONS}", id="legacy-polling"),
    pytest.param(SIM_OPTIONS, id="embedded-nats"),
])
def test_deploy_sh_creates_every_host_and_the_state_file_reads_as_before(
        tmp_path: Path, az_sim: AzSim, options: str):
    az_sim.scenario({"time_scale": 0.01, "defaults": {"run_command_seconds": 5}})

    result = deploy_sh(tmp_path, az_sim, VM_LAUNCH_OPTIONS=options)

    assert result.returncode == 0, result.stdout + result.stderr
    azure = az_sim.state()
    assert state_get(tmp_path, ".phase") == "vms_ready"
    assert state_get(tmp_path, ".deployment_id") == "k0rdent-bash0001"
    for host, (zone, size) in HOSTS.items():
        vm = azure["vms"][host]
        assert (vm["resource_group"], vm["zone"], vm["size"]) == (
            "k0rdent-bash0001-resgrp", zone, size)
        assert vm["custom_data"] == f"#cloud-config\nhostname: {host}\n"
        assert state_get(tmp_path, f".vm_states.{host}.public_ip") == vm["public_ip"]
        assert state_get(tmp_path, f".vm_states.{host}.state") == "Succeeded"
        assert f"{host}" in result.stdout and vm["public_ip"] in result.stdout  # its reader
    assert azure["create_counts"] == dict.fromkeys(HOSTS, 1)
    assert "phase: vms_ready" in result.stdout


def test_deploy_sh_stops_with_exit_1_when_a_host_fails(tmp_path: Path, az_sim: AzSim):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "k0s-worker-2", "fail": "QuotaExceeded", "fail_phase": "preflight"}]})

    result = deploy_sh(tmp_path, az_sim, VM_LAUNCH_OPTIONS=f"--legacy-poll {SIM_OPTIONS}")

    assert result.returncode == 1, result.stdout + result.stderr
    assert state_get(tmp_path, ".vm_states.k0s-worker-2.state") == "Failed"
    assert state_get(tmp_path, ".vm_states.k0s-worker-1.state") == "Succeeded"
    assert state_get(tmp_path, ".phase") != "vms_ready"
    assert "Not every VM is ready" in result.stderr


def test_vm_launch_sh_reports_bad_input_with_exit_2_and_launches_nothing(
        tmp_path: Path, az_sim: AzSim):
    env = {key: value for key, value in az_sim.env.items() if key != "NATS_URL"}
    env.pop("RG", None)
    env.pop("VM_HOSTS", None)

    result = subprocess.run(["bash", str(REPO / "scripts" / "vm-launch.sh")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "RG" in result.stderr and "VM_HOSTS" in result.stderr
    assert az_sim.state()["calls"] == {}
