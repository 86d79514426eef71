"""End to end: the orchestrator as a real process, real nats-server and workers, the simulator.

Each test runs `orchestrator.py` in its own directory (so `./state/` is private) with the
simulator's environment. Embedded mode starts its own nats-server and workers; the resume
and duplicate tests use the `nats_server` fixture and external workers so that those
outlive the orchestrator.
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA, AzSim, wait_until
from orchestratorkit import (
    FAST,
    ORCHESTRATOR,
    SIX,
    SIX_NAMES,
    VM_LAUNCHER,
    actions_of,
    assert_no_process_left,
    assert_ready,
    env_for,
    events,
    orchestrate,
    start_orchestrator,
    state,
    vm_args,
)

pytestmark = pytest.mark.timeout(120)


class Workers:
    """External `vm_launcher.py serve` processes that outlive an orchestrator."""

    def __init__(self, url: str, az_sim: AzSim, tmp_path: Path, count: int = 2) -> None:
        self.procs = [subprocess.Popen(
            [sys.executable, str(VM_LAUNCHER), "serve", "--nats-url", url, "--worker-id",
             f"w{i}", "--grace", "1", "--concurrency", "4"],
            env=env_for(az_sim), stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"worker-{i}.log", "w"))  # noqa: SIM115
            for i in range(count)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(nats_server, az_sim, tmp_path):
    started = Workers(nats_server.url, az_sim, tmp_path)
    yield started
    started.stop()


# --- the main job -----------------------------------------------------------------------------

def test_six_vms_in_embedded_mode_are_all_ready_and_recorded_in_order(tmp_path, az_sim):
    result = orchestrate(tmp_path, az_sim, *vm_args(*SIX), *FAST)

    assert result.returncode == 0, result.stderr + result.stdout
    assert_ready(tmp_path, az_sim, SIX_NAMES)
    assert state(tmp_path)["phase"] == "vms_ready"
    assert az_sim.state()["create_counts"] == dict.fromkeys(SIX_NAMES, 1)
    log = events(tmp_path)
    assert log[0]["action"] == "deployment_initialized"
    assert log[1]["action"] == "vm_launch_started"
    assert log[-1]["action"] == "vm_launch_finished"
    assert [e["timestamp"] for e in log] == sorted(e["timestamp"] for e in log)
    for name in SIX_NAMES:
        assert actions_of(tmp_path, name) == ["vm_creation_started", "vm_creation_succeeded",
                                              "vm_ready"]
    assert "6 VMs: 6 ready, 0 failed" in result.stdout
    assert_no_process_left(az_sim)


def test_a_permanent_failure_and_an_exhausted_retry_fail_only_those_vms(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "bad-1", "fail": "InvalidParameter"},
        {"match": "flaky-1", "fail": "InternalServerError"},
    ]})
    result = orchestrate(tmp_path, az_sim, *vm_args("bad-1", "flaky-1", "good-1", "good-2"),
                         *FAST, "--max-attempts", "2")

    assert result.returncode == 1, result.stderr + result.stdout
    vms = state(tmp_path)["vm_states"]
    assert vms["bad-1"]["state"] == "Failed"
    assert vms["bad-1"]["last_error"].startswith("InvalidParameter:")
    assert vms["flaky-1"]["state"] == "Failed"
    assert vms["flaky-1"]["last_error"].startswith("InternalServerError:")
    assert vms["flaky-1"]["attempt"] == 2
    assert az_sim.state()["create_attempts"]["bad-1"] == 1  # permanent: no retry
    assert_ready(tmp_path, az_sim, ["good-1", "good-2"])
    assert state(tmp_path)["phase"] != "vms_ready"
    assert "failed: bad-1, flaky-1" in events(tmp_path)[-1]["message"]
    assert_no_process_left(az_sim)


def test_an_invalid_plan_lists_every_problem_and_launches_nothing(tmp_path, az_sim):
    (tmp_path / "state").mkdir()
    state_file = tmp_path / "state" / "deployment-state.yaml"
    shutil.copy(DATA / "sample-deployment-state.yaml", state_file)
    before = state_file.read_bytes()
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "deployment_id": "dep-1", "resource_group": "rg-test", "colour": "blue",
        "defaults": {"image": "Debian12", "sise": "Standard_B2s"},
        "vms": [{"name": "-bad-"}, {"name": "ok-1", "custom_data": "missing.yaml"},
                {"name": "ok-1"}, {"name": "spot-1", "eviction_policy": "Delete"}],
    }))
    result = orchestrate(tmp_path, az_sim, "--plan", str(plan), "-y")

    assert result.returncode == 2
    for words in ("colour: unknown top-level key", "defaults.sise: unknown field",
                  "VM '-bad-': name must be", "missing.yaml' cannot be read",
                  "'ok-1' is listed 2 times", "eviction_policy is only allowed"):
        assert words in result.stderr
    assert not az_sim.state()["calls"]
    assert state_file.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [state_file.name]


def test_the_k0rdent_config_derives_names_zones_and_sizes(tmp_path, az_sim):
    shutil.copy(DATA / "sample-k0rdent-config.yaml", tmp_path / "k0rdent.yaml")
    (tmp_path / ".clusterid").write_text("k0rdent-q7x2m9ab\n")
    (tmp_path / "cloud-init-yaml").mkdir()
    for host in ("k0s-controller-1", "k0s-controller-2", "k0s-controller-3", "k0s-worker-1",
                 "k0s-worker-2"):
        (tmp_path / "cloud-init-yaml" / f"{host}-cloud-init.yaml").write_text("#cloud-config\n")
    result = orchestrate(tmp_path, az_sim, "plan", "--k0rdent-config", "k0rdent.yaml", "--json")

    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["deployment_id"] == "k0rdent-q7x2m9ab"
    assert plan["resource_group"] == "k0rdent-q7x2m9ab-resgrp"
    assert [(vm["name"], vm["zone"], vm["size"]) for vm in plan["vms"]] == [
        ("k0s-controller-1", "1", "Standard_D4pds_v6"),
        ("k0s-controller-2", "2", "Standard_D4pds_v6"),
        ("k0s-controller-3", "3", "Standard_D4pds_v6"),
        ("k0s-worker-1", "2", "Standard_D8pds_v6"),
        ("k0s-worker-2", "3", "Standard_D8pds_v6"),
    ]
    first = plan["vms"][0]
    assert first["custom_data"] == "./cloud-init-yaml/k0s-controller-1-cloud-init.yaml"
    assert (first["vnet_name"], first["subnet"], first["nsg"], first["ssh_key_name"]) == (
        "k0rdent-q7x2m9ab-vnet", "k0rdent-q7x2m9ab-subnet", "k0rdent-q7x2m9ab-nsg",
        "k0rdent-q7x2m9ab-admin")
    assert (first["image"], first["priority"], first["eviction_policy"]) == (
        "Debian:debian-12:12-gen2:latest", "Regular", None)
    assert (first["admin_username"], first["location"], first["create_timeout"]) == (
        "k0rdent", "westus2", 900.0)
    assert (first["os_disk_size_gb"], first["public_ip_sku"]) == (64, "Standard")
    assert plan["deadline"] == 900.0 and plan["poll_interval"] == 30.0
    assert not az_sim.state()["calls"]


# --- resume, duplicates, stopping -------------------------------------------------------------

def test_a_sigkilled_orchestrator_rerun_completes_without_creating_twice(
        tmp_path, az_sim, nats_server, workers):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "k0s-worker-*", "create_seconds": 400}]})
    args = [*vm_args(*SIX), *FAST, "--nats-url", nats_server.url]
    first = start_orchestrator(tmp_path, az_sim, *args)
    wait_until(lambda: "vm_ready" in [e["action"] for e in events(tmp_path)], timeout=30,
               message="a first VM ready")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # Workers carry on while no orchestrator listens: their events wait in the stream.
    wait_until(lambda: len(az_sim.state()["succeeded_at"]) == 6, timeout=30,
               message="every VM Succeeded in Azure")

    rerun = orchestrate(tmp_path, az_sim, *args)

    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert_ready(tmp_path, az_sim, SIX_NAMES)
    assert az_sim.state()["create_counts"] == dict.fromkeys(SIX_NAMES, 1)
    for name in SIX_NAMES:
        assert actions_of(tmp_path, name) == ["vm_creation_started", "vm_creation_succeeded",
                                              "vm_ready"], name
    ids = [e["event_id"] for e in events(tmp_path) if "event_id" in e and e["action"]
           in ("vm_creation_started", "vm_creation_succeeded")]
    assert len(ids) == len(set(ids)) == 12
    live = orchestrate(tmp_path, az_sim, "status", "--live", "--json", "-g", "rg-test",
                       "--nats-url", nats_server.url)
    workers_seen = json.loads(live.stdout)["workers"]
    counts = [w["endpoints"][0]["data"] for w in workers_seen]
    assert sorted(c["worker_id"] for c in counts) == ["w0", "w1"]
    assert sum(c["completed"] for c in counts) == 6


async def test_duplicate_events_on_the_bus_change_nothing(tmp_path, az_sim, nats_server,
                                                          workers):
    import nats

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    seen: set[str] = set()

    async def echo(msg) -> None:  # publish every event once more, as a redelivery would
        body = json.loads(msg.data)
        if body["event_id"] not in seen:
            seen.add(body["event_id"])
            await js.publish(msg.subject, msg.data, headers={"Nats-Msg-Id": f"dup-{len(seen)}"})

    await nc.subscribe("vm.>", cb=echo)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ORCHESTRATOR), *vm_args("vm-1", "vm-2", "vm-3"), *FAST,
        "--nats-url", nats_server.url, cwd=tmp_path, env=env_for(az_sim),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    await nc.close()

    assert proc.returncode == 0, err.decode() + out.decode()
    assert len(seen) >= 9  # the duplicates were really there
    counts = collections.Counter((e.get("event_id"), e["action"]) for e in events(tmp_path))
    assert max(counts.values()) == 1
    for name in ("vm-1", "vm-2", "vm-3"):
        assert actions_of(tmp_path, name) == ["vm_creation_started", "vm_creation_succeeded",
                                              "vm_ready"]
    assert_ready(tmp_path, az_sim, ["vm-1", "vm-2", "vm-3"])


def test_ctrl_c_in_embedded_mode_leaves_no_process_behind(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "*", "hang": True}]})
    proc = start_orchestrator(tmp_path, az_sim, *vm_args("vm-1", "vm-2"), *FAST)
    wait_until(lambda: len(az_sim.state()["vms"]) == 2, timeout=30,
               message="two az vm create in flight")
    assert any(p.name().startswith("nats-server") for p in az_sim.processes())

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)

    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert_no_process_left(az_sim)
    assert events(tmp_path)[-1]["action"] == "vm_launch_interrupted"


def test_the_deadline_cancels_work_in_flight_and_fails_it(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "slow-1", "hang": True}]})
    result = orchestrate(tmp_path, az_sim, *vm_args("slow-1", "fast-1"), *FAST,
                         "--deadline", "4")

    assert result.returncode == 1, result.stderr + result.stdout
    vms = state(tmp_path)["vm_states"]
    assert vms["slow-1"]["state"] == "Failed"
    assert "deadline of 4 s reached" in vms["slow-1"]["last_error"]
    assert "vm_creation_cancelled" in actions_of(tmp_path, "slow-1")  # the worker stopped it
    assert_ready(tmp_path, az_sim, ["fast-1"])
    assert_no_process_left(az_sim)


def test_the_state_file_keeps_its_comments_and_unknown_keys(tmp_path, az_sim):
    (tmp_path / "state").mkdir()
    sample = DATA / "sample-deployment-state.yaml"
    shutil.copy(sample, tmp_path / "state" / "deployment-state.yaml")
    result = orchestrate(tmp_path, az_sim, *vm_args("k0s-controller-1", "k0s-controller-2"),
                         *FAST, "--deployment-id", "k0rdent-q7x2m9ab")

    assert result.returncode == 0, result.stderr + result.stdout
    text = (tmp_path / "state" / "deployment-state.yaml").read_text()
    for line in sample.read_text().splitlines():
        if line.startswith("#") or line.startswith("wireguard_peers") or "wg_" in line:
            assert line in text  # comments and keys the launcher does not own
    after, before = state(tmp_path), yaml.safe_load(sample.read_text())
    for key in ("config", "deployment_flags", "wireguard_peers", "azure_rg_status"):
        assert after[key] == before[key]
    assert after["phase"] == "vms_ready"
    assert_ready(tmp_path, az_sim, ["k0s-controller-1", "k0s-controller-2"])


def test_no_process_is_left_when_the_orchestrator_itself_is_sigkilled(tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "*", "hang": True}]})
    proc = start_orchestrator(tmp_path, az_sim, *vm_args("vm-1"), *FAST)
    wait_until(lambda: az_sim.state()["vms"], timeout=30, message="az vm create in flight")

    proc.kill()
    proc.wait(timeout=10)

    assert_no_process_left(az_sim)


