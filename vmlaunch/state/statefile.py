"""Read and update state/deployment-state.yaml and state/deployment-events.yaml (the
events log's writer, ``eventsfile.EventsFile``, builds on ``YamlFile`` here).

The files are shared with the legacy bash scripts, so edits go through ``yamledit``, which
keeps comments, blank lines, unknown keys, key order and quoting (``layout`` does the same
to one VM's block without parsing the file); ``atomicfile`` makes each read-modify-write
locked and atomic. ``writer.StateWriter`` coalesces bursts of changes into
few rewrites. The shape of both files is checked in ``shape`` and nowhere else. A truncated
state file (``lost_content``) is rebuilt from the events log: the tool's events carry the
``vm_states`` changes written with them, and ``replay.replay`` folds those back; ``rebuild``
does the same for a state file that is lost (``status --rebuild``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from vmlaunch.host import atomicfile
from vmlaunch.state import yamledit
from vmlaunch.state.layout import Layout
from vmlaunch.state.logtail import without_torn_tail
from vmlaunch.state.replay import lost_content, rebuild_note, replay
from vmlaunch.state.shape import (
    MAX_GENERATION,
    TIME_FORMAT,
    VM_STATES,
    StateFileError,
    check_events,
    check_state,
    make_event,
    utc_now_str,
    vm_fields,
)

# Readers and writers of the files take these from here; `shape` owns them.
__all__ = ["MAX_GENERATION", "TIME_FORMAT", "VM_STATES", "LoadedState",
           "StateFile", "StateFileError", "check_events", "check_state", "load_state",
           "make_event", "read_events", "read_state", "rebuild", "utc_now_str", "vm_fields"]

log = logging.getLogger("statefile")


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the state file as plain dicts; ``{}`` if the file is missing or empty.

    Raises StateFileError, listing every problem, for a file that is not YAML or has the
    wrong shape (see ``check_state``)."""
    path = Path(path)
    data = _read_plain(path)
    check_state(path, data)
    return data or {}


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the events file's ``events`` list as plain dicts; ``[]`` if missing."""
    events = _read_log(Path(path)).get("events") or []
    return [e for e in events if isinstance(e, dict)]


def _read_log(path: Path) -> dict[str, Any]:
    """The events file as plain dicts (``{}`` if missing), shape checked."""
    data = _read_plain(path, log=True)
    check_events(path, data)
    return data or {}


@dataclass(frozen=True)
class LoadedState:
    """The state file as a command starts from it."""

    data: dict[str, Any]
    event_ids: set[str]  # events the events file already holds
    rebuilt: str | None = None  # why vm_states came from the events log, if it did


def load_state(state_path: Path, events_path: Path, *, writable: bool = False,
               deployment_id: str | None = None) -> LoadedState:
    """Both files checked (StateFileError); a truncated state file replayed from the log.

    ``writable``: also raise OSError unless both files can be written (before a run).
    ``deployment_id``: also refuse a state file of another deployment."""
    events = read_events(events_path)
    data = _read_plain(state_path)
    check_state(state_path, data)
    owner = (data or {}).get("deployment_id")
    if deployment_id is not None and owner and owner != deployment_id:
        raise StateFileError(state_path, f"it belongs to deployment {owner!r}, not "
                             f"{deployment_id!r}; give another --state-file")
    for path in (state_path, events_path) if writable else ():
        atomicfile.check_writable(path)
    ids = {str(e["event_id"]) for e in events if e.get("event_id")}
    reason = lost_content(data) if state_path.exists() else None
    replayed = replay(events) if reason else {}
    if reason is None or (data is not None and not replayed):  # nothing was lost
        return LoadedState(data or {}, ids)
    vms = {name: dict(entry) for name, entry in ((data or {}).get("vm_states") or {}).items()}
    for name, fields in replayed.items():
        vms.setdefault(name, {}).update(fields)
    return LoadedState({**(data or {}), "vm_states": vms}, ids,
                       rebuild_note(state_path, reason, events_path, len(replayed)))


