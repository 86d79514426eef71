"""The orchestrator without NATS: legacy polling on request, when NATS is unreachable at the
start, and when NATS dies mid-run. Real processes (orchestrator, nats-server, workers), the
simulator as Azure; each test runs in its own directory so `./state/` is private."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, AzSim, async_wait_until
from workerkit import running

pytestmark = pytest.mark.timeout(120)

ORCHESTRATOR = REPO / "orchestrator.py"
FAST = ["--image", "Debian12", "--no-verify-ssh", "--retry-backoff", "0.05",
        "--poll-interval", "0.2", "-y"]
SIX = ["vm-1:1", "vm-2:2", "vm-3:3", "vm-4:1", "vm-5:2", "vm-6:3"]
NAMES = [v.split(":")[0] for v in SIX]
ONE_TRANSIENT_ONE_PERMANENT = {
    "time_scale": 0.01, "public_ip": "127.0.0.1",
    "defaults": {"run_command_seconds": 5},
    "vms": [{"match": "vm-3", "attempts": [1], "fail": "InternalServerError"},
            {"match": "vm-5", "fail": "QuotaExceeded", "fail_phase": "preflight"}],
}


def env_for(az_sim: AzSim, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in az_sim.env.items() if key != "NATS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def vm_args(*vms: str) -> list[str]:
    return [*(arg for vm in vms for arg in ("--vm", vm)), "--resource-group", "rg-test"]


def orchestrate(cwd: Path, az_sim: AzSim, *args: str, env: dict[str, str] | None = None,
                timeout: float = 90) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(ORCHESTRATOR), "deploy", *args], cwd=cwd,
                          env=env or env_for(az_sim), capture_output=True, text=True,
                          timeout=timeout)


def state(cwd: Path) -> dict[str, Any]:
    return yaml.safe_load((cwd / "state" / "deployment-state.yaml").read_text())


def actions(cwd: Path) -> list[str]:
    events = yaml.safe_load((cwd / "state" / "deployment-events.yaml").read_text())["events"]
    return [event["action"] for event in events]


def comparable(vm_states: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What must agree between two runs: everything but times (last_checked, *_at) and the
    private IP's value (NICs are numbered in creation order, which concurrency varies)."""
    def same(key: str) -> bool:
        return key not in ("last_checked", "private_ip") and not key.endswith("_at")
    return {name: {**{k: v for k, v in vm.items() if same(k)},
                   "private_ip": bool(vm["private_ip"])}
            for name, vm in vm_states.items()}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_legacy_polling_ends_with_the_same_state_file_as_the_nats_path(tmp_path: Path):
    runs = {}
    for mode, extra in (("nats", []), ("legacy", ["--legacy-poll"])):
        (tmp_path / f"sim-{mode}").mkdir()
        sim = AzSim(tmp_path / f"sim-{mode}")
        sim.scenario(ONE_TRANSIENT_ONE_PERMANENT)
        result = orchestrate(tmp_path / mode, sim, *vm_args(*SIX), *FAST, *extra)
        assert result.returncode == 1, result.stderr + result.stdout
        runs[mode] = (state(tmp_path / mode), sim.state())

    (nats_file, nats_azure), (legacy_file, legacy_azure) = runs["nats"], runs["legacy"]
    assert comparable(legacy_file["vm_states"]) == comparable(nats_file["vm_states"])
    assert legacy_file["vm_states"]["vm-5"]["state"] == "Failed"
    assert legacy_file["vm_states"]["vm-3"]["attempt"] == 2
    assert legacy_file["phase"] == nats_file["phase"]
    assert legacy_azure["create_counts"] == nats_azure["create_counts"]
    # Each mode says in the events file which one ran.
    legacy_events = yaml.safe_load(
        (tmp_path / "legacy" / "state" / "deployment-events.yaml").read_text())["events"]
    assert any("legacy-poller" in e["message"] for e in legacy_events)


def test_an_unreachable_nats_url_warns_once_and_completes_by_polling(tmp_path: Path,
                                                                     az_sim: AzSim):
    az_sim.scenario({"time_scale": 0.01})
    env = env_for(az_sim, NATS_URL=f"nats://127.0.0.1:{closed_port()}")

    result = orchestrate(tmp_path / "run", az_sim, *vm_args("vm-1", "vm-2"), *FAST,
                         "--no-verify-cloud-init", "--nats-connect-timeout", "1", env=env)

    assert result.returncode == 0, result.stderr + result.stdout
    output = result.stdout + result.stderr
    assert output.count("falling back to legacy polling") == 1
    final = state(tmp_path / "run")
    assert final["phase"] == "vms_ready"
    assert {vm["state"] for vm in final["vm_states"].values()} == {"Succeeded"}
    assert az_sim.state()["create_counts"] == {"vm-1": 1, "vm-2": 1}


def test_an_unreachable_nats_with_require_nats_exits_3_and_launches_nothing(
        tmp_path: Path, az_sim: AzSim):
    env = env_for(az_sim, NATS_URL=f"nats://127.0.0.1:{closed_port()}")

    result = orchestrate(tmp_path / "run", az_sim, *vm_args("vm-1"), *FAST, "--require-nats",
                         "--nats-connect-timeout", "1", env=env)

    assert result.returncode == 3, result.stderr + result.stdout
    assert az_sim.state()["create_counts"] == {}


async def test_nats_killed_mid_deployment_finishes_by_polling_without_creating_twice(
        tmp_path: Path, az_sim: AzSim, nats_server: Any):
    # One worker taking three VMs at a time: when NATS dies, three creates are in flight
    # (the poller must adopt them) and three requests were never taken (it must launch them).
    az_sim.scenario({"time_scale": 0.01, "defaults": {"create_seconds": 300}})
    logs = tmp_path / "logs"
    logs.mkdir()
    cwd = tmp_path / "run"
    cwd.mkdir()
    async with running(nats_server.url, az_sim, logs) as workers:
        workers.start("w1", "--concurrency", "3")
        proc = subprocess.Popen(
            [sys.executable, str(ORCHESTRATOR), "deploy", *vm_args(*SIX), *FAST,
             "--no-verify-cloud-init", "--nats-url", nats_server.url, "--nats-grace", "1"],
            cwd=cwd, env=env_for(az_sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            await async_wait_until(lambda: len(az_sim.state()["vms"]) >= 3, timeout=30,
                                   message="three creates in flight")
            os.kill(nats_server.pid, signal.SIGKILL)
            out, err = await asyncio.to_thread(proc.communicate, timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            # With NATS gone the worker cannot settle its requests, so a SIGTERM would wait
            # out its whole grace period; this test is about the orchestrator.
            workers.signal("w1", signal.SIGKILL)

    assert proc.returncode == 0, err + out
    final = state(cwd)
    assert final["phase"] == "vms_ready"
    assert sorted(final["vm_states"]) == NAMES
    assert {vm["state"] for vm in final["vm_states"].values()} == {"Succeeded"}
    azure = az_sim.state()
    assert azure["create_counts"] == {name: 1 for name in NAMES}  # none created twice
    assert {n: len(t) for n, t in azure["succeeded_at"].items()} == {n: 1 for n in NAMES}
    done = actions(cwd)
    assert done.count("vm_launch_mode_changed") == 1
    assert Counter(done)["vm_ready"] == len(NAMES)  # every VM accounted for exactly once
