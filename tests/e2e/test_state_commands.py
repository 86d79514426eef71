"""The commands against hostile state files and failing disks: real orchestrator and launcher
processes, embedded NATS and workers, the simulator.

Tests run as root, where chmod does not stop writes: a read-only directory is made with
`chattr +i`, and a failing write by replacing the state file with a directory.
"""

from __future__ import annotations

import collections
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, wait_until
from orchestratorkit import FAST, events, orchestrate, start_orchestrator, state, vm_args
from workerkit import launch_env

pytestmark = pytest.mark.timeout(120)

MALFORMED = {
    "vm_states-a-list": ("vm_states: [x]\n", "vm_states is a list, not a mapping"),
    "vm-entry-not-a-mapping": ("vm_states:\n  vm-1: up\n", "vm_states.vm-1 is a string"),
    "top-level-not-a-mapping": ("just text\n", "its top level is not a mapping"),
    "not-yaml": ("vm_states: {vm-1: [\n", "it is not valid YAML"),
    # Published as is, a hand-edited generation is dead-lettered by every worker: the VM
    # waited for the deadline, and every rerun took the next bad one.
    "generation-negative": ("vm_states:\n  vm-1: {state: Creating, generation: -3, "
                            "requested_at: '2026-12-01T20:00:00.000Z'}\n",
                            "vm_states.vm-1.generation is -3, not an integer from 0"),
    "generation-beyond-64-bits": ("vm_states:\n  vm-1: {state: Failed, generation: "
                                  f"{2**64}}}\n", "vm_states.vm-1.generation is 1844"),
}


def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "deployment-state.yaml"


def write_state(tmp_path: Path, text: str) -> Path:
    path = state_path(tmp_path)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def replace_with_directory(path: Path) -> bool:
    path.unlink(missing_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def creates(az_sim) -> int:
    return az_sim.state()["calls"].get("vm create", 0)


def launch(az_sim, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(REPO / "vm_launcher.py"), "launch", "-n", "vm-1", "-g", "rg-test",
         "--image", "Debian12", "--location", "westus2", "--no-verify-ssh", "--no-nats",
         "--state-file", str(state_path(tmp_path)), *args],
        env=launch_env(az_sim), capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize(("text", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_deploy_refuses_a_malformed_state_file_exits_2_and_launches_nothing(
        tmp_path, az_sim, text, problem):
    path = write_state(tmp_path, text)
    result = orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST)
    assert result.returncode == 2, result.stderr
    assert "deployment-state.yaml" in result.stderr and problem in result.stderr
    assert path.read_bytes() == text.encode()
    assert az_sim.state()["calls"] == {}  # not even `az group show`


def test_status_reset_and_launch_refuse_a_malformed_state_file_too(tmp_path, az_sim):
    text, problem = MALFORMED["vm_states-a-list"]
    path = write_state(tmp_path, text)
    runs = {
        "status": orchestrate(tmp_path, az_sim, "status"),
        "reset": orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1"), "--image",
                             "Debian12", "--yes"),
        "launch": launch(az_sim, tmp_path),
    }
    for command, result in runs.items():
        assert result.returncode == 2, (command, result.stderr)
        assert str(path.name) in result.stderr and problem in result.stderr, command
        assert "Traceback" not in result.stderr, command
    assert path.read_bytes() == text.encode()
    assert creates(az_sim) == 0 and az_sim.state()["calls"].get("vm delete", 0) == 0


def test_reset_and_launch_refuse_another_deployments_state_file_like_deploy(tmp_path, az_sim):
    # They used to write their VMs into it: a later deploy of its owner took such a VM
    # (another deployment's) as its own ready one.
    text = "deployment_id: dep-other\nvm_states:\n  vm-1: {state: Succeeded, verified: true}\n"
    path = write_state(tmp_path, text)
    runs = {
        "deploy": orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST),
        "reset": orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1"), "--image",
                             "Debian12", "--yes"),
        "launch": launch(az_sim, tmp_path),
    }
    for command, result in runs.items():
        assert result.returncode == 2, (command, result.stderr)
        assert "belongs to deployment 'dep-other'" in result.stderr, command
    assert path.read_bytes() == text.encode()
    assert creates(az_sim) == 0 and az_sim.state()["calls"].get("vm delete", 0) == 0


@pytest.mark.parametrize("left", ["", "# k0rdent Deployment State\nphase: \"x\"\n"],
                         ids=["emptied", "cut-before-vm_states"])
def test_a_rerun_rebuilds_a_truncated_state_file_from_the_events_log(tmp_path, az_sim, left):
    assert orchestrate(tmp_path, az_sim, *vm_args("vm-1", "vm-2"), *FAST).returncode == 0
    before = state(tmp_path)["vm_states"]
    state_path(tmp_path).write_text(left)  # `yq -i` cut short

    shown = orchestrate(tmp_path, az_sim, "status", "--json")
    assert shown.returncode == 0 and "truncated" in shown.stderr
    rerun = orchestrate(tmp_path, az_sim, *vm_args("vm-1", "vm-2"), *FAST)
    assert rerun.returncode == 0, rerun.stderr
    assert "was truncated" in rerun.stderr and "deployment-events.yaml" in rerun.stderr
    assert state(tmp_path)["vm_states"] == before  # exactly, generation included
    assert az_sim.state()["create_counts"] == {"vm-1": 1, "vm-2": 1}  # nothing twice
    written = [*(tmp_path / "state").glob("deployment-*"),
               *(tmp_path / "state" / "nats").glob("worker-*.log")]
    assert len(written) == 5 + 1  # both files, their locks, the run lock, the worker's log
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == {
        path.name: 0o600 for path in written}


