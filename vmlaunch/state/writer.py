"""The one writer of the state and events files: the reducer's output, coalesced.

`Recorder` is the only way an event reaches the files: reduced (`reducer.reduce`), then its
change queued on the `StateWriter`; the display reads the same reducer output.

Many events a second become a bounded number of locked writes (``statefile``): a change
after a quiet spell is written at once, and during a burst at most one write per ``delay``
(20 ms, about what one write takes at 500 VMs under load: 50 ms held changes back ~30 ms
after the write before them had ended, and wrote no fewer times) takes everything that
arrived meanwhile, so no change waits more than ``delay``. A failed write is retried with
backoff; events already appended are never appended again. Failing for ``give_up_after``
seconds calls ``on_broken`` (the caller stops its work and exits 3).

The events file is written first and made durable; the state file's rename is not followed
by its directory's fsync until ``close``: a crash may leave the state file behind its log,
which a rerun catches up from (the same as a kill between the two writes), never ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmlaunch.errors import ExitCode, StateError
from vmlaunch.host import atomicfile
from vmlaunch.schema.messages import Message
from vmlaunch.state.eventsfile import EventsFile
from vmlaunch.state.reducer import Change, DeploymentView, Event
from vmlaunch.state.statefile import (
    StateFile,
    StateFileError,
    make_event,
    read_state,
    vm_fields,
)

RETRY_CAP = 1.0  # the longest wait between two tries of a failing write

log = logging.getLogger("statewriter")


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


class WriteFailed(StateError, exit_code=ExitCode.CANNOT_RUN):
    """A state or events file could not be written (an OS error or a file made unusable)."""

    def __init__(self, path: os.PathLike[str], cause: Exception) -> None:
        super().__init__(f"cannot write {path}: {cause}")
        self.path = path


class StateWriter:
    """Coalesces state and event changes into few locked rewrites of both files.

    Use as ``async with StateWriter(state_path, events_path) as writer:``. The change methods
    never block; a change is written at once unless a write began less than ``delay`` ago,
    then everything pending is written together when that ``delay`` is up, in one
    read-modify-write per file. ``flush()`` forces a write; ``close()`` (also
    on leaving the ``async with``) writes the rest and may be called twice.
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        events_path: str | os.PathLike[str],
        *,
        deployment_id: str | None = None,
        delay: float = 0.02,
        give_up_after: float = 3.0,
        on_broken: Callable[[WriteFailed], None] | None = None,
    ) -> None:
        self.state_file = StateFile(state_path, deployment_id=deployment_id,
                                    events_path=events_path)
        self.state_file.durable = False  # its directory is synced at close
        self.events_file = EventsFile(events_path, deployment_id=deployment_id)
        self.delay = delay
        self.give_up_after = give_up_after
        self.failure: WriteFailed | None = None  # the last write's failure, until one succeeds
        self.on_broken = on_broken  # called once writes have failed for give_up_after s
        self._gave_up = False
        self._events_unsynced = False  # appended, but its fsync failed
        self._state_unsynced = False  # renamed since its directory's last fsync
        self._pending = _Pending()
        self._last_write_at = float("-inf")  # when the last write began (loop time)
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
            with contextlib.suppress(StateFileError, OSError):  # a bad file fails at flush
                state = await asyncio.to_thread(read_state, self.state_file.path)
                self.events_file.deployment_id = state.get("deployment_id")
        self._pump_task = asyncio.create_task(self._pump(), name="statefile-writer")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def update_vm(self, name: str, **fields: Any) -> None:
        """Queue ``vm_states.<name>`` field changes; stamps ``last_checked`` unless given."""
        self._accept(_Pending(vms={name: vm_fields(fields)}))

    def record(self, name: str, fields: dict[str, Any], log_lines: list[tuple[str, str]],
               event_id: str | None = None) -> None:
        """Queue a VM change with its events; the last event carries the change."""
        events = [make_event(action, text, event_id=event_id) for action, text in log_lines]
        self._queue({name: fields} if fields else {}, events)

    def set_phase(self, phase: str) -> None:
        """Queue a new top-level ``phase``."""
        self._accept(_Pending(phase=phase))

    def append_event(
        self, action: str, message: str, timestamp: str | None = None,
        event_id: str | None = None, vm_states: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Queue one event; ``timestamp`` defaults to now (the time of this call). With
        ``vm_states`` ({name: fields}) it also queues those VM changes."""
        event = make_event(action, message, timestamp=timestamp, event_id=event_id)
        self._queue(vm_states or {}, [event])

    def _queue(self, vms: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
        # The last event carries the VM changes, so ``statefile.replay`` can rebuild them.
        checked = {name: vm_fields(fields) for name, fields in vms.items()}
        if events and checked:
            events[-1]["vm_states"] = checked
        self._accept(_Pending(vms=checked, events=events))

    async def flush(self) -> None:
        """Write everything pending now; on failure the changes stay pending and it raises."""
        async with self._flush_lock:
            pending, self._pending = self._pending, _Pending()
            self._dirty.clear()
            if not pending and not self._events_unsynced:
                return
            self._last_write_at = asyncio.get_running_loop().time()
            try:
                await asyncio.to_thread(self._write, pending)
            except WriteFailed as exc:
                self.failure = exc
                pending.absorb(self._pending)  # without the events already appended
                self._pending = pending
                self._dirty.set()
                raise
            self.failure = None

    async def close(self) -> None:
        """Stop the timer and write everything pending; safe to call more than once.

        Raises WriteFailed if that fails, unless ``on_broken`` has already been told."""
        self._closing.set()
        self._dirty.set()
        if self._pump_task is not None:
            await self._pump_task
        try:
            await self.flush()
            if self._state_unsynced:
                await asyncio.to_thread(self._sync_state)
        except WriteFailed as exc:
            if not self._gave_up:
                raise
            log.warning("%s; these changes are only in the events stream", exc)

    def _sync_state(self) -> None:
        """The directory's fsync that the state file's renames skipped (see the top)."""
        try:
            atomicfile.sync_directory(self.state_file.path)
        except OSError as exc:
            raise WriteFailed(self.state_file.path, exc) from exc
        self._state_unsynced = False

    def _accept(self, change: _Pending) -> None:
        if self._pump_task is None or self._closing.is_set():
            raise RuntimeError("StateWriter accepts changes only inside its async with block.")
        self._pending.absorb(change)
        self._dirty.set()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        retry = self.delay
        while not self._closing.is_set():
            await self._dirty.wait()
            # Idle: at once. In a burst: one write per delay, so changes coalesce.
            wait = self._last_write_at + self.delay - loop.time()
            if failing_since is not None:  # back off from a failing disk
                wait, retry = retry, min(retry * 2, RETRY_CAP)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
            try:
                await self.flush()
            except WriteFailed as exc:  # kept pending, retried
                if failing_since is None:
                    failing_since = loop.time()
                    log.warning("%s; retrying for up to %g s", exc, self.give_up_after)
                else:
                    log.debug("%s; retrying", exc)
                given_up = loop.time() - failing_since >= self.give_up_after
                if given_up and self.on_broken is not None and not self._gave_up:
                    self._gave_up = True
                    self.on_broken(exc)
            else:
                failing_since, retry = None, self.delay

    def _write(self, pending: _Pending) -> None:
        # The events file first: it is the log a rerun replays from. Killed between the two
        # writes, the state file is behind (the VM looks unfinished and is followed again),
        # never ahead with its events missing. Once appended, the events are done: a retry
        # after a failed state write must not append them again.
        if pending.events or self._events_unsynced:
            try:
                if pending.events:  # its sync covers an earlier append too
                    self.events_file.append(pending.events)
                else:
                    self.events_file.sync()
                self._events_unsynced = False
            except atomicfile.NotDurable as exc:
                if pending.events:  # appended all the same: only the sync is retried
                    pending.events, self._events_unsynced = [], True
                raise WriteFailed(self.events_file.path, exc) from exc
            except Exception as exc:  # an OS error, a file made unusable, anything: retried
                raise WriteFailed(self.events_file.path, exc) from exc
            pending.events = []
        if pending.vms or pending.phase is not None:
            try:
                self.state_file.update(pending.vms, phase=pending.phase)
            except Exception as exc:
                raise WriteFailed(self.state_file.path, exc) from exc
            self._state_unsynced = True


class Recorder:
    """Reduces each event and writes what it changed: its log lines once (an event the
    events file already holds, `written`, only rewrites its VM's fields), the fields with
    the last of them, so the events log can rebuild the state file. Without a writer it
    only reduces (e.g. `launch` without `--state-file`)."""

    def __init__(self, view: DeploymentView, writer: StateWriter | None,
                 written: set[str] | None = None) -> None:
        self.view = view
        self.writer = writer
        self.written = written if written is not None else set()

    def apply(self, event: Event, *, write: bool = True) -> Change | None:
        """The event's change (None: it changes nothing), queued for the files unless
        `write` is False (the caller writes it with an event of its own)."""
        change = self.view.apply(event)
        if change is None or self.writer is None or not write:
            return change
        event_id = event.event_id if isinstance(event, Message) else None
        if event_id in self.written:
            # Fields are written even for a replayed event: the events file is written
            # first, so after a kill the state file may be behind it.
            if change.vm_fields:
                self.writer.update_vm(event.vm_name, **change.vm_fields)
            return change
        self.writer.record(event.vm_name, change.vm_fields, change.log, event_id=event_id)
        if event_id is not None:
            self.written.add(event_id)
        return change

    def replayed(self, event: Event) -> bool:
        return isinstance(event, Message) and event.event_id in self.written
