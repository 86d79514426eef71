"""Edit the state and events YAML while keeping comments, blank lines, quoting and key order.

The files are shared with the legacy bash scripts, so every edit is a ruamel.yaml round trip
that dumps an untouched document back byte for byte, and new entries look like the lines the
scripts write. ``append_events_text`` is a text-level fast path for the usual events layout;
``layout`` is the one for the state file, and writes what ``apply_state`` would.
Nothing here touches the filesystem; ``statefile`` owns locking and replacing the files.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from vmlaunch.errors import ExitCode, StateError

# Strings that read back as themselves when plain, for YAML 1.1 and 1.2 readers alike.
_PLAIN_SAFE = re.compile(r"[A-Za-z][A-Za-z0-9_ .,/()+=-]*(?<! )")
YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
# The line breaks str.splitlines (and ruamel) see besides \n, for a regex's [] class.
OTHER_BREAKS = r"\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029"
# A line of the events list's text that is not indented (or an odd line break before one).
_NOT_IN_LIST = re.compile(rf"[{OTHER_BREAKS}]|\n(?!  |\n|$)")
_CONTENT_LINE = re.compile(rf"(?:\A|[\n{OTHER_BREAKS}])\s*[^\s#]")  # not blank, no comment
LAST_UPDATED_LINE = re.compile(r'^last_updated: "[^"\n]*"[ \t]*$', re.MULTILINE)


# New files, as the bash scripts start them ({ts}: creation time, {id}: deployment id).
STATE_TEMPLATE = """\
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
EVENTS_TEMPLATE = """\
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


class NotAMappingError(StateError, ValueError, exit_code=ExitCode.BAD_INPUT):
    """The YAML parses, but its top level is not a mapping, so it cannot be edited here."""


def is_blank(text: str) -> bool:
    """Nothing but whitespace and comments (what a truncating in-place writer may leave).
    A regex for any line (as ``str.splitlines`` splits) that starts with neither."""
    return _CONTENT_LINE.search(text) is None  # splitting a big file would cost milliseconds


def round_trip_yaml() -> YAML:
    # Reproduces the samples byte for byte; wide lines so long messages are never folded.
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def load_mapping(text: str) -> CommentedMap:
    """Parse ``text`` for editing; raise ruamel's ``YAMLError`` or ``NotAMappingError``."""
    doc = round_trip_yaml().load(text)
    if not isinstance(doc, CommentedMap):
        raise NotAMappingError("The top level of the YAML document is not a mapping.")
    return doc


def dump_text(doc: Any) -> str:
    out = io.StringIO()
    round_trip_yaml().dump(doc, out)
    return out.getvalue()


# --- keeping trailing comments in place -----------------------------------------------------


def _last_item(node: Any) -> tuple[Any, int, int] | None:
    """(key, comment slot, slot count) of a collection's last item, in ruamel's ``ca.items``."""
    if isinstance(node, CommentedMap) and node:
        return next(reversed(node)), 2, 4
    if isinstance(node, CommentedSeq) and node:
        return len(node) - 1, 0, 2
    return None


def _detach_tail(node: Any) -> str | None:
    """Remove and return the comment block after a collection's last item (keeps EOL comment)."""
    if (last := _last_item(node)) is None:
        return None
    key, slot, _ = last
    deeper = _detach_tail(node[key])
    entry = node.ca.items.get(key)
    if deeper is not None or not entry or entry[slot] is None:
        return deeper
    # The token holds "<EOL comment>\n<following lines>"; only the following lines move.
    head, _, rest = entry[slot].value.partition("\n")
    entry[slot] = CommentToken(head + "\n", entry[slot].start_mark) if head.strip() else None
    return "\n" + rest if rest else None


def _attach_tail(node: Any, text: str | None) -> None:
    """Put a comment block detached by ``_detach_tail`` after the collection's last item."""
    if text is None or (last := _last_item(node)) is None:
        return
    key, slot, size = last
    if _last_item(node[key]) is not None:
        _attach_tail(node[key], text)
    else:
        node.ca.items.setdefault(key, [None] * size)[slot] = CommentToken(text, CommentMark(0))


@contextlib.contextmanager
def _appending_to(node: Any) -> Iterator[None]:
    # ruamel hangs the comments after a collection on its last item; move them past new items.
    tail = _detach_tail(node)
    yield
    _attach_tail(node, tail)


def set_key(parent: CommentedMap, key: str, value: Any) -> None:
    """Set a key in place, or append it at the end with trailing comments moved below it."""
    if key in parent:
        parent[key] = value
        return
    with _appending_to(parent):
        parent[key] = value


def _child_collection(parent: CommentedMap, key: str, kind: type) -> Any:
    """Return ``parent[key]`` as a block-style collection, creating it if absent or null."""
    child = parent.get(key)
    if not isinstance(child, kind):
        child = kind()
        set_key(parent, key, child)
    if not child:
        child.fa.set_block_style()  # `vm_states: {}` / `events: []` grow as block entries
    return child


# --- quoting like the bash scripts ----------------------------------------------------------


def quoted(value: Any) -> Any:
    # New strings are double-quoted like the sample; ints and bools stay what they are.
    return DoubleQuotedScalarString(value) if isinstance(value, str) else value


