"""The fleet's write budget: how many VM creates Azure admits per window (azure-cli.md §6).

Compute allows about 240 VM PUTs per 3 minutes and 1,200 per 30 minutes per subscription,
each a sliding window: no window of that length may hold more. A `WriteBudget` admits one
write at a time inside every window and holds all writes back until a throttle's
retry-after has passed. `LocalBudget` paces one process; bus/pacing.py shares one `Ledger`
between every worker through NATS.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from vmlaunch.azure.failures import THROTTLE_CODES, AzError


@dataclass(frozen=True)
class Window:
    """At most `calls` writes in any `seconds` long window."""

    calls: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.calls}/{self.seconds:g}"


DEFAULT_WINDOWS = (Window(240, 180.0), Window(1200, 1800.0))  # PutVM3Min, PutVM30Min
# After a throttle that named no retry-after (a Compute 429 names it only in a header az
# does not print), no writes for this part of the budget's shortest window (15 s of the
# PutVM3Min one): a blind pause slows the fleet without stopping it, and stays in
# proportion to a budget given in another time (the simulator's); each VM's own retry
# still backs off.
BLIND_PAUSE_SHARE = 1 / 12
LONGEST_PAUSE = 3600.0  # a retry-after (or a stored pause) beyond this is not believed
LEDGER_VERSION = 2  # decode() still reads version 1
LONGEST_STEP = 10**15  # a ledger's step, in ms: ~31,700 years, more than any true time
# The longest a write's process runs (Tracked.create's timeout for the submit: validation
# and the PUT, never the create itself; a worker's `az` dies with it): a write admitted
# longer ago than this cannot make its PUT any more.
LONGEST_WRITE = 600.0


def parse_windows(texts: tuple[str, ...]) -> tuple[Window, ...]:
    """`("240/180,1200/1800",)` or `("240/180", "1200/1800")`: count/seconds per window;
    ValueError saying what is wrong."""
    windows = []
    for part in (p.strip() for text in texts for p in text.split(",")):
        count, slash, seconds = part.partition("/")
        try:
            window = Window(int(count), float(seconds))
        except ValueError:
            window = None
        if not slash or window is None or window.calls < 1 or not 0 < window.seconds < math.inf:
            raise ValueError(f"{part!r} is not COUNT/SECONDS (e.g. 240/180) with a count of at "
                             "least 1 and a positive number of seconds")
        windows.append(window)
    if not windows:
        raise ValueError("no COUNT/SECONDS window given")
    return tuple(windows)


@dataclass(frozen=True)
class Admission:
    """One write admitted: when, on this process's ledger and (shared) on the fleet's."""

    local: float
    shared: float | None = None


class WriteBudget(Protocol):
    windows: tuple[Window, ...]

    async def admit(self) -> Admission:
        """Return once one write fits every window and no throttle pause holds (counted)."""

    def wrote(self, admission: Admission) -> None:
        """The admitted write's process has ended: count it from now, when Azure surely had
        it. Azure counts a PUT when it arrives, later than its admission by the `az`
        process's start (seconds for a nice create on a busy machine), so a write is counted
        as made at every moment until then (Ledger.pending)."""

    def throttled(self, retry_after: float) -> None:
        """Azure throttled a write: no writes, by anyone sharing this budget, for this long."""


def throttle_pause(error: AzError | None, windows: tuple[Window, ...]) -> float | None:
    """How long to hold all writes of a budget of `windows` after `error`; None when it is
    not a throttle."""
    if error is None or error.code not in THROTTLE_CODES:
        return None
    blind = BLIND_PAUSE_SHARE * min(window.seconds for window in windows)
    return min(error.retry_after or blind, LONGEST_PAUSE)


def note_throttle(budget: WriteBudget, error: AzError | None) -> None:
    """Tell `budget` about `error` if it is a throttle."""
    pause = throttle_pause(error, budget.windows)
    if pause is not None:
        budget.throttled(pause)


@dataclass
class Ledger:
    """The times (seconds since the epoch) of the latest writes made, newest last; the
    admission times of the writes whose process has not ended (`pending`: Azure may take
    their PUT at any moment, so each counts as made now until it is moved, for at most
    LONGEST_WRITE: a worker that died with one holds its place no longer); and the time
    before which nobody writes."""

    times: list[float] = field(default_factory=list)
    not_before: float = 0.0
    pending: list[float] = field(default_factory=list)

    def wait(self, windows: tuple[Window, ...], now: float) -> float:
        """Seconds until one more write fits every window and the pause (0: now). Never too
        long: a pending write, counted as made now, can only be made later."""
        times = sorted([*self.times, *(min(now, t + LONGEST_WRITE) for t in self.pending)])
        waits = [self.not_before - now]
        for window in windows:
            if len(times) >= window.calls:  # the window's oldest write must leave it
                waits.append(times[-window.calls] + window.seconds - now)
        return max(0.0, *waits)

    def add(self, windows: tuple[Window, ...], now: float) -> None:
        """Count a write admitted at `now` as pending, keeping only the times some window
        still needs."""
        longest, keep = max(w.seconds for w in windows), max(w.calls for w in windows)
        self.pending = [t for t in [*self.pending, now] if t + LONGEST_WRITE > now - longest]
        self.times = [t for t in self.times if t > now - longest][-keep:]

    def moved(self, was: float, to: float) -> bool:
        """The write admitted at `was` was made by `to`; False if it is not pending here."""
        if was not in self.pending:
            return False
        self.pending.remove(was)
        bisect.insort(self.times, to)
        return True

    def pause(self, until: float) -> None:
        self.not_before = max(self.not_before, until)

    def encode(self) -> bytes:
        """Version 2: each list in whole milliseconds, each one after the first as its
        distance from the one before. At 500 writes that is ~2 KB where seconds with three
        decimals were ~8 KB, and every admission reads and writes it (twice per create)."""
        return json.dumps({"v": LEDGER_VERSION, "not_before": round(self.not_before, 3),
                           "times": _steps(self.times), "pending": _steps(self.pending)},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None, now: float) -> Ledger:
        """The ledger in `data` (version 2, or 1 as written before it); ValueError if it is
        not one this tool wrote or it holds times that cannot be true (beyond LONGEST_PAUSE
        ahead of `now`)."""
        try:
            value = json.loads(data or b"")
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ValueError(f"not JSON ({type(exc).__name__})") from None
        version = value.get("v") if isinstance(value, dict) else None
        if type(version) is not int or version not in (1, LEDGER_VERSION):
            raise ValueError(f"not a version 1 or {LEDGER_VERSION} ledger")
        times, not_before = value.get("times"), value.get("not_before")
        pending = value.get("pending", [])  # absent from the ledgers of an earlier version
        if version == LEDGER_VERSION:
            times, pending = _unstepped(times), _unstepped(pending)
        if not isinstance(times, list) or not isinstance(pending, list) or not all(
                _plausible(x, now) for x in [*times, *pending, not_before]):
            raise ValueError("times, pending and not_before must be epoch seconds not far "
                             "ahead")
        return cls(sorted(times), not_before, sorted(pending))


def _steps(times: list[float]) -> list[int]:
    """Sorted epoch seconds as milliseconds: the first, then each one's step from the last."""
    ms = [round(t * 1000) for t in sorted(times)]
    return [b - a for a, b in zip([0, *ms], ms, strict=False)]


