"""``deployment-events.yaml``: the events log, appended to under the lock (statefile.py has
the locking and the round trip).

While the file is exactly as this object's last text append left it, the next append is
made in place (``atomicfile.append``): the new events at the end, ``last_updated`` rewritten
where it stands (a timestamp is always as long), one fdatasync. At 500 VMs the log is
~600 kB: a rewrite read, wrote and fsynced all of it, then fsynced the directory, ~10 ms of
each state write under load. Otherwise (another writer, our first append, a layout we do
not know) the text is edited and the file atomically replaced, as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmlaunch.host import atomicfile
from vmlaunch.state import yamledit
from vmlaunch.state.logtail import without_torn_tail
from vmlaunch.state.shape import utc_now_str
from vmlaunch.state.statefile import YamlFile, read_events


@dataclass(frozen=True)
class _Left:
    """How our last text append left the file: its ``Written`` and where the value of its
    ``last_updated`` is (a byte offset)."""

    file: atomicfile.Written
    stamp_at: int
    stamp: str


class EventsFile(YamlFile):
    """``deployment-events.yaml``: appends events under the lock."""

    def read(self) -> list[dict[str, Any]]:
        return read_events(self.path)

    def __init__(self, path: str | os.PathLike[str], *, deployment_id: str | None = None) -> None:
        super().__init__(path, deployment_id=deployment_id)
        # The text this object last wrote by appending, and how much of it had been looked at.
        self._written: tuple[str, int] | None = None
        self._left: _Left | None = None

    def append(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append events ({timestamp, action, message[, event_id]}; see ``make_event``)."""
        items = [{"timestamp": utc_now_str(), **event} for event in events]
        if not items:
            return
        now = utc_now_str()
        if self._append_in_place(items, now):
            self.rewrites += 1
        else:
            self._append_by_rewrite(items, now)

    def sync(self) -> None:
        """Make earlier appends durable after their sync failed: the file is replaced by a
        copy of itself (a second fsync of the same pages may report success without them on
        the disk). A file deleted meanwhile has nothing left to sync."""
        self._left = None
        with contextlib.suppress(FileNotFoundError):
            atomicfile.rewrite(self.path, _as_it_is)

    def _append_in_place(self, items: list[dict[str, Any]], now: str) -> bool:
        left, self._left = self._left, None  # kept only if this append succeeds
        texts = [yamledit.event_text(item) for item in items]
        if left is None or None in texts or len(now) != len(left.stamp):
            return False
        data = "".join(texts).encode()  # type: ignore[arg-type]
        try:
            appended, written = atomicfile.append(self.path, left.file, data,
                                                  (left.stamp_at, now.encode()))
        except FileNotFoundError:
            return False
        if written is not None:
            self._left = _Left(written, left.stamp_at, now)
        if appended:
            self._written = None  # the text we know is no longer the file's
        return appended

    def _append_by_rewrite(self, items: list[dict[str, Any]], now: str) -> None:
        edited: list[str] = []  # the text our edit made, if the rewrite took that path

        def edit(text: str) -> str | None:
            # Only what we appended last gets a look at its layout: the log grows by every
            # event, and a look at all of it cost ~12 ms an append at 500 VMs (~350 kB).
            written, checked = self._written or ("", 0)
            text = without_torn_tail(self.path, text)
            new = yamledit.append_events_text(text, items, now,
                                              checked=checked if text == written else 0)
            self._written = None if new is None else (new, len(text))
            edited[:] = [] if new is None else [new]
            return new

        file = self._update(
            yamledit.EVENTS_TEMPLATE,
            lambda doc, _blank: yamledit.apply_events(doc, items, now),
            edit_text=edit,
            # A new file's first event must not be later than the events queued before it.
            created=min(item["timestamp"] for item in items),
        )
        if not edited:  # a round trip or a blank file: its text is not one we know
            self._written = None
        elif file is not None and (at := _last_updated_at(edited[0])) is not None:
            self._left = _Left(file, len(edited[0][:at].encode()), now)


def _as_it_is(text: str | None) -> str:
    if text is None:
        raise FileNotFoundError("deleted meanwhile: nothing left to sync")
    return text


def _last_updated_at(text: str) -> int | None:
    """Where the value of the header's ``last_updated: "..."`` starts in an events text of
    the layout ``append_events_text`` edits; None if there is not exactly one."""
    found = list(yamledit.LAST_UPDATED_LINE.finditer(text.rpartition("\nevents:\n")[0]))
    return found[0].start() + len('last_updated: "') if len(found) == 1 else None