def _plain_or_dq(value: str) -> Any:
    """Plain for simple words (as in the sample events), double-quoted for anything else."""
    simple = _PLAIN_SAFE.fullmatch(value) and value.lower() not in YAML_WORDS
    return value if simple else DoubleQuotedScalarString(value)


# --- the two documents ----------------------------------------------------------------------


def apply_vm(vms: CommentedMap, name: str, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into ``vms[name]``; a new VM gets the lines the scripts start one with."""
    entry = vms.get(name)
    if isinstance(entry, CommentedMap):
        for key, value in fields.items():
            set_key(entry, key, quoted(value))
        return
    entry = CommentedMap(public_ip=quoted(""), private_ip=quoted(""))
    for key in ("state", "last_checked", *fields):
        if key in fields:
            entry[key] = quoted(fields[key])
    set_key(vms, name, entry)


def apply_state(
    doc: CommentedMap, vms: Mapping[str, Mapping[str, Any]], phase: str | None, now: str
) -> None:
    """Merge ``vms`` into ``vm_states``, set ``phase`` if given, stamp ``last_updated``."""
    if vms:
        vm_map = _child_collection(doc, "vm_states", CommentedMap)
        for name, fields in vms.items():
            apply_vm(vm_map, name, fields)
    if phase is not None:
        set_key(doc, "phase", quoted(phase))
    set_key(doc, "last_updated", quoted(now))


def _event_map(event: Mapping[str, Any]) -> CommentedMap:
    item = CommentedMap()
    for key, value in event.items():
        plain = key != "timestamp" and isinstance(value, str)
        item[key] = _plain_or_dq(value) if plain else _fields_map(value) if isinstance(
            value, Mapping) else quoted(value)
    return item


def _fields_map(fields: Mapping[str, Any]) -> CommentedMap:
    # An event's structured change on one line (`vm_states: {vm-1: {state: "Creating"}}`):
    # one line per key, as the scripts that grep the log expect.
    item = CommentedMap((key, _fields_map(value) if isinstance(value, Mapping) else quoted(value))
                        for key, value in fields.items())
    item.fa.set_flow_style()
    return item


def apply_events(doc: CommentedMap, events: Iterable[Mapping[str, Any]], now: str) -> None:
    """Append ``events`` to the ``events`` list and stamp ``last_updated``."""
    seq = _child_collection(doc, "events", CommentedSeq)
    if items := [_event_map(event) for event in events]:
        with _appending_to(seq):  # only with new items: reattaching in place drops EOL comments
            seq.extend(items)
    set_key(doc, "last_updated", quoted(now))


_FLOW_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SIMPLE_TEXT = re.compile(r'[ !#-\[\]-~]*')  # printable ASCII but " and \: quoted as it is


def scalar_text(value: Any, *, plain_words: bool = False) -> str | None:
    """A value as the round trip writes it; None when it needs escaping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not _SIMPLE_TEXT.fullmatch(value):
        return None
    if plain_words and _PLAIN_SAFE.fullmatch(value) and value.lower() not in YAML_WORDS:
        return value
    return f'"{value}"'


def _flow_text(fields: Mapping[str, Any]) -> str | None:
    parts = []
    for key, value in fields.items():
        if not (isinstance(key, str) and _FLOW_KEY.fullmatch(key)) or key.lower() in YAML_WORDS:
            return None
        text = _flow_text(value) if isinstance(value, Mapping) else scalar_text(value)
        if text is None:
            return None
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


def event_text(event: Mapping[str, Any]) -> str | None:
    """One event's lines in the list, as `_event_map` and the round trip write them, built
    as text (a ruamel dump costs ~5 ms an event, a 500-VM `vm_states` seconds); None when
    a value is not that simple. One line per key however long (ruamel folds past 4,096)."""
    lines = []
    for key, value in event.items():
        text = (_flow_text(value) if isinstance(value, Mapping)
                else scalar_text(value, plain_words=key != "timestamp"))
        if text is None or not _FLOW_KEY.fullmatch(key):
            return None
        lines.append(f"{'    ' if lines else '  - '}{key}: {text}\n")
    return "".join(lines)


def append_events_text(text: str, events: Iterable[Mapping[str, Any]], now: str, *,
                       checked: int = 0) -> str | None:
    """``apply_events`` on the text itself when ``events:`` is the last top-level key (a
    round trip costs ~0.5 ms per event); None (round-trip) for any other layout. The first
    ``checked`` characters are known to be in that layout: only what follows is looked at."""
    head, sep, body = text.rpartition("\nevents:\n")
    if not sep or not body.startswith("  - ") or not body.endswith("\n"):
        return None
    # From just before the checked part's end, so its last line break is looked at again.
    if _NOT_IN_LIST.search(body, max(0, checked - len(head) - len(sep) - 1)):
        return None  # another top-level key or a column-0 comment follows the list
    head, count = LAST_UPDATED_LINE.subn(f'last_updated: "{now}"', head)
    if count != 1:
        return None
    events = list(events)
    texts = [event_text(e) for e in events]
    added = ("".join(texts) if None not in texts  # type: ignore[arg-type]
             else dump_text(CommentedMap(events=[_event_map(e) for e in events]))
             .removeprefix("events:\n"))
    return head + sep + body + added
