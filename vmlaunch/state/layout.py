"""The state file's text cut into pieces, so one VM's update re-renders only its block.

A comment-preserving round trip costs ~1 ms per VM in the file; this edits the text instead.
``Layout.index`` parses the file once (at start, or when another writer changed it) and cuts
it into one piece per top-level key and one per ``vm_states`` entry. ``apply`` then rewrites
only the lines of the fields it changes (quoted as the round trip quotes them, end-of-line
comments kept) and adds new fields and VMs where the round trip would, before the comments
that follow a block. Anything outside the simple layout the bash scripts write (2-space
indents, one-line values, plain VM names) gives None or False: the caller round-trips.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.comments import CommentedMap

from vmlaunch.state import yamledit

_TOP_KEY = re.compile(r"([A-Za-z_][\w-]*):")
_VM_NAME = re.compile(r"  ([A-Za-z0-9][\w.-]*):[ \t]*(?:#.*)?\n")
_FIELD = re.compile(r"    ([A-Za-z_][\w-]*):")
# A value complete on its line (so the line can be replaced), then an optional comment.
_ONE_LINE_VALUE = re.compile(
    r"""[ \t]*(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*'|[^\s"'|>&*!%@`{\[#][^\n#]*?|)"""
    r"([ \t]+#[^\n]*|[ \t]*)\n")
_SIMPLE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# Line breaks other than \n, and multi-document markers: the round trip handles those.
_ODD_TEXT = re.compile(rf"[{yamledit.OTHER_BREAKS}]|^(?:---|\.\.\.|%)", re.M)


def _is_filler(line: str) -> bool:
    """A blank or comment line: never part of a value we replace or insert after."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


@dataclass(eq=False)
class _Piece:
    """Lines of the file: a head line (a top-level key or a VM's name), then its lines."""

    lines: list[str]
    at: int = 0  # its place in ``Layout.pieces``

    def fields(self) -> dict[str, int]:
        """Key -> line number, for a VM's block."""
        return {match.group(1): number for number, line in enumerate(self.lines[1:], 1)
                if (match := _FIELD.match(line))}

    def one_line(self, number: int) -> re.Match[str] | None:
        """The value at line ``number`` if it ends on that line (nothing indented follows)."""
        end = number + 1
        while end < len(self.lines) and not (number and _FIELD.match(self.lines[end])):
            if not _is_filler(self.lines[end]):
                return None  # a continuation line, a block scalar or a nested collection
            end += 1
        line = self.lines[number]
        return _ONE_LINE_VALUE.fullmatch(line, line.index(":") + 1)

    def last_is_one_line(self) -> bool:
        """Lines added at ``content_end`` go after a finished value, not into one."""
        return self.one_line(max(self.fields().values(), default=0)) is not None

    def content_end(self) -> int:
        """Where a new line goes: after the last non-filler line, before trailing comments."""
        end = len(self.lines)
        while end > 1 and _is_filler(self.lines[end - 1]):
            end -= 1
        return end


@dataclass
class Layout:
    """The file as pieces: ``text`` is what it holds, ``apply`` edits it in place."""

    pieces: list[_Piece]
    top: dict[str, _Piece]  # top-level key -> its piece
    vms: dict[str, _Piece]  # vm_states entry -> its piece, in file order
    # Each piece's text, joined once: a write joins ~10 pieces per VM, not ~6 lines per VM.
    texts: list[str] = field(default_factory=list, repr=False)
    _text: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.texts = ["".join(piece.lines) for piece in self.pieces]
        self._number(0)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "".join(self.texts)
        return self._text

    def _number(self, start: int) -> None:
        for at in range(start, len(self.pieces)):
            self.pieces[at].at = at

    def _set(self, piece: _Piece, lines: list[str]) -> None:
        piece.lines = lines
        self.texts[piece.at] = "".join(lines)

    @classmethod
    def index(cls, text: str, doc: CommentedMap) -> Layout | None:
        """The layout of ``text`` (``doc`` is its round-trip parse), or None if it is not the
        simple layout, or ``vm_states`` is not a non-empty block mapping."""
        if not text.endswith("\n") or _ODD_TEXT.search(text):
            return None
        layout = cls._cut(text.splitlines(keepends=True))
        return layout if layout is not None and layout._matches(doc) else None

    @classmethod
    def _cut(cls, lines: list[str]) -> Layout | None:
        pieces: list[_Piece] = [_Piece([])]
        top: dict[str, _Piece] = {}
        vms: dict[str, _Piece] = {}
        in_vms = False
        for line in lines:
            if line[0] not in " #\n":
                if (key := _TOP_KEY.match(line)) is None or key.group(1) in top:
                    return None
                pieces.append(_Piece([line]))
                top[key.group(1)] = pieces[-1]
                in_vms = key.group(1) == "vm_states"
            elif in_vms and not _is_filler(line) and not line.startswith("    "):
                if (name := _VM_NAME.fullmatch(line)) is None or name.group(1) in vms:
                    return None
                pieces.append(_Piece([line]))
                vms[name.group(1)] = pieces[-1]
            else:
                pieces[-1].lines.append(line)
        return cls(pieces, top, vms)

    def _matches(self, doc: CommentedMap) -> bool:
        """The cut found exactly the keys the parser found (so no value was misread)."""
        vm_map = doc.get("vm_states")
        if list(doc) != list(self.top) or not isinstance(vm_map, CommentedMap) or not vm_map:
            return False
        if self.top["vm_states"].lines[0] != "vm_states:\n" or list(vm_map) != list(self.vms):
            return False
        return all(isinstance(entry, CommentedMap) and list(entry) == list(piece.fields())
                   for entry, piece in zip(vm_map.values(), self.vms.values(), strict=True))

    def apply(self, vms: Mapping[str, Mapping[str, Any]], phase: str | None, now: str) -> bool:
        """``yamledit.apply_state`` on the text; False (nothing changed) if it cannot."""
        top = {"phase": phase} if phase is not None else {}
        top["last_updated"] = now
        if not top.keys() <= self.top.keys() or (rendered := _render(top, vms, self.vms)) is None:
            return False  # a top-level key to add, or a value longer than a line
        last = next(reversed(self.vms.values()))
        if rendered.new and not last.last_is_one_line():
            return False
        edits = [(self.top[key], _edited(self.top[key], {key: 0}, {key: line}))
                 for key, line in rendered.top.items()]
        edits += [(self.vms[name], _edited(self.vms[name], self.vms[name].fields(), lines))
                  for name, lines in rendered.vms.items()]
        ready = [(piece, lines) for piece, lines in edits if lines is not None]
        if len(ready) < len(edits):
            return False  # a value over several lines: the round trip edits it
        for piece, lines in ready:
            self._set(piece, lines)
        for name, lines in rendered.new.items():
            self._add_vm(name, lines)
        self._text = None
        return True

    def _add_vm(self, name: str, lines: list[str]) -> None:
        # Like ``yamledit.set_key``: after the last VM, the comments after it moved below.
        last = next(reversed(self.vms.values()))
        end = last.content_end()
        piece = _Piece(lines + last.lines[end:])
        self._set(last, last.lines[:end])
        self.pieces.insert(last.at + 1, piece)
        self.texts.insert(last.at + 1, "".join(piece.lines))
        self._number(last.at + 1)  # only the top-level keys after vm_states move
        self.vms[name] = piece


def _edited(piece: _Piece, keys: Mapping[str, int], lines: Mapping[str, str]) -> list[str] | None:
    """The piece with each key's line replaced (its comment kept) or added; None if unsafe."""
    new = list(piece.lines)
    added = [line for key, line in lines.items() if key not in keys]
    for key, line in lines.items():
        if key in keys:
            if (value := piece.one_line(keys[key])) is None:
                return None
            new[keys[key]] = line[:-1] + value.group(1) + "\n"
    if added:
        if not piece.last_is_one_line():
            return None
        end = piece.content_end()
        new[end:end] = added
    return new


@dataclass
class _Rendered:
    top: dict[str, str]  # top-level key -> its line
    vms: dict[str, dict[str, str]]  # existing VM -> {field: its line}
    new: dict[str, list[str]]  # new VM -> its block's lines


def _render(top: Mapping[str, Any], vms: Mapping[str, Mapping[str, Any]],
            known: Mapping[str, _Piece]) -> _Rendered | None:
    """The lines the round trip would write for these values: one small dump for all."""
    doc = CommentedMap((key, yamledit.quoted(value)) for key, value in top.items())
    vm_map = doc["vm_states"] = CommentedMap()
    for name, fields in vms.items():
        if name in known:
            vm_map[name] = CommentedMap((k, yamledit.quoted(v)) for k, v in fields.items())
        else:
            yamledit.apply_vm(vm_map, name, fields)
    dumped = _lines_of(doc, "")
    lines = iter(dumped if dumped is not None else
                 yamledit.dump_text(doc).splitlines(keepends=True))
    out = _Rendered({key: next(lines) for key in top}, {}, {})
    next(lines)  # "vm_states:" (or "vm_states: {}")
    for name, entry in vm_map.items():
        block = [next(lines) for _ in range(len(entry) + 1)]
        if name in known:
            out.vms[name] = dict(zip(entry, block[1:], strict=True))
        else:
            out.new[name] = block
    return None if next(lines, None) is not None else out  # a value on more than one line


def _lines_of(node: CommentedMap, indent: str) -> list[str] | None:
    """What ``yamledit.dump_text`` writes for this small document, written without ruamel
    (a dump costs ~2 ms), or None when a key or value is not of the simple kinds below."""
    lines = []
    for key, value in node.items():
        if not isinstance(key, str) or not _SIMPLE_KEY.fullmatch(key) or key.lower() in \
                yamledit.YAML_WORDS:
            return None
        if isinstance(value, CommentedMap):
            if (inner := _lines_of(value, indent + "  ")) is None:
                return None
            lines += [f"{indent}{key}:{'' if value else ' {}'}\n", *inner]
        elif (scalar := yamledit.scalar_text(value)) is not None:
            lines.append(f"{indent}{key}: {scalar}\n")
        else:
            return None
    return lines
