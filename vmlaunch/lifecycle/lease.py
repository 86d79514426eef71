"""One owner per VM: whether a launcher may still create or delete the VM it drives.

The lifecycle awaits `fence.allow(action, vm)` before every `az vm create` and every delete;
that call is the only ownership check, and a create's process runs only while the fence
holds (`while_held`). A worker's fence is its `Lease` on the request: the
request's AckWait from delivery, renewed only by in-progress heartbeats the server
confirmed (a flush), and void for good once it has lapsed or a cancel (e.g. one naming a
new owner) is known; the server gives a lapsed request to someone else, so acting on it
could make two launchers drive one VM. The legacy poller's fence is a `Handover`: after a
fallback from NATS it waits until every worker's lease has lapsed before it destroys or
creates anything (observing and adopting need no fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vmlaunch.errors import LifecycleError

T = TypeVar("T")


class Fenced(LifecycleError):
    """This launcher no longer owns the VM: it must neither create nor delete it."""


class Fence:
    """Always allows: a launcher that is the only possible owner (e.g. `launch` by hand)."""

    async def allow(self, action: str, vm: str) -> None:
        return None

    def open_now(self) -> bool:
        """Whether `allow` would let a create or delete through without waiting."""
        return True

    async def closed(self) -> None:
        """Returns once the fence has closed for good (this one never does)."""
        await asyncio.get_running_loop().create_future()


async def while_held(fence: Fence, action: str, vm: str, call: Awaitable[T]) -> T:
    """`call` (an `az` write), ended with its process if the fence closes first, then
    Fenced: a create still on its way when the lease lapses would reach Azure after the
    request's next owner looked and found nothing, and that owner creates too."""
    task, lapse = asyncio.ensure_future(call), asyncio.ensure_future(fence.closed())
    try:
        await asyncio.wait({task, lapse}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when we are cancelled (a cancel, a stop): the call goes with us
        lapse.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the process and its group are ended before the cancel returns
    if task.cancelled():
        await fence.allow(action, vm)  # raises Fenced, saying why
    return task.result()


OPEN = Fence()
POLLER = "legacy-poller"  # the owner of the VMs handed over after a fallback from NATS


class Lease(Fence):
    """A worker's hold on one request. `cancelled` gives the reason when a cancel for it
    is known (None otherwise)."""

    def __init__(self, ttl: float, *, cancelled: Callable[[], str | None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self._cancelled, self._clock = ttl, cancelled, clock
        self.expires_at = clock() + ttl
        self.lapsed = False

    def renew(self, sent_at: float) -> None:
        """A heartbeat sent at `sent_at` (clock time) was confirmed by the server."""
        if not self._expired():
            self.expires_at = max(self.expires_at, sent_at + self.ttl)

    def _expired(self) -> bool:
        # Final: once lapsed, the server may have handed the request to another owner.
        self.lapsed = self.lapsed or self._clock() >= self.expires_at
        return self.lapsed

    def held(self) -> bool:
        """Whether the request is still ours (cancelled or not): the lease has not lapsed."""
        return not self._expired()

    def open_now(self) -> bool:
        return self._cancelled() is None and self.held()

    async def closed(self) -> None:
        while not self._expired():  # heartbeats push expires_at on while we sleep
            await asyncio.sleep(max(0.0, self.expires_at - self._clock()))

    async def allow(self, action: str, vm: str) -> None:
        reason = self._cancelled()
        if reason is not None:
            raise Fenced(f"not allowed to {action} {vm}: cancelled ({reason})")
        if self._expired():
            raise Fenced(f"not allowed to {action} {vm}: the lease on its request lapsed "
                         f"(no heartbeat confirmed for {self.ttl:g} s)")


class Handover(Fence):
    """The poller's fence after a fallback: nothing destructive before `at` (loop time),
    when the last lease a worker could hold has lapsed."""

    def __init__(self, at: float) -> None:
        self.at = at

    def open_now(self) -> bool:
        return asyncio.get_running_loop().time() >= self.at

    async def allow(self, action: str, vm: str) -> None:
        wait = self.at - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
