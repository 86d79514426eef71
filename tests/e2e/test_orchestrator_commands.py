"""status, events, reset, leaks, NATS required, and the terminal: real processes, simulator."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO
from orchestratorkit import FAST, ORCHESTRATOR, env_for, events, orchestrate, state, vm_args

pytestmark = pytest.mark.timeout(120)


def test_status_events_leaks_and_reset_over_a_deployments_life(tmp_path, az_sim):
    assert orchestrate(tmp_path, az_sim, *vm_args("vm-1", "vm-2", "vm-3"), *FAST).returncode == 0

    status = orchestrate(tmp_path, az_sim, "status", "--json", "--live", "-g", "rg-test")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["phase"] == "vms_ready"
    assert {n: v["state"] for n, v in shown["vm_states"].items()} == dict.fromkeys(
        ["vm-1", "vm-2", "vm-3"], "Succeeded")
    assert {n: v["provisioningState"] for n, v in shown["azure"].items()} == dict.fromkeys(
        ["vm-1", "vm-2", "vm-3"], "Succeeded")
    table = orchestrate(tmp_path, az_sim, "status")
    assert "vm-2" in table.stdout and "Succeeded" in table.stdout

    trail = orchestrate(tmp_path, az_sim, "events", "--json", "--vm", "vm-1")
    assert trail.returncode == 0, trail.stderr
    kinds = [json.loads(line)["type"] for line in trail.stdout.splitlines()]
    assert kinds[0] == "vm.create.status" and "vm.create.complete" in kinds
    assert {json.loads(line)["vm_name"] for line in trail.stdout.splitlines()} == {"vm-1"}
    recent = orchestrate(tmp_path, az_sim, "events", "--since", "1h")
    assert recent.returncode == 0 and "rg-test/vm-3 complete" in recent.stdout
    assert not orchestrate(tmp_path, az_sim, "events", "--since", "2999-01-01T00:00").stdout

    # A smaller plan: vm-3 is tagged with the deployment but not planned any more.
    smaller = orchestrate(tmp_path, az_sim, *vm_args("vm-1", "vm-2"), *FAST[:-1])
    assert smaller.returncode == 0, smaller.stderr
    assert "possible leak" in smaller.stderr and "vm-3" in smaller.stderr
    assert "vm-3" in az_sim.state()["vms"]  # reported, never deleted
    assert "vm_possible_leak" in [e["action"] for e in events(tmp_path)]

    refused = orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1", "vm-2", "vm-3"),
                          "--image", "Debian12")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    reset = orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1", "vm-2", "vm-3"),
                        "--image", "Debian12", "--yes")
    assert reset.returncode == 0, reset.stderr
    sim = az_sim.state()
    assert not sim["vms"] and not sim["public_ips"]
    assert {v["state"] for v in state(tmp_path)["vm_states"].values()} == {"Deleted"}
    assert [e["action"] for e in events(tmp_path)].count("vm_reset_deletion") == 3


def test_reset_deletes_only_this_deployments_vms(tmp_path, az_sim):
    assert orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST).returncode == 0
    az_sim.az("vm", "create", "-g", "rg-test", "-n", "vm-2", "--image", "Debian12")
    az_sim.az("vm", "create", "-g", "rg-test", "-n", "vm-3", "--image", "Debian12",
              "--tags", "vmlaunch-deployment=someone-else")

    reset = orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1", "vm-2", "vm-3"),
                        "--image", "Debian12", "--yes")

    assert reset.returncode == 1
    assert set(az_sim.state()["vms"]) == {"vm-2", "vm-3"}  # vm-1 (ours) deleted, not the rest
    assert "not deleting vm-2" in reset.stderr and "without a vmlaunch-deployment tag" in (
        reset.stderr)
    assert "not deleting vm-3" in reset.stderr and "someone-else" in reset.stderr
    assert state(tmp_path)["vm_states"]["vm-1"]["state"] == "Deleted"


def test_an_unreachable_nats_with_require_nats_exits_3_and_touches_nothing(tmp_path, az_sim):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST, "--require-nats",
                         "--nats-url", f"nats://127.0.0.1:{port}", "--nats-connect-timeout",
                         "0.5")
    assert result.returncode == 3
    assert "--require-nats" in result.stderr
    assert not (tmp_path / "state").exists()
    assert "vm create" not in az_sim.state()["calls"]


def test_a_missing_resource_group_exits_3_before_anything_is_written(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "resource_groups": ["rg-other"]})
    result = orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST)
    assert result.returncode == 3
    assert "resource group 'rg-test' does not exist" in result.stderr
    assert not (tmp_path / "state").exists()


def test_on_a_terminal_deploy_asks_first_and_redraws_a_live_table(tmp_path, az_sim):
    leader, follower = pty.openpty()
    args = [a for a in FAST if a != "-y"]
    proc = subprocess.Popen([sys.executable, str(ORCHESTRATOR), *vm_args("vm-1", "vm-2"),
                             *args], cwd=tmp_path, env=env_for(az_sim, COLUMNS="160"),
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = _read_until(leader, proc, b"[y/N]")
    assert b"Create 2 VMs in Azure?" in seen
    os.write(leader, b"y\n")
    seen += _read_until(leader, proc, None)
    os.close(leader)

    assert proc.wait(timeout=10) == 0, seen.decode(errors="replace")
    assert b"\x1b[" in seen  # redrawn in place
    assert b"PUBLIC IP" in seen and b"ready" in seen
    assert b"2 VMs: 2 ready, 0 failed" in seen


def _read_until(fd: int, proc: subprocess.Popen, marker: bytes | None,
                timeout: float = 60) -> bytes:
    """Read the terminal until `marker` shows (None: until the process ends)."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker is not None and marker in out:
            return out
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side closed: the process ended
                return out
            if not chunk:
                return out
            out += chunk
        elif marker is None and proc.poll() is not None:
            return out
    raise AssertionError(f"timed out waiting for {marker!r}; got {out[-500:]!r}")


@pytest.mark.parametrize("group", ["--debug", "@/etc/hostname", "rg\n-x"])
def test_status_live_checks_the_resource_group_before_it_reaches_az(tmp_path, az_sim, group):
    """`status --live` puts the group (from -g or the state file) on `az vm list`'s argv:
    held to the plan's rule, exit 2, no az call."""
    (tmp_path / "state").mkdir()
    sample = (REPO / "tests" / "data" / "sample-deployment-state.yaml").read_text()
    (tmp_path / "state" / "deployment-state.yaml").write_text(sample)
    for args in (["-g", group], []):
        if not args:  # the state file's group
            edited = re.sub(r"(?m)^(\s*resource_group:).*$",
                            lambda m: f"{m[1]} {json.dumps(group)}", sample)
            (tmp_path / "state" / "deployment-state.yaml").write_text(edited)
        shown = orchestrate(tmp_path, az_sim, "status", "--live", *args)
        assert shown.returncode == 2, shown.stdout + shown.stderr
        assert "resource group" in shown.stderr and "must" in shown.stderr
    assert az_sim.state()["calls"] == {}