@pytest.fixture
def immutable_state_dir(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    if not shutil.which("chattr") or subprocess.run(
            ["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here: no real read-only directory as root")
    yield directory
    subprocess.run(["chattr", "-i", str(directory)], check=True)


COMMANDS = {
    "deploy": lambda tmp_path, az_sim: orchestrate(tmp_path, az_sim, *vm_args("vm-1"), *FAST),
    "reset": lambda tmp_path, az_sim: orchestrate(tmp_path, az_sim, "reset", *vm_args("vm-1"),
                                                  "--image", "Debian12", "--yes"),
    "launch": lambda tmp_path, az_sim: launch(az_sim, tmp_path),
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_read_only_state_directory_exits_3_before_any_az_call(
        tmp_path, az_sim, immutable_state_dir, command):
    result = command(tmp_path, az_sim)
    assert result.returncode == 3, result.stderr
    assert "deployment-state.yaml" in result.stderr or "deployment-events" in result.stderr
    assert "Operation not permitted" in result.stderr
    assert az_sim.state()["calls"] == {}
    assert list(immutable_state_dir.iterdir()) == []  # no embedded NATS store either


def test_a_state_file_that_becomes_unwritable_stops_the_run_with_exit_3(tmp_path, az_sim):
    # One worker, one create at a time, 5 s each: the run must stop well before the third.
    az_sim.scenario({"time_scale": 0.05, "defaults": {"create_seconds": 100}})
    run = start_orchestrator(tmp_path, az_sim, *vm_args("vm-1", "vm-2", "vm-3"), *FAST,
                             "--workers", "1", "--worker-concurrency", "1")
    try:
        path, log = state_path(tmp_path), state_path(tmp_path).with_name(
            "deployment-events.yaml")
        wait_until(lambda: log.exists() and "vm_creation_started" in log.read_text(),
                   timeout=30, message="the first create")
        # Every state write now fails with EISDIR (retried: the writer may recreate the
        # file between the two steps).
        wait_until(lambda: replace_with_directory(path), timeout=10, message="the swap")
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 3, err
    assert str(path.relative_to(tmp_path)) in err and "Is a directory" in err
    assert "stopped launching new VMs" in err
    assert sum(az_sim.state()["create_counts"].values()) < 3, err
    # The retries appended no event twice (the events file kept working throughout).
    per_line = collections.Counter((e.get("event_id"), e["action"]) for e in events(tmp_path)
                                   if "event_id" in e)
    assert max(per_line.values()) == 1


def test_a_second_deploy_on_the_same_state_file_exits_3_and_launches_nothing(tmp_path, az_sim):
    # Two deploys at once (a second terminal, a retried CI job) each created every VM:
    # two launchers drove one VM. In embedded mode the second one hung until its deadline.
    az_sim.scenario({"time_scale": 0.02, "defaults": {"create_seconds": 100}})
    args = [*vm_args("vm-1"), *FAST, "--legacy-poll", "--poll-interval", "0.2"]
    runs = [start_orchestrator(tmp_path, az_sim, *args) for _ in range(2)]
    outcomes = sorted((proc.wait(timeout=60), proc.stderr.read()) for proc in runs)

    assert [code for code, _ in outcomes] == [0, 3], outcomes
    assert "is in use by another run (pid " in outcomes[1][1]
    assert az_sim.state()["create_counts"] == {"vm-1": 1}


# A reset's deletes raced the deploy's creates (the deploy made the VMs again); a manual
# launch drove the deploy's VM a second time and wrote into its files.
SECOND_RUNS = {
    "reset": lambda path, sim: orchestrate(path, sim, "reset", *vm_args("vm-1"), "--image",
                                           "Debian12", "--yes"),
    "launch": lambda path, sim: launch(sim, path, "--deployment-id", "rg-test"),
}


@pytest.mark.parametrize("command", SECOND_RUNS.values(), ids=SECOND_RUNS.keys())
def test_a_command_during_a_live_deploy_on_its_state_file_exits_3_and_touches_nothing(
        tmp_path, az_sim, command):
    az_sim.scenario({"time_scale": 0.02, "defaults": {"create_seconds": 150}})
    deploy = start_orchestrator(tmp_path, az_sim, *vm_args("vm-1"), *FAST, "--legacy-poll",
                                "--poll-interval", "0.2")
    try:
        wait_until(lambda: creates(az_sim), timeout=30, message="the deploy's create")
        done = command(tmp_path, az_sim)
        assert deploy.wait(timeout=60) == 0
    finally:
        deploy.kill()

    assert done.returncode == 3, done.stderr
    assert "is in use by another run (pid " in done.stderr
    assert "vm delete" not in az_sim.state()["calls"]
    assert az_sim.state()["create_counts"] == {"vm-1": 1}
