"""The events log appended in place: only while it is as the writer left it; a tail cut
short by a kill is read without its broken line; a failed append is never appended twice.

Real files; a failing disk is `os` calls made to fail (tests run as root, where chmod does
not stop writes), as in test_state_recovery.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml

from vmlaunch.state import yamledit
from vmlaunch.state.eventsfile import EventsFile
from vmlaunch.state.statefile import make_event, read_events, read_state
from vmlaunch.state.writer import StateWriter, WriteFailed


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "deployment-events.yaml"


def ids(path: Path) -> list[str | None]:
    return [e.get("event_id") for e in read_events(path)]


def test_an_append_to_the_log_as_it_was_left_is_made_in_place(log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    before, inode = log_path.read_text(), log_path.stat().st_ino
    second = {**make_event("vm_ready", "vm-1: ready", event_id="e2"),
              "vm_states": {"vm-1": {"state": "Succeeded", "public_ip": "20.0.0.1"}}}
    log.append([second])
    after = log_path.read_text()
    assert log_path.stat().st_ino == inode  # not replaced: appended where it stands
    stamp = yaml.safe_load(after)["last_updated"]
    # Byte for byte what the rewrite makes of the same append.
    assert after == yamledit.append_events_text(before, [second], stamp)
    assert ids(log_path) == [None, "e1", "e2"]
    assert read_events(log_path)[-1]["vm_states"]["vm-1"]["public_ip"] == "20.0.0.1"


def test_a_log_another_writer_appended_to_is_rewritten_keeping_both(log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    with log_path.open("a") as bash:  # a legacy script's `cat >> deployment-events.yaml`
        bash.write('  - timestamp: "2026-01-01T10:00:00Z"\n    action: vm_reset_deletion\n'
                   '    message: by hand\n')
    inode = log_path.stat().st_ino
    log.append([make_event("vm_ready", "vm-1: ready", event_id="e2")])
    assert log_path.stat().st_ino != inode  # read again and replaced, not appended blind
    assert [e["action"] for e in read_events(log_path)][1:] == [
        "vm_creation_started", "vm_reset_deletion", "vm_ready"]


def test_a_log_ending_mid_line_is_read_and_appended_to_without_that_line(
        log_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    log.append([{**make_event("vm_ready", "vm-1: ready", event_id="e2"),
                 "vm_states": {"vm-1": {"state": "Succeeded"}}}])
    text = log_path.read_text()
    log_path.write_text(text[:text.rindex("Succeeded")])  # killed during the last write
    with caplog.at_level(logging.WARNING):
        assert ids(log_path) == [None, "e1", "e2"]  # e2 without its cut vm_states line
    assert "cut short" in caplog.text
    EventsFile(log_path).append([make_event("vm_ready", "vm-1: ready", event_id="e3")])
    assert ids(log_path) == [None, "e1", "e2", "e3"]
    assert "vm_states" not in read_events(log_path)[2]
    assert log_path.read_text().endswith("\n")


def test_a_log_without_a_last_newline_that_parses_keeps_its_last_line(log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    log_path.write_text(log_path.read_text().rstrip("\n"))  # an editor's save
    assert ids(log_path) == [None, "e1"]
    EventsFile(log_path).append([make_event("vm_ready", "vm-1: ready", event_id="e2")])
    assert ids(log_path) == [None, "e1", "e2"]
    assert read_events(log_path)[1]["message"] == "go vm-1"


async def test_a_short_append_is_cut_back_and_written_once_later(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, real_pwrite, short = tmp_path / "deployment-state.yaml", os.pwrite, []

    def pwrite(fd: int, data: bytes, offset: int) -> int:  # the disk fills up half-way
        if not short and stat.S_ISREG(os.fstat(fd).st_mode) and len(data) > 40:
            short.append(offset)
            return real_pwrite(fd, data[:len(data) // 2], offset)
        return real_pwrite(fd, data, offset)
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        await writer.flush()
        size = log_path.stat().st_size
        monkeypatch.setattr(os, "pwrite", pwrite)
        writer.record("vm-1", {"state": "Succeeded"}, [("vm_ready", "vm-1 ready")],
                      event_id="e2")
        with pytest.raises(WriteFailed, match="bytes appended"):
            await writer.flush()
        assert log_path.stat().st_size == size  # the half written was cut back
        await writer.flush()
    assert short
    assert ids(log_path) == [None, "e1", "e2"]
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"


async def test_an_append_whose_fsync_failed_is_synced_again_not_appended_again(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, failed = tmp_path / "deployment-state.yaml", []

    def fdatasync(fd: int) -> None:
        failed.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        await writer.flush()
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        writer.record("vm-1", {"state": "Succeeded"}, [("vm_ready", "vm-1 ready")],
                      event_id="e2")
        with pytest.raises(WriteFailed, match="fsync failed"):
            await writer.flush()
        assert "vm_states" not in read_state(state)  # not before its events are durable
        monkeypatch.undo()
        await writer.flush()
    assert failed
    assert ids(log_path) == [None, "e1", "e2"]
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"


async def test_the_state_files_directory_is_synced_when_the_writer_closes_not_per_write(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, real_fsync, synced = tmp_path / "deployment-state.yaml", os.fsync, []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(fd)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        for attempt in range(1, 6):
            writer.record("vm-1", {"state": "Creating", "attempt": attempt},
                          [("vm_creation_started", f"go vm-1, attempt {attempt}")])
            await writer.flush()
        during = len(synced)
    assert during == 1  # the log's creation; its appends and the state's renames: none
    assert len(synced) == during + 1  # and the state file's, once, at the end
    assert read_state(state)["vm_states"]["vm-1"]["attempt"] == 5
