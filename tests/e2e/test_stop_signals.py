"""SIGHUP (a closed terminal or SSH session) stops every long-running command in order,
as SIGTERM does: real processes, real signals, the simulator. (`serve` is tested in
test_worker_faults.py.)"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import PYTHON, REPO, wait_until
from orchestratorkit import (
    FAST,
    ORCHESTRATOR,
    assert_no_process_left,
    env_for,
    events,
    start_orchestrator,
    vm_args,
)
from workerkit import Bus, launch_env, no_orphans

from vmlaunch.schema.messages import Message, Status, encode

pytestmark = pytest.mark.timeout(90)


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """One line of the process's stdout, within `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            return proc.stdout.readline()
    raise AssertionError(f"no output within {timeout:g} s")


def test_sighup_stops_deploy_in_order_and_leaves_no_process(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "*", "hang": True}]})
    proc = start_orchestrator(tmp_path, az_sim, *vm_args("vm-1", "vm-2"), *FAST)
    wait_until(lambda: len(az_sim.state()["vms"]) == 2, timeout=30,
               message="two az vm create in flight")
    proc.send_signal(signal.SIGHUP)
    proc.wait(timeout=30)
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert_no_process_left(az_sim)
    assert events(tmp_path)[-1]["action"] == "vm_launch_interrupted"


def test_sighup_stops_a_manual_launch_and_its_az_processes(az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "*", "hang": True}]})
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "vm_launcher.py"), "launch", "-n", "vm-hup", "-g", "rg-test",
         "--image", "Ubuntu2204", "--location", "westus2", "--no-verify-ssh", "--no-nats"],
        env=launch_env(az_sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO)
    wait_until(lambda: "vm-hup" in az_sim.state()["vms"], timeout=30,
               message="the create to reach Azure")
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "vm-hup: interrupted by SIGHUP" in err
    wait_until(lambda: no_orphans(az_sim), timeout=10, message="no az left")


async def test_sighup_ends_events_follow_cleanly(tmp_path, az_sim, nats_server):
    async with Bus(nats_server.url) as bus:
        event = Message(deployment_id="dep-1", vm_name="vm-1",
                        payload=Status(state="creating", detail="az vm create vm-1"))
        await bus.js.publish(event.subject, encode(event))
    proc = subprocess.Popen(
        [sys.executable, str(ORCHESTRATOR), "events", "--follow", "--all-deployments",
         "--nats-url", nats_server.url], cwd=tmp_path, env=env_for(az_sim, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "vm-1" in read_line(proc)  # following now
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
