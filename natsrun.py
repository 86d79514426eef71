"""The NATS half of `deploy`: publish the requests, follow the events, stop at the end.

Ends "finished" (every VM ready or finally failed), "deadline" (cancels published, workers
given CANCEL_WAIT seconds to confirm, the rest marked Failed, untaken requests deleted),
"stopped" (SIGINT/SIGTERM) or "lost" (NATS gone longer than the grace period, or every
embedded worker gone): the caller then hands the unfinished VMs to the legacy poller.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from nats.js import JetStreamContext

from display import Display
from embedded import EmbeddedRuntime
from eventbus import NATS_ERRORS
from eventfeed import EventFeed, publish_cancel, publish_request
from natsconn import REQUESTS_STREAM
from plan import Plan
from tracker import CLOCK_SKEW, Ticket, Tracker, epoch

CANCEL_WAIT = 5.0  # how long the deadline waits for workers to confirm their cancels
CATCH_UP_WAIT = 10.0  # how long a rerun replays old events before re-publishing


class Link:
    """Whether NATS is there, as told by the client's callbacks."""

    def __init__(self) -> None:
        self.lost_at: float | None = None

    async def disconnected(self) -> None:
        if self.lost_at is None:
            self.lost_at = asyncio.get_running_loop().time()

    async def reconnected(self) -> None:
        self.lost_at = None

    def lost_for(self) -> float:
        return 0.0 if self.lost_at is None else asyncio.get_running_loop().time() - self.lost_at


class NatsRun:
    def __init__(self, js: JetStreamContext, plan: Plan, tracker: Tracker, display: Display, *,
                 stop: asyncio.Event, link: Link, deadline_at: float, deadline_reason: str,
                 grace: float, runtime: EmbeddedRuntime | None) -> None:
        self.js, self.plan, self.tracker, self.display = js, plan, tracker, display
        self.stop, self.link, self.grace, self.runtime = stop, link, grace, runtime
        self.deadline_at, self.deadline_reason = deadline_at, deadline_reason
        self.loop = asyncio.get_running_loop()
        self.request_seqs: dict[str, int] = {}

    async def run(self, tickets: dict[str, Ticket]) -> str:
        """"finished", "deadline", "stopped", or "lost" (NATS or every worker gone)."""
        js = self.js
        start = min(epoch(t.requested_at) for t in tickets.values()) - CLOCK_SKEW
        feed = EventFeed(js, self.tracker.sink, start=datetime.fromtimestamp(start).astimezone(),
                         deployment_id=self.plan.deployment_id)
        feed_task = asyncio.create_task(feed.run(), name="event-feed")
        try:
            if not all(t.fresh for t in tickets.values()):  # replay what happened meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_WAIT)
            pending = {n: t for n, t in tickets.items() if n in self.tracker.unfinished()}
            if not await self._publish(js, pending):
                return "lost"
            return await self._watch(js)
        finally:
            await feed.stop(feed_task)

    async def _publish(self, js: JetStreamContext, tickets: dict[str, Ticket]) -> bool:
        for name, ticket in tickets.items():
            failing_since = None
            while name not in self.request_seqs:
                try:
                    self.request_seqs[name] = await publish_request(
                        js, self.plan.spec(name), deployment_id=self.plan.deployment_id,
                        generation=ticket.generation)
                except NATS_ERRORS:
                    failing_since = failing_since or self.loop.time()
                    if self.loop.time() - failing_since > self.grace:
                        return False
                    if self.stop.is_set():
                        return True
                    await asyncio.sleep(0.5)
        return True

    async def _watch(self, js: JetStreamContext) -> str:
        """Wait for the end: finished, deadline, stop, or NATS (or every worker) lost."""
        tracker = self.tracker
        while True:
            if not tracker.unfinished():
                return "finished"
            if self.stop.is_set():
                tracker.note("vm_launch_interrupted", "Interrupted; run again to resume")
                return "stopped"
            if self.loop.time() >= self.deadline_at:
                await self._expire(js)
                return "deadline"
            if self.link.lost_for() > self.grace:
                return "lost"
            if self.runtime is not None and self.runtime.alive_workers() == 0:
                self.display.note("every embedded worker has exited", warning=True)
                return "lost"
            tracker.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracker.changed.wait(), 1.0)
            self.display.tick(tracker.view)

    async def _expire(self, js: JetStreamContext) -> None:
        """Deadline: cancel what is left, let workers confirm briefly, mark it Failed."""
        left = self.tracker.unfinished()
        reason = self.deadline_reason
        reachable = self.link.lost_at is None  # else each publish would wait its timeout
        for name in left if reachable else []:
            with contextlib.suppress(*NATS_ERRORS):
                await publish_cancel(js, deployment_id=self.plan.deployment_id, vm_name=name,
                                     reason=reason)
        waited = self.loop.time() + (CANCEL_WAIT if reachable else 0.0)
        while self.tracker.unfinished() and self.loop.time() < waited:
            self.tracker.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tracker.changed.wait(), 0.2)
        for name in self.tracker.unfinished():
            await self.tracker.fail(name, "DeadlineExceeded", reason)
        for name in left if reachable else []:  # untaken requests must not outlive the run
            if name in self.request_seqs:
                with contextlib.suppress(Exception):
                    await js.delete_msg(REQUESTS_STREAM, self.request_seqs[name])
