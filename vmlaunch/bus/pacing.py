"""One write budget for every worker, in the KV bucket `VM_PACING` (key `writes`).

The value is a `Ledger`: the latest writes' times and the time before which nobody writes.
A worker admits a write by a compare-and-set of the ledger with its write added, so two
workers never both take the last place in a window; a worker that meets a throttle sets
"no writes before T" the same way, and every worker waits for it.

Clock: the times are the NATS server's. A worker learns its offset from the server's
timestamp of its own write (the error is at most half a round trip), so workers whose
clocks disagree still share one timeline.

NATS away, the bucket missing or not writable: each operation has a bounded wait, then the
worker goes on with its own `LocalBudget` (which counted its shared writes too) and logs
it once, until the bucket answers again. A value this tool did not write is logged and
replaced, never trusted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from vmlaunch.azure.writebudget import Admission, Ledger, LocalBudget, Window
from vmlaunch.bus.publish import NATS_ERRORS
from vmlaunch.bus.streams import PACING_BUCKET, PACING_STREAM

log = logging.getLogger("pacing")

KEY = "writes"
OP_TIMEOUT = 5.0  # the longest one read or write of the ledger may take (nats-py's own)
CAS_TRIES = 10  # compare-and-set rounds before this admission waits a moment and retries
CONFLICT_PAUSE = 0.05
CLOCK_REFRESH = 60.0  # seconds between two estimates of the server's clock
MAX_SLEEP = 5.0  # re-read the ledger at least this often while waiting (a pause may come)
RETRY_SHARED = 10.0  # seconds on the local budget alone before the bucket is tried again


class SharedBudget:
    """The fleet's budget through `js`; `windows` as every worker was given them."""

    def __init__(self, js: JetStreamContext, windows: tuple[Window, ...]) -> None:
        self._js, self.windows = js, windows
        self.local = LocalBudget(windows)
        self._bucket: KeyValue | None = None
        self._offset = 0.0  # server clock minus ours
        self._clock_at = -CLOCK_REFRESH  # time.monotonic() of the last estimate
        self._degraded, self._retry_at = False, 0.0
        self._turn = asyncio.Lock()  # this process's admissions one by one: no CAS among them
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        """The server's time, as far as we know it."""
        return time.time() + self._offset

    async def admit(self) -> Admission:
        async with self._turn:
            while time.monotonic() >= self._retry_at:
                try:
                    admitted = await asyncio.wait_for(self._try_admit(),
                                                      OP_TIMEOUT * CAS_TRIES)
                except (*NATS_ERRORS, OSError) as exc:
                    self._fall_back(exc)
                    break
                self._recovered()
                if isinstance(admitted, Admission):
                    return admitted
                await asyncio.sleep(min(admitted, MAX_SLEEP))
            return await self.local.admit()

    def wrote(self, admission: Admission) -> None:
        self.local.wrote(admission)
        if admission.shared is not None:
            self._in_background(self._record_write(admission.shared, self.now()))

    def throttled(self, retry_after: float) -> None:
        self.local.throttled(retry_after)
        self._in_background(self._record_pause(self.now() + retry_after))

    def _in_background(self, update: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(update)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait (bounded) for the pauses still being recorded."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=OP_TIMEOUT)

    async def _try_admit(self) -> Admission | float:
        """The admission once a write is admitted (and counted), else the seconds to wait."""
        for _ in range(CAS_TRIES):
            ledger, revision = await self._read()
            now = round(self.now(), 3)  # as the ledger stores it, to find it again
            wait = ledger.wait(self.windows, now)
            if wait > 0:
                return wait
            ledger.add(self.windows, now)
            if await self._write(ledger, revision):
                return Admission(self.local.record(time.time()), now)
        return CONFLICT_PAUSE

    async def _record_write(self, admitted: float, made: float) -> None:
        """Move the fleet's count of a write from its admission to when it was made."""
        try:
            for _ in range(CAS_TRIES):
                ledger, revision = await asyncio.wait_for(self._read(), OP_TIMEOUT)
                if not ledger.moved(admitted, round(max(admitted, made), 3)):
                    return  # left the ledger already (or replaced): nothing to move
                if await asyncio.wait_for(self._write(ledger, revision), OP_TIMEOUT):
                    return
        except (*NATS_ERRORS, OSError) as exc:
            self._fall_back(exc)  # counted from its admission, as before

    async def _record_pause(self, until: float) -> None:
        try:
            for _ in range(CAS_TRIES):
                ledger, revision = await asyncio.wait_for(self._read(), OP_TIMEOUT)
                ledger.pause(until)
                if await asyncio.wait_for(self._write(ledger, revision), OP_TIMEOUT):
                    log.warning("Azure throttled a write: no worker writes for %.0f s",
                                until - self.now())
                    return
        except (*NATS_ERRORS, OSError) as exc:
            self._fall_back(exc)  # this worker pauses; the others learn at their own 429

    async def _read(self) -> tuple[Ledger, int | None]:
        """The ledger and its revision (None: no ledger yet); a value that is not a
        ledger is read as an empty one, which the next write replaces."""
        bucket = await self._kv()
        try:
            entry = await asyncio.wait_for(bucket.get(KEY), OP_TIMEOUT)
        except NotFoundError:  # no key yet, or a deleted or purged one: create() takes both
            return Ledger(), None
        try:
            return Ledger.decode(entry.value, self.now()), entry.revision
        except ValueError as exc:
            log.error("the %s bucket's %r holds a value this tool did not write (%s); "
                      "replacing it", PACING_BUCKET, KEY, exc)
            return Ledger(), entry.revision

    async def _write(self, ledger: Ledger, revision: int | None) -> bool:
        """Compare-and-set; False when another worker wrote first."""
        bucket = await self._kv()
        before = time.time()
        try:
            if revision is None:
                seq = await asyncio.wait_for(bucket.create(KEY, ledger.encode()), OP_TIMEOUT)
            else:
                seq = await asyncio.wait_for(
                    bucket.update(KEY, ledger.encode(), last=revision), OP_TIMEOUT)
        except KeyWrongLastSequenceError:  # create of an existing key raises it too
            return False
        await self._learn_clock(seq, (before + time.time()) / 2)
        return True

    async def _learn_clock(self, seq: int, ours: float) -> None:
        """The offset of the server's clock: its timestamp of our write at `ours`."""
        if time.monotonic() - self._clock_at < CLOCK_REFRESH:
            return
        try:
            stored = await asyncio.wait_for(
                self._js.get_msg(PACING_STREAM, seq=seq, direct=True), OP_TIMEOUT)
        except NotFoundError:  # another worker's write replaced ours already: next time
            return
        if stored.time is not None:
            self._offset = stored.time.timestamp() - ours
            self._clock_at = time.monotonic()

    async def _kv(self) -> KeyValue:
        if self._bucket is None:
            try:
                self._bucket = await asyncio.wait_for(self._js.key_value(PACING_BUCKET),
                                                      OP_TIMEOUT)
            except NotFoundError:
                raise OSError(f"the KV bucket {PACING_BUCKET} does not exist") from None
        return self._bucket

    def _fall_back(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_SHARED
        if not self._degraded:
            self._degraded = True
            log.warning("the shared write budget (%s) cannot be used (%s); pacing this "
                        "worker's writes on its own until it can", PACING_BUCKET,
                        str(exc) or type(exc).__name__)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            log.warning("the shared write budget (%s) answers again", PACING_BUCKET)
