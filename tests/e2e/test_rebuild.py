"""`status --rebuild`: the state file's `vm_states` rebuilt from the events log alone, byte
for byte, after a mixed deployment (ready, failed, reset). Real processes, the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestratorkit import FAST, orchestrate, vm_args

pytestmark = pytest.mark.timeout(120)


def vm_states_section(tmp_path: Path) -> str:
    """The `vm_states` section as the file has it: from its key to the next top-level key."""
    lines = (tmp_path / "state" / "deployment-state.yaml").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("vm_states:")))
    rest = lines[start + 1:]
    end = next((i for i, line in enumerate(rest) if line[:1].isalnum()), len(rest))
    return "\n".join(lines[start:start + 1 + end])


def test_status_rebuild_gives_back_a_byte_identical_vm_states_after_a_mixed_deployment(
        tmp_path, az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [{"match": "bad-1", "fail": "InvalidParameter"}]})
    deployed = orchestrate(tmp_path, az_sim, *vm_args("ok-1", "ok-2", "bad-1"), *FAST)
    assert deployed.returncode == 1, deployed.stderr
    reset = orchestrate(tmp_path, az_sim, "reset", *vm_args("ok-2"), "--image", "Debian12",
                        "--yes")
    assert reset.returncode == 0, reset.stderr
    before = vm_states_section(tmp_path)
    for state in ("Succeeded", "Failed", "Deleted", "generation: 1", "requested_at"):
        assert state in before, before

    (tmp_path / "state" / "deployment-state.yaml").unlink()
    rebuilt = orchestrate(tmp_path, az_sim, "status", "--rebuild")

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert vm_states_section(tmp_path) == before
    assert "ok-1" in rebuilt.stdout and "Deleted" in rebuilt.stdout  # the table follows


def test_status_rebuild_without_an_events_log_says_so_and_exits_3(tmp_path, az_sim):
    rebuilt = orchestrate(tmp_path, az_sim, "status", "--rebuild")
    assert rebuilt.returncode == 3
    assert "deployment-events.yaml" in rebuilt.stderr
