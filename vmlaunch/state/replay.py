"""Rebuilding ``vm_states`` from the events log, for a state file that was truncated.

The events log is written before the state file, and every event the tool writes with a VM
change carries ``vm_states: {NAME: {field: value}}``, the fields written with it. Folding
those in order gives back the ``vm_states`` the state file had. Pure functions on plain data;
``statefile`` reads and writes the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def lost_content(data: Any) -> str | None:
    """Why a state file that exists counts as truncated, or None.

    Truncated: empty (nothing but whitespace and comments), or a mapping without
    ``vm_states`` (an in-place writer such as ``yq -i`` cut short before it).
    """
    if data is None:
        return "it is empty"
    return None if "vm_states" in data else "it has no vm_states"


def replay(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``vm_states`` rebuilt from the events log: every entry's ``vm_states``, in order."""
    vms: dict[str, dict[str, Any]] = {}
    for event in events:
        changes = event.get("vm_states")
        for name, fields in changes.items() if isinstance(changes, dict) else ():
            if isinstance(fields, dict):
                vms.setdefault(str(name), {}).update(fields)
    return vms


def rebuild_note(path: Path, reason: str, events_path: Path, count: int) -> str:
    """The warning given when a truncated state file is rebuilt."""
    return (f"{path} was truncated ({reason}); rebuilding vm_states of {count} VMs from "
            f"{events_path}")
