"""Read and update state/deployment-state.yaml and state/deployment-events.yaml.

The files are shared with the legacy bash scripts, so edits go through ``yamledit``, which
keeps comments, blank lines, unknown keys, key order and quoting. Every read-modify-write holds
an exclusive flock on ``<file>.lock`` and replaces the file atomically, so readers never see a
half-written file. ``statewriter.StateWriter`` coalesces bursts of changes into few
rewrites.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

import yamledit

# The tests reach the YAML helpers through these names; yamledit owns them.
_round_trip_yaml = yamledit.round_trip_yaml
_apply_events = yamledit.apply_events
_append_events_text = yamledit.append_events_text

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
VM_STATES = ("Creating", "Succeeded", "Failed", "Deleting", "Deleted")
NEW_FILE_MODE = 0o644

_STATE_TEMPLATE = """\
# k0rdent Deployment State
# Auto-generated on {ts}

# Basic deployment info
deployment_id: {id}
created_at: "{ts}"
last_updated: "{ts}"
phase: "initialized"
status: "in_progress"

# VM states (will be populated as VMs are created)
vm_states: {{}}
"""
_EVENTS_TEMPLATE = """\
# k0rdent Deployment Events Log
# Auto-generated on {ts}

deployment_id: {id}
created_at: "{ts}"
last_updated: "{ts}"

# Events log
events:
  - timestamp: "{ts}"
    action: deployment_initialized
    message: Deployment state tracking initialized
"""


class StateFileError(Exception):
    """A state or events file exists but cannot be used (bad YAML or wrong shape)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"Cannot use {path}: {reason}.")
        self.path = path
        self.reason = reason


def utc_now_str() -> str:
    """Return the current UTC time as ``%Y-%m-%dT%H:%M:%SZ``, the files' timestamp format."""
    return datetime.now(UTC).strftime(TIME_FORMAT)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the state file as plain dicts; ``{}`` if the file is missing or empty."""
    data = _read_plain(Path(path))
    return data if isinstance(data, dict) else {}


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the events file's ``events`` list as plain dicts; ``[]`` if missing."""
    data = _read_plain(Path(path))
    events = data.get("events") if isinstance(data, dict) else None
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def _read_plain(path: Path) -> Any:
    # No lock needed: writers replace the file atomically. A missing file loads as None.
    with _parsing(path):
        return YAML(typ="safe", pure=True).load(_read_text(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def _parsing(path: Path) -> Iterator[None]:
    """Turn a parse failure into a StateFileError that names the file."""
    try:
        yield
    except YAMLError as exc:
        raise StateFileError(path, f"it is not valid YAML ({exc})") from exc
    except yamledit.NotAMappingError as exc:
        raise StateFileError(path, "its top level is not a mapping") from exc


def make_event(
    action: str, message: str, *, timestamp: str | None = None, event_id: str | None = None
) -> dict[str, str]:
    """Build one event mapping; ``timestamp`` defaults to now."""
    event = {"timestamp": timestamp or utc_now_str(), "action": action, "message": message}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def vm_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check a VM update and stamp ``last_checked`` (now) unless given; raise ValueError."""
    state = fields.get("state")
    if state is not None and state not in VM_STATES:
        raise ValueError(f"VM state {state!r} is not one of {', '.join(VM_STATES)}.")
    return {**fields, "last_checked": fields.get("last_checked") or utc_now_str()}


# --- locking and atomic replace -------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sidecar lock survives the atomic replace of the file itself; it is never deleted.
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _atomic_write(path: Path, text: str) -> None:
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _update_file(
    path: Path,
    initial: Callable[[], str],
    mutate: Callable[[Any], None],
    *,
    edit_text: Callable[[str], str | None] | None = None,
) -> None:
    """Locked read-modify-write; a missing or empty file starts from ``initial()``.

    ``edit_text`` may return the new text directly (a fast path), or None to round-trip.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        text = _read_text(path)
        if text.strip() and edit_text and (edited := edit_text(text)) is not None:
            _atomic_write(path, edited)
            return
        with _parsing(path):
            doc = yamledit.load_mapping(text if text.strip() else initial())
        mutate(doc)
        _atomic_write(path, yamledit.dump_text(doc))


# --- synchronous API --------------------------------------------------------------------------


class _YamlFile:
    def __init__(self, path: str | os.PathLike[str], *, deployment_id: str | None = None) -> None:
        self.path = Path(path)
        self.deployment_id = deployment_id  # only used when the file has to be created
        self.rewrites = 0  # files replaced by this object; lets tests count coalescing

    def _update(
        self,
        template: str,
        mutate: Callable[[Any], None],
        edit_text: Callable[[str], str | None] | None = None,
        *,
        created: str | None = None,
    ) -> None:
        def initial() -> str:
            ts = min(created or utc_now_str(), utc_now_str())
            return template.format(ts=ts, id=json.dumps(self.deployment_id or ""))

        _update_file(self.path, initial, mutate, edit_text=edit_text)
        self.rewrites += 1


class StateFile(_YamlFile):
    """``deployment-state.yaml``: one locked, atomic read-modify-write per call."""

    def read(self) -> dict[str, Any]:
        return read_state(self.path)

    def update(
        self, vms: Mapping[str, Mapping[str, Any]] | None = None, *, phase: str | None = None
    ) -> None:
        """Merge ``vms`` ({name: {field: value}}) into ``vm_states``, set ``phase``, stamp
        ``last_updated``. Each VM update stamps ``last_checked`` unless given."""
        checked = {name: vm_fields(fields) for name, fields in (vms or {}).items()}
        self._update(
            _STATE_TEMPLATE,
            lambda doc: yamledit.apply_state(doc, checked, phase, utc_now_str()),
        )


    def set_phase(self, phase: str) -> None:
        self.update(phase=phase)


class EventsFile(_YamlFile):
    """``deployment-events.yaml``: appends events under the lock, atomically."""

    def read(self) -> list[dict[str, Any]]:
        return read_events(self.path)

    def append(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append events ({timestamp, action, message[, event_id]}; see ``make_event``)."""
        items = [{"timestamp": utc_now_str(), **event} for event in events]
        if not items:
            return
        now = utc_now_str()
        self._update(
            _EVENTS_TEMPLATE,
            lambda doc: yamledit.apply_events(doc, items, now),
            edit_text=lambda text: yamledit.append_events_text(text, items, now),
            # A new file's first event must not be later than the events queued before it.
            created=min(item["timestamp"] for item in items),
        )
