"""The machine-wide limit on `az` processes: N slot files, each held by flock while one runs.

A real `az` holds ~100 MB (azure-cli.md §4), so a fleet must not start one per VM. Every
process of this user on one host (orchestrator, embedded and separate workers, a manual
launch) takes a slot from the same files in the private runtime directory
(`customdata.shared_dir`), so together they run at most N at once (processes configured
with different N share the first slots: the smallest N holds for them). A lock is released
by the kernel when its holder dies, so a killed process never leaks a slot. The files are
opened close-on-exec: an az child never inherits a lock. The last slots are kept for quick
reads (`held(read=True)`): a listing every VM waits on must not queue behind hundreds of
creates waiting for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
from collections.abc import AsyncIterator

from vmlaunch.host.customdata import shared_dir

DEFAULT_LIMIT = 32
SLOTS_DIR = "az-slots"
PAUSE, PAUSE_CAP = 0.01, 0.2  # between tries while every slot is busy (other processes)


def reserved(limit: int) -> int:
    """Slots only reads may take: an eighth (4 of 32), none when there is only one."""
    return limit // 8 if limit >= 8 else min(1, limit - 1)


class MachineSlots:
    """At most `limit` holders at once across this host's processes. Plain file locks and
    no asyncio primitive: one instance serves every event loop of the process."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"the az process limit must be at least 1, not {limit}")
        self.limit = limit
        self._free: list[int] | None = None  # descriptors this process does not hold now
        self._number: dict[int, int] = {}  # descriptor -> slot number

    def _descriptors(self) -> list[int]:
        if self._free is None:
            where = shared_dir(SLOTS_DIR)
            self._free = [os.open(where / str(i), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                  0o600) for i in range(self.limit)]
            self._number = {fd: i for i, fd in enumerate(self._free)}
        return self._free

    def _try(self, *, read: bool) -> int | None:
        """A descriptor whose lock we just took, or None when every slot it may take is busy."""
        allowed = self.limit if read else self.limit - reserved(self.limit)
        free = [fd for fd in self._descriptors() if self._number[fd] < allowed]
        for fd in random.sample(free, len(free)):  # spread processes over the slots
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._descriptors().remove(fd)
            return fd
        return None

    @contextlib.asynccontextmanager
    async def held(self, *, read: bool = False) -> AsyncIterator[None]:
        """One slot for the body (one az process's life); a `read` may take a reserved one."""
        pause = PAUSE
        while (fd := self._try(read=read)) is None:
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 1.5, PAUSE_CAP)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._descriptors().append(fd)


_shared: MachineSlots | None = None


def configure(limit: int) -> None:
    """Set this process's limit (`--max-az-processes`), before its first az call."""
    global _shared
    if _shared is None or _shared.limit != limit:
        _shared = MachineSlots(limit)


def shared() -> MachineSlots:
    """The process's one limit, which every `AzCli` of the process shares."""
    if _shared is None:
        configure(DEFAULT_LIMIT)
    assert _shared is not None
    return _shared
