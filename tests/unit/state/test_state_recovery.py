"""The state file under hostile edits and failing disks: the writer and the readers.

Real files only: a state file that a directory replaced is a write that really fails (tests
run as root, where chmod does not stop writes).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from conftest import DATA, async_wait_until

from vmlaunch.state.statefile import StateFileError, load_state, read_events, read_state
from vmlaunch.state.writer import StateWriter, WriteFailed

LAUNCH = {"public_ip": "", "private_ip": "", "state": "Creating", "generation": 1,
          "requested_at": "2026-01-01T10:00:00.000Z", "verified": False, "last_error": ""}


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "deployment-state.yaml", tmp_path / "deployment-events.yaml"


async def a_deployment(state: Path, events: Path) -> None:
    """What the orchestrator writes for two VMs: the launch, progress, one failure."""
    async with StateWriter(state, events, deployment_id="dep-1") as writer:
        writer.append_event("vm_launch_started", "Launching 2 VMs",
                            vm_states={"vm-1": LAUNCH, "vm-2": LAUNCH})
        writer.record("vm-1", {"state": "Creating", "attempt": 1, "zone": "2"},
                      [("vm_creation_started", "Started creating VM: vm-1")], event_id="e1")
        writer.record("vm-1", {"state": "Succeeded", "public_ip": "20.0.0.1", "attempt": 1,
                               "verified": True},
                      [("vm_creation_succeeded", "VM vm-1 created"),
                       ("vm_ready", "VM vm-1 is ready")], event_id="e2")
        writer.record("vm-2", {"state": "Failed", "last_error": "InvalidParameter: no"},
                      [("vm_creation_failed", "VM vm-2 failed")], event_id="e3")
        writer.set_phase("azure_ready")


TRUNCATIONS = {
    "empty": "",
    "whitespace-and-comments": "\n  \n# k0rdent Deployment State\n",
    "cut-before-vm_states": "# k0rdent Deployment State\ndeployment_id: dep-1\nphase: x\n",
}


@pytest.mark.parametrize("left", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
async def test_a_truncated_state_file_gets_its_vm_states_back_from_the_events_log(
        paths: tuple[Path, Path], left: str) -> None:
    state, events = paths
    await a_deployment(state, events)
    before = read_state(state)["vm_states"]
    state.write_text(left)  # e.g. `yq -i` killed half-way

    loaded = load_state(state, events)  # what a command starts from
    assert loaded.data["vm_states"] == before
    assert loaded.rebuilt and str(state) in loaded.rebuilt and str(events) in loaded.rebuilt

    async with StateWriter(state, events, deployment_id="dep-1") as writer:
        writer.set_phase("vms_ready")  # any write rebuilds the file on disk
    after = read_state(state)
    assert after["vm_states"] == before
    assert after["deployment_id"] == "dep-1" and after["phase"] == "vms_ready"


async def test_the_events_the_tool_writes_carry_the_change_and_keep_the_legacy_keys(
        paths: tuple[Path, Path]) -> None:
    state, events = paths
    await a_deployment(state, events)
    logged = read_events(events)
    ready = next(e for e in logged if e["action"] == "vm_ready")
    assert {"timestamp", "action", "message", "event_id"} <= ready.keys()  # bash reads these
    assert ready["vm_states"]["vm-1"]["public_ip"] == "20.0.0.1"
    started = next(e for e in logged if e["action"] == "vm_launch_started")
    assert started["vm_states"]["vm-2"]["generation"] == 1
    assert yaml.safe_load(events.read_text())["events"] == logged  # YAML 1.1 readers too


async def test_a_failed_state_write_is_retried_without_appending_the_events_again(
        paths: tuple[Path, Path]) -> None:
    state, events = paths
    state.mkdir()  # the state write fails; the events append works
    async with StateWriter(state, events, deployment_id="dep-1", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        for _ in range(3):
            with pytest.raises(WriteFailed, match="Is a directory"):
                await writer.flush()
        state.rmdir()
    assert [e.get("event_id") for e in read_events(events)].count("e1") == 1
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Creating"


async def test_a_file_that_stays_unwritable_is_reported_once_with_the_os_error(
        paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    state, events = paths
    state.mkdir()
    told: list[WriteFailed] = []
    async with StateWriter(state, events, deployment_id="dep-1", give_up_after=0.3,
                           on_broken=told.append) as writer:
        writer.update_vm("vm-1", state="Creating")
        caplog.set_level("DEBUG", logger="statewriter")
        await async_wait_until(lambda: told, timeout=5, message="on_broken")
        retries = caplog.text.count("retrying")
        await async_wait_until(lambda: caplog.text.count("retrying") >= retries + 2,
                               timeout=10, message="two more failing retries")
    # Told once, naming the file and the OS error; closing then does not raise again.
    assert len(told) == 1
    assert str(state) in str(told[0]) and "Is a directory" in str(told[0])


MALFORMED = {
    "vm_states-a-list": ("deployment_id: d\nvm_states: [x]\n",
                         "vm_states is a list, not a mapping of VM names"),
    "vm-entry-not-a-mapping": ("vm_states:\n  vm-1: 3\n  vm-2: [a]\n",
                               "vm_states.vm-1 is a int, not a mapping; vm_states.vm-2 is a "
                               "list, not a mapping"),
    "top-level-a-list": ("- a\n- b\n", "its top level is not a mapping"),
    "not-yaml": ("vm_states: [unclosed\n", "it is not valid YAML"),
}


def test_a_state_file_that_is_not_text_is_refused_by_name(paths: tuple[Path, Path]) -> None:
    state, events = paths
    state.write_bytes(b"vm_states:\n  vm-1: {state: \xff\xfe}\n")
    with pytest.raises(StateFileError, match="it is not UTF-8 text"):
        load_state(state, events)


def test_a_malformed_events_file_is_refused_by_name(paths: tuple[Path, Path]) -> None:
    state, events = paths
    events.write_text("events: {a: 1}\n")
    with pytest.raises(StateFileError, match="events is a mapping, not a list"):
        load_state(state, events)


@pytest.mark.parametrize(("text", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_state_file_is_refused_by_name_and_left_untouched(
        paths: tuple[Path, Path], text: str, problem: str) -> None:
    state, events = paths
    state.write_text(text)
    with pytest.raises(StateFileError, match=str(state)) as refused:
        load_state(state, events)
    assert problem in str(refused.value)
    async with StateWriter(state, events, deployment_id="d", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        with pytest.raises(WriteFailed, match=f"cannot write {state}"):
            await writer.flush()
        state_bytes = state.read_bytes()
        state.unlink()  # let close() succeed
    assert state_bytes == text.encode()


async def test_new_files_are_0600_and_an_existing_files_mode_is_kept(
        paths: tuple[Path, Path]) -> None:
    state, events = paths
    async with StateWriter(state, events, deployment_id="dep-1") as writer:
        writer.update_vm("vm-1", state="Creating")
        writer.append_event("vm_creation_started", "go vm-1")
    for path in (state, events, Path(f"{state}.lock"), Path(f"{events}.lock")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    shutil.copy(DATA / "sample-deployment-state.yaml", state)
    os.chmod(state, 0o640)  # a mode someone chose
    async with StateWriter(state, events) as writer:
        writer.set_phase("vms_ready")
    assert stat.S_IMODE(state.stat().st_mode) == 0o640


def failing_directory_fsync(monkeypatch: pytest.MonkeyPatch, error: int) -> list[int]:
    """os.fsync fails with `error` for a directory, as on a failing disk (EIO) or on a
    filesystem that cannot sync one (EINVAL). No local filesystem here does either, so this
    one OS call is replaced; every file is real. Returns the failures, one per call."""
    real, failed = os.fsync, []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            failed.append(error)
            raise OSError(error, os.strerror(error))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return failed


@pytest.mark.parametrize("apart", [False, True], ids=["one-directory", "events-elsewhere"])
async def test_events_in_place_before_their_directory_failed_to_sync_are_not_appended_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apart: bool) -> None:
    state = tmp_path / "state" / "deployment-state.yaml"
    events = tmp_path / ("log" if apart else "state") / "deployment-events.yaml"
    async with StateWriter(state, events, deployment_id="dep-1", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        await writer.flush()  # both directories exist
        failed = failing_directory_fsync(monkeypatch, errno.EIO)
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        writer.update_vm("vm-1", state="Succeeded")
        for _ in range(3):
            with pytest.raises(WriteFailed, match="directory's fsync failed"):
                await writer.flush()
        synced = len(failed)
        monkeypatch.undo()  # the disk is back
        fsyncs = []
        monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(os.fstat(fd).st_ino))
        await writer.flush()
        monkeypatch.undo()
    assert synced >= 3
    assert [e.get("event_id") for e in read_events(events)].count("e1") == 1
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"
    assert events.parent.stat().st_ino in fsyncs  # the events' directory, synced at last


async def test_a_filesystem_that_cannot_sync_a_directory_is_written_to_all_the_same(
        paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    state, events = paths
    failed = failing_directory_fsync(monkeypatch, errno.EINVAL)
    async with StateWriter(state, events, deployment_id="dep-1", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        await writer.flush()
    assert failed and writer.failure is None
    assert [e.get("event_id") for e in read_events(events)].count("e1") == 1
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Creating"


async def test_events_queued_while_their_directory_still_fails_to_sync_are_not_lost(
        paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    state, events = paths
    async with StateWriter(state, events, deployment_id="dep-1", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        await writer.flush()
        failing_directory_fsync(monkeypatch, errno.EIO)
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        with pytest.raises(WriteFailed):
            await writer.flush()  # e1 in the file; its directory not synced
        writer.record("vm-1", {"state": "Succeeded"}, [("vm_ready", "vm-1 ready")],
                      event_id="e2")
        with pytest.raises(WriteFailed):
            await writer.flush()  # the directory still fails: e2 must stay queued
        monkeypatch.undo()
    ids = [e.get("event_id") for e in read_events(events)]
    assert (ids.count("e1"), ids.count("e2")) == (1, 1)
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"


async def test_a_directory_that_cannot_be_opened_after_the_rename_appends_nothing_twice(
        paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    state, events = paths
    real_open, refused = os.open, []

    def open_(path, flags, *args, **kwargs):  # out of descriptors, only for the directory
        if flags & os.O_ACCMODE == os.O_RDONLY and os.path.isdir(path):
            refused.append(path)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args, **kwargs)
    async with StateWriter(state, events, deployment_id="dep-1", delay=10) as writer:
        writer.update_vm("vm-1", state="Creating")
        await writer.flush()
        monkeypatch.setattr(os, "open", open_)
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        for _ in range(3):
            with pytest.raises(WriteFailed, match="directory's fsync failed"):
                await writer.flush()
        monkeypatch.undo()
    assert refused
    assert [e.get("event_id") for e in read_events(events)].count("e1") == 1
