"""The coalescing writer of the state and events files, for long-running commands.

Many events a second become a bounded number of locked rewrites (``statefile``), yet no
change waits more than ``delay`` (50 ms) to reach the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from statefile import EventsFile, StateFile, StateFileError, make_event, read_state, vm_fields

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    phase: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.vms or self.events) or self.phase is not None

    def absorb(self, newer: _Pending) -> None:
        for name, fields in newer.vms.items():
            self.vms.setdefault(name, {}).update(fields)
        self.phase = newer.phase if newer.phase is not None else self.phase
        self.events.extend(newer.events)


class StateWriter:
    """Coalesces state and event changes into few locked rewrites of both files.

    Use as ``async with StateWriter(state_path, events_path) as writer:``. The change methods
    never block; the first pending change arms a ``delay`` timer, then everything pending is
    written in one read-modify-write per file. ``flush()`` forces a write; ``close()`` (also
    on leaving the ``async with``) writes the rest and may be called twice.
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        events_path: str | os.PathLike[str],
        *,
        deployment_id: str | None = None,
        delay: float = 0.05,
    ) -> None:
        self.state_file = StateFile(state_path, deployment_id=deployment_id)
        self.events_file = EventsFile(events_path, deployment_id=deployment_id)
        self.delay = delay
        self._pending = _Pending()
        self._first_pending_at = 0.0
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._pump_task: asyncio.Task[None] | None = None

    @property
    def rewrite_count(self) -> int:
        """How many times either file has been rewritten by this writer."""
        return self.state_file.rewrites + self.events_file.rewrites

    async def __aenter__(self) -> StateWriter:
        if self.state_file.deployment_id is None:  # a new events file takes the state's id
            with contextlib.suppress(StateFileError):  # a bad state file fails at flush instead
                state = await asyncio.to_thread(read_state, self.state_file.path)
                self.events_file.deployment_id = state.get("deployment_id")
        self._pump_task = asyncio.create_task(self._pump(), name="statefile-writer")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def update_vm(self, name: str, **fields: Any) -> None:
        """Queue ``vm_states.<name>`` field changes; stamps ``last_checked`` unless given."""
        self._accept(_Pending(vms={name: vm_fields(fields)}))

    def set_phase(self, phase: str) -> None:
        """Queue a new top-level ``phase``."""
        self._accept(_Pending(phase=phase))

    def append_event(
        self, action: str, message: str, timestamp: str | None = None, event_id: str | None = None
    ) -> None:
        """Queue one event; ``timestamp`` defaults to now (the time of this call)."""
        event = make_event(action, message, timestamp=timestamp, event_id=event_id)
        self._accept(_Pending(events=[event]))

    async def flush(self) -> None:
        """Write everything pending now; on failure the changes stay pending and it raises."""
        async with self._flush_lock:
            pending, self._pending = self._pending, _Pending()
            self._dirty.clear()
            if not pending:
                return
            try:
                await asyncio.to_thread(self._write, pending)
            except Exception:
                pending.absorb(self._pending)
                self._pending = pending
                self._mark_dirty()
                raise

    async def close(self) -> None:
        """Stop the timer and write everything pending; safe to call more than once."""
        self._closing.set()
        self._dirty.set()
        if self._pump_task is not None:
            await self._pump_task
        await self.flush()

    def _accept(self, change: _Pending) -> None:
        if self._pump_task is None or self._closing.is_set():
            raise RuntimeError("StateWriter accepts changes only inside its async with block.")
        self._pending.absorb(change)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self._dirty.is_set():
            self._first_pending_at = asyncio.get_running_loop().time()
            self._dirty.set()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            await self._dirty.wait()
            # Wait from the first pending change, not from now, so no change waits > delay.
            wait = self._first_pending_at + self.delay - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), max(wait, 0))
            try:
                await self.flush()
            except Exception:  # kept pending: retried after the next delay
                log.exception("writing %s failed", self.state_file.path)

    def _write(self, pending: _Pending) -> None:
        # The events file first: it is the log a rerun replays from. Killed between the two
        # writes, the state file is behind (the VM looks unfinished and is followed again),
        # never ahead with its events missing.
        if pending.events:
            self.events_file.append(pending.events)
        if pending.vms or pending.phase is not None:
            self.state_file.update(pending.vms, phase=pending.phase)