def _unstepped(steps: object) -> list[float] | None:
    """What `_steps` encoded; None unless `steps` is a list of whole numbers from 0 to
    LONGEST_STEP."""
    if not isinstance(steps, list) or not all(
            type(step) is int and 0 <= step <= LONGEST_STEP for step in steps):
        return None  # a larger int would not even become a float (OverflowError)
    return [ms / 1000 for ms in itertools.accumulate(steps)]


def _plausible(value: object, now: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value <= now + LONGEST_PAUSE)


class LocalBudget:
    """One process's budget: every write of this process, none of anyone else's."""

    def __init__(self, windows: tuple[Window, ...] = DEFAULT_WINDOWS) -> None:
        self.windows = windows
        self.ledger = Ledger()
        self._turn = asyncio.Lock()  # one admission at a time: each sees the last one's write

    async def admit(self) -> Admission:
        async with self._turn:
            while (wait := self.ledger.wait(self.windows, time.time())) > 0:
                await asyncio.sleep(wait)
            return Admission(self.record(time.time()))

    def record(self, now: float) -> float:
        """Count a write admitted at `now` (also one the shared budget admitted)."""
        self.ledger.add(self.windows, now)
        return now

    def wrote(self, admission: Admission) -> None:
        self.ledger.moved(admission.local, max(admission.local, time.time()))

    def throttled(self, retry_after: float) -> None:
        self.ledger.pause(time.time() + retry_after)
