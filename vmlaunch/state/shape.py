"""The shape of the state and events files, checked here and nowhere else, and of the
values written into them (`vm_fields`, `make_event`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmlaunch.errors import ExitCode, StateError
from vmlaunch.schema.typedfields import INT_LIMIT
from vmlaunch.schema.vocabulary import FILE_STATES

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
VM_STATES = FILE_STATES  # what `vm_states.<vm>.state` may hold
MAX_GENERATION = INT_LIMIT - 2  # the next one must still fit in a request's 64 bits


class StateFileError(StateError, exit_code=ExitCode.BAD_INPUT):
    """A state or events file exists but cannot be used (bad YAML or wrong shape)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"Cannot use {path}: {reason}.")
        self.path = path
        self.reason = reason


def utc_now_str() -> str:
    """Return the current UTC time as ``%Y-%m-%dT%H:%M:%SZ``, the files' timestamp format."""
    return datetime.now(UTC).strftime(TIME_FORMAT)


def check_state(path: Path, data: Any) -> None:
    """The one shape check of a state file's content (parsed); StateFileError lists all."""
    if data is None:
        return  # empty: see ``lost_content``
    if not isinstance(data, dict):
        raise StateFileError(path, "its top level is not a mapping")
    vms = data.get("vm_states")
    if vms is None:
        return
    if not isinstance(vms, dict):
        raise StateFileError(path, f"vm_states is a {_kind(vms)}, not a mapping of VM names")
    bad = [f"vm_states.{name} is a {_kind(v)}, not a mapping"
           for name, v in vms.items() if not isinstance(v, dict)]
    # A generation goes into requests as it is: one a worker refuses would be dead-lettered.
    bad += [f"vm_states.{name}.generation is {v['generation']!r}, not an integer from 0 to "
            f"{MAX_GENERATION}" for name, v in vms.items()
            if isinstance(v, dict) and "generation" in v and not _is_generation(v["generation"])]
    if bad:
        raise StateFileError(path, "; ".join(bad))


def _is_generation(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_GENERATION


def check_events(path: Path, data: Any) -> None:
    """The shape check of an events file's content (parsed)."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise StateFileError(path, "its top level is not a mapping")
    if not isinstance(data.get("events") or [], list):
        raise StateFileError(path, f"events is a {_kind(data['events'])}, not a list")


def _kind(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "string"}.get(type(value), type(value).__name__)


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