def rebuild(state_path: Path, events_path: Path) -> int:
    """Rewrite the state file's ``vm_states`` from the events log alone (a missing state
    file is made anew); how many VMs it holds. FileNotFoundError without an events log."""
    if not events_path.exists():
        raise FileNotFoundError(f"no events log at {events_path}")
    vms = replay(read_events(events_path))
    read_state(state_path)  # a malformed state file is refused, not overwritten
    owner = _read_log(events_path).get("deployment_id")
    StateFile(state_path, deployment_id=owner).replace_vms(vms)
    return len(vms)


def _read_plain(path: Path, *, log: bool = False) -> Any:
    # No lock needed: writers replace the file atomically (the log's appends are whole
    # lines but for a killed one: `log`, read with its torn tail). Missing loads as None.
    with _parsing(path):
        text = atomicfile.read_text(path) or ""
        return _read_plain_text(path, without_torn_tail(path, text) if log else text)


@contextlib.contextmanager
def _parsing(path: Path) -> Iterator[None]:
    """Turn a parse failure into a StateFileError that names the file."""
    try:
        yield
    except YAMLError as exc:
        raise StateFileError(path, f"it is not valid YAML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"it is not UTF-8 text ({exc})") from exc
    except yamledit.NotAMappingError as exc:
        raise StateFileError(path, "its top level is not a mapping") from exc


# --- locking and atomic replace -------------------------------------------------------------


EditText = Callable[[str], str | None]  # the new text from the old, or None: round-trip
Finish = Callable[[str, Any], str]  # a round trip's text and document -> the text to write


def _update_file(path: Path, initial: Callable[[], str], mutate: Callable[[Any, bool], None],
                 *, edit_text: EditText | None = None, finish: Finish | None = None,
                 durable: bool = True) -> atomicfile.Written | None:
    """Locked read-modify-write; a missing or blank file starts from ``initial()``.

    ``mutate(doc, blank)`` learns whether an existing file was blank. ``edit_text`` may return
    the new text directly (a fast path), or None to round-trip; ``finish(text, doc)`` gets
    what a round trip dumped and returns the text to write.
    """
    def new_text(text: str | None) -> str:
        blank = text is not None and yamledit.is_blank(text)
        base = initial() if text is None or blank else text  # a new file: the template
        if not blank and edit_text and (edited := edit_text(base)) is not None:
            return edited
        with _parsing(path):
            doc = yamledit.load_mapping(base)
        mutate(doc, blank)
        text = yamledit.dump_text(doc)
        return text if finish is None else finish(text, doc)

    with _parsing(path):  # the text is read inside: it may not even be text
        return atomicfile.rewrite(path, new_text, durable=durable)


def _read_plain_text(path: Path, text: str) -> Any:
    with _parsing(path):
        return YAML(typ="safe", pure=True).load(text)


# --- synchronous API --------------------------------------------------------------------------


class YamlFile:
    """``durable`` False: a rename is not followed by its directory's fsync (see
    ``atomicfile.rewrite``); its owner syncs the directory when it is done."""

    def __init__(self, path: str | os.PathLike[str], *, deployment_id: str | None = None,
                 durable: bool = True) -> None:
        self.path = Path(path)
        self.deployment_id = deployment_id  # only used when the file has to be created
        self.durable = durable
        self.rewrites = 0  # writes by this object; lets tests count coalescing

    def _update(self, template: str, mutate: Callable[[Any, bool], None],
                edit_text: EditText | None = None, *, created: str | None = None,
                finish: Finish | None = None) -> atomicfile.Written | None:
        def initial() -> str:
            ts = min(created or utc_now_str(), utc_now_str())
            return template.format(ts=ts, id=json.dumps(self.deployment_id or ""))

        written = _update_file(self.path, initial, mutate, edit_text=edit_text, finish=finish,
                               durable=self.durable)
        self.rewrites += 1
        return written


class StateFile(YamlFile):
    """``deployment-state.yaml``: one locked, atomic read-modify-write per call.

    With ``events_path``, a truncated file (see ``lost_content``) gets its ``vm_states``
    back from the events log, which is always written first, with a warning.
    """

    def __init__(self, path: str | os.PathLike[str], *, deployment_id: str | None = None,
                 events_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path, deployment_id=deployment_id)
        self.events_path = Path(events_path) if events_path is not None else None
        self._layout: Layout | None = None  # the text this object last wrote, in pieces

    def read(self) -> dict[str, Any]:
        return read_state(self.path)

    def update(
        self, vms: Mapping[str, Mapping[str, Any]] | None = None, *, phase: str | None = None
    ) -> None:
        """Merge ``vms`` ({name: {field: value}}) into ``vm_states``, set ``phase``, stamp
        ``last_updated``. Each VM update stamps ``last_checked`` unless given."""
        checked = {name: vm_fields(fields) for name, fields in (vms or {}).items()}
        # A round trip (no layout yet: the template's empty vm_states, or text the cut does
        # not know) takes only the first VM, and the others are edited into its layout: a
        # 500-VM dump took 1.4 s of the orchestrator's CPU, GIL held.
        first = dict(list(checked.items())[:1])
        rest = {name: fields for name, fields in checked.items() if name not in first}

        def mutate(doc: Any, blank: bool) -> None:
            check_state(self.path, doc)
            reason = "it is empty" if blank else lost_content(doc)
            if reason and self.events_path is not None:
                self._restore(doc, reason, self.events_path)
            yamledit.apply_state(doc, first, phase, now)

        def finish(text: str, doc: Any) -> str:
            self._index(text, doc)
            if not rest:
                return text
            if (layout := self._layout) is not None and layout.apply(rest, phase, now):
                return layout.text
            yamledit.apply_state(doc, rest, phase, now)  # no layout after all: round-trip them
            text = yamledit.dump_text(doc)
            self._index(text, doc)
            return text

        now = utc_now_str()
        self._update(yamledit.STATE_TEMPLATE, mutate,
                     lambda text: self._edit_in_place(text, checked, phase, now), finish=finish)

    def _index(self, text: str, doc: Any) -> None:
        """The pieces of a text a round trip wrote, from its document: no second parse."""
        self._layout = None if lost_content(doc) else Layout.index(text, doc)

    def _edit_in_place(self, text: str, vms: Mapping[str, Mapping[str, Any]],
                       phase: str | None, now: str) -> str | None:
        """The new text from the pieces of the last one written; None: round-trip instead.
        Text that differs from ours (a script's ``yq -i``) is parsed again: both kept."""
        if self._layout is None or self._layout.text != text:
            doc = yamledit.load_mapping(text)  # inside _update_file's _parsing
            check_state(self.path, doc)
            self._layout = None if lost_content(doc) else Layout.index(text, doc)
        if self._layout is None or not self._layout.apply(vms, phase, now):
            return None
        return self._layout.text

    def _restore(self, doc: Any, reason: str, events_path: Path) -> None:
        if not (vms := replay(read_events(events_path))):
            return  # nothing to rebuild: a blank file starts from the template
        log.info("%s", rebuild_note(self.path, reason, events_path, len(vms)))  # commands warn
        owner = _read_log(events_path).get("deployment_id") or self.deployment_id
        if "deployment_id" not in doc and owner:
            yamledit.set_key(doc, "deployment_id", owner)
        yamledit.apply_state(doc, vms, None, utc_now_str())

    def set_phase(self, phase: str) -> None:
        self.update(phase=phase)

    def replace_vms(self, vms: Mapping[str, Mapping[str, Any]]) -> None:
        """Make ``vm_states`` exactly ``vms`` (each entry as given, ``last_checked`` too)."""
        checked = {name: vm_fields(fields) for name, fields in vms.items()}

        def mutate(doc: Any, _blank: bool) -> None:
            check_state(self.path, doc)
            if isinstance(doc.get("vm_states"), dict):
                doc["vm_states"].clear()
            yamledit.apply_state(doc, checked, None, utc_now_str())

        self._update(yamledit.STATE_TEMPLATE, mutate)
