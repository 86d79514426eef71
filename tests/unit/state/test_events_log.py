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


def test_a_persons_last_line_that_breaks_the_yaml_is_kept_as_a_comment(
        log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    with log_path.open("a") as editor:  # no newline, and ": " breaks the plain scalar
        editor.write('  - timestamp: "2026-01-01T10:00:00Z"\n    action: note\n'
                     '    message: vm-1: disk replaced by ops')
    EventsFile(log_path).append([make_event("vm_ready", "vm-1: ready", event_id="e2")])
    assert "  # cut short: message: vm-1: disk replaced by ops\n" in log_path.read_text()
    assert [e["action"] for e in read_events(log_path)][1:] == [
        "vm_creation_started", "note", "vm_ready"]


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
    state, real_pwritev, short = tmp_path / "deployment-state.yaml", os.pwritev, []

    def pwritev(fd: int, buffers: list[bytes], offset: int, flags: int = 0) -> int:
        if not short:  # the disk fills up half-way
            short.append(offset)
            return real_pwritev(fd, [buffers[0][:len(buffers[0]) // 2]], offset, flags)
        return real_pwritev(fd, buffers, offset, flags)
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
        await writer.flush()
        size = log_path.stat().st_size
        monkeypatch.setattr(os, "pwritev", pwritev)
        writer.record("vm-1", {"state": "Succeeded"}, [("vm_ready", "vm-1 ready")],
                      event_id="e2")
        with pytest.raises(WriteFailed, match="bytes appended"):
            await writer.flush()
        assert log_path.stat().st_size == size  # the half written was cut back
        await writer.flush()
    assert short
    assert ids(log_path) == [None, "e1", "e2"]
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"


async def a_failed_sync(writer: StateWriter, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """e1 written; e2 appended in place, its fdatasync failing (EIO) once; the disk back."""
    failed: list[int] = []

    def fdatasync(fd: int) -> None:
        failed.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    writer.append_event("vm_creation_started", "go vm-1", event_id="e1")
    await writer.flush()
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    writer.record("vm-1", {"state": "Succeeded"}, [("vm_ready", "vm-1 ready")], event_id="e2")
    with pytest.raises(WriteFailed, match="fsync failed"):
        await writer.flush()
    monkeypatch.undo()
    return failed


async def test_an_append_whose_fsync_failed_is_synced_again_not_appended_again(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "deployment-state.yaml"
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        failed = await a_failed_sync(writer, monkeypatch)
        assert "vm_states" not in read_state(state)  # not before its events are durable
        inode = log_path.stat().st_ino
        await writer.flush()
        # Made durable by a copy: a second fsync of pages whose write failed may say yes.
        assert log_path.stat().st_ino != inode
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


def test_a_log_emptied_to_a_comment_is_started_again_and_stays_valid(log_path: Path) -> None:
    log_path.write_text('# k0rdent Deployment Events Log\n# kept by ops: see OPS-1234\n\n'
                        'deployment_id: "dep-1"\ncreated_at: "2026-01-01T10:00:00Z"\n'
                        'last_updated: "2026-01-01T10:00:00Z"\n\nevents:\n'
                        '  - timestamp: "2026-01-01T10:00:00Z"\n    action: note\n'
                        '    message: started by hand\n')
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    log_path.write_text("# emptied by hand\n")  # a blank file: started from the template
    log.append([make_event("vm_creation_started", "go vm-2", event_id="e2")])
    log.append([make_event("vm_ready", "vm-2: ready", event_id="e3")])
    assert ids(log_path) == [None, "e2", "e3"]
    assert yaml.safe_load(log_path.read_text())["last_updated"]


def test_a_script_appending_at_the_same_moment_is_not_overwritten(
        log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    log.append([make_event("vm_creation_started", "go vm-2", event_id="e2")])  # in place
    real_pwritev = os.pwritev
    line = '  - timestamp: "2026-01-01T10:00:00Z"\n    action: note\n    message: by bash\n'

    def pwritev(fd: int, buffers: list[bytes], offset: int, flags: int = 0) -> int:
        with log_path.open("a") as bash:  # its `>>` lands between our look and our write
            bash.write(line)
        return real_pwritev(fd, buffers, offset, flags)
    monkeypatch.setattr(os, "pwritev", pwritev)
    log.append([make_event("vm_ready", "vm-1: ready", event_id="e3")])
    monkeypatch.undo()
    log.append([make_event("vm_ready", "vm-2: ready", event_id="e4")])
    assert [e.get("event_id") or e["message"] for e in read_events(log_path)][1:] == [
        "e1", "e2", "by bash", "e3", "e4"]


def test_a_same_size_edit_with_its_mtime_set_back_is_not_written_over(log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    log.append([make_event("vm_creation_started", "go vm-1", event_id="e1")])
    before = log_path.stat()
    text = log_path.read_text()
    edited = text.replace("Events Log", "Events Log (o)").replace("go vm-1", "go1")
    assert len(edited) == len(text)  # its last_updated moved, its size did not
    with log_path.open("r+") as f:  # `rsync --inplace -t`: same size, same mtime
        f.write(edited)
    os.utime(log_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    log.append([make_event("vm_ready", "vm-1: ready", event_id="e2")])
    assert log_path.read_text().startswith("# k0rdent Deployment Events Log (o)")
    assert ids(log_path) == [None, "e1", "e2"]
    assert yaml.safe_load(log_path.read_text())["last_updated"]


async def test_a_log_deleted_while_its_sync_failed_does_not_stop_the_writer(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "deployment-state.yaml"
    async with StateWriter(state, log_path, deployment_id="dep-1", delay=10) as writer:
        await a_failed_sync(writer, monkeypatch)
        log_path.unlink()  # someone removed the log meanwhile: what it held is gone
        await writer.flush()
        writer.append_event("vm_launch_finished", "done", event_id="e3")
        await writer.flush()
    assert writer.failure is None
    assert read_state(state)["vm_states"]["vm-1"]["state"] == "Succeeded"
    assert ids(log_path)[-1] == "e3"


def test_each_append_counts_once(log_path: Path) -> None:
    log = EventsFile(log_path, deployment_id="dep-1")
    for n in range(3):
        log.append([make_event("vm_creation_started", f"go vm-{n}")])
    assert log.rewrites == 3
