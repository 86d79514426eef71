"""``deployment-events.yaml``: the events log, appended to under the lock, atomically, as
text where the layout allows (statefile.py has the locking and the round trip)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from vmlaunch.state import yamledit
from vmlaunch.state.shape import utc_now_str
from vmlaunch.state.statefile import YamlFile, read_events


class EventsFile(YamlFile):
    """``deployment-events.yaml``: appends events under the lock, atomically."""

    def read(self) -> list[dict[str, Any]]:
        return read_events(self.path)

    def __init__(self, path: str | os.PathLike[str], *, deployment_id: str | None = None) -> None:
        super().__init__(path, deployment_id=deployment_id)
        # The text this object last wrote by appending, and how much of it had been looked at.
        self._written: tuple[str, int] | None = None

    def append(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append events ({timestamp, action, message[, event_id]}; see ``make_event``)."""
        items = [{"timestamp": utc_now_str(), **event} for event in events]
        if not items:
            return
        now = utc_now_str()

        def edit(text: str) -> str | None:
            # Only what we appended last gets a look at its layout: the log grows by every
            # event, and a look at all of it cost ~12 ms an append at 500 VMs (~350 kB).
            written, checked = self._written or ("", 0)
            new = yamledit.append_events_text(text, items, now,
                                              checked=checked if text == written else 0)
            self._written = None if new is None else (new, len(text))
            return new

        self._update(
            yamledit.EVENTS_TEMPLATE,
            lambda doc, _blank: yamledit.apply_events(doc, items, now),
            edit_text=edit,
            # A new file's first event must not be later than the events queued before it.
            created=min(item["timestamp"] for item in items),
        )
