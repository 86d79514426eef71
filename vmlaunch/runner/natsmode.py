"""The NATS half of `deploy`: publish the requests, follow the events, stop at the end.

Ends "finished" (every VM ready or finally failed), "deadline" (cancels published, workers
given CANCEL_WAIT seconds to confirm, the rest marked Failed, untaken requests deleted),
"stopped" (SIGINT/SIGTERM) or "lost" (NATS gone longer than the grace period, or every
embedded worker gone): the caller then hands the unfinished VMs to the legacy poller.
A new request gets a generation never used before (`Generations`), so the events of an
earlier run, however recent, are not taken for this one's. `hand_over` fences the workers
out of the VMs the poller takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from datetime import datetime
from typing import TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from vmlaunch.bus.connection import ACK_WAIT, REQUESTS_STREAM, WORKER_CONSUMER
from vmlaunch.bus.embedded import EmbeddedRuntime
from vmlaunch.bus.feed import (
    DuplicateRequest,
    EventFeed,
    Generations,
    publish_cancel,
    publish_event,
    publish_request,
)
from vmlaunch.bus.publish import NATS_ERRORS
from vmlaunch.display.views import Display
from vmlaunch.lifecycle.machine import deadline_error
from vmlaunch.plans.plan import Plan
from vmlaunch.runner.tracker import Ticket, Tracker, epoch
from vmlaunch.schema.messages import Message

log = logging.getLogger("natsrun")

CANCEL_WAIT = 5.0  # how long the deadline waits for workers to confirm their cancels
CATCH_UP_WAIT = 10.0  # how long a rerun replays old events before re-publishing
# The feed starts this long before the first request: servers stamp messages with their own
# clock. Older events of other generations it reads are dropped by generation, not by time.
REPLAY_MARGIN = 300.0
DUPLICATE_TRIES = 3  # generations tried when the server says a new one was already used
LEASE_MARGIN = 1.0  # beyond a worker's lease before a new owner may destroy or create
ANNOUNCE_WAIT = 5.0  # how long the end of a run waits for a handover to reach NATS
# Requests (and their generations) in flight to NATS at once: each is a round trip or
# three, and one after the other they took ~0.2 s each on a busy machine (500 VMs: 100 s).
PUBLISHING_AT_ONCE = 64

T = TypeVar("T")


async def bounded(calls: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await `calls` with at most `limit` of them at once; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call
    return await asyncio.gather(*(one(call) for call in calls))


async def until_either(events: Iterable[asyncio.Event], timeout: float) -> None:
    """Wait until one of `events` is set, or `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


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
    def __init__(self, nc: Client, plan: Plan, tracker: Tracker, display: Display, *,
                 stop: asyncio.Event, link: Link, deadline_at: float, deadline_reason: str,
                 grace: float, runtime: EmbeddedRuntime | None) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.plan, self.tracker, self.display = plan, tracker, display
        self.stop, self.link, self.grace, self.runtime = stop, link, grace, runtime
        self.deadline_at, self.deadline_reason = deadline_at, deadline_reason
        self.loop = asyncio.get_running_loop()
        self.request_seqs: dict[str, int] = {}
        self._failing_since: float | None = None  # publishing fails since (one for all)
        self.ack_wait = ACK_WAIT  # the workers' lease on a request (the consumer's AckWait)
        self._announcing: asyncio.Task[None] | None = None
        self._generations: Generations | None = None

    async def run(self, tickets: dict[str, Ticket]) -> str:
        """"finished", "deadline", "stopped", or "lost" (NATS or every worker gone)."""
        js = self.js
        with contextlib.suppress(*NATS_ERRORS):  # no consumer yet: the workers' default
            info = await js.consumer_info(REQUESTS_STREAM, WORKER_CONSUMER)
            self.ack_wait = info.config.ack_wait or ACK_WAIT
        tickets = await self._new_generations(tickets)
        start = min(epoch(t.requested_at) for t in tickets.values()) - REPLAY_MARGIN
        feed = EventFeed(self.nc, self.tracker.sink,
                         start=datetime.fromtimestamp(start).astimezone(),
                         deployment_id=self.plan.deployment_id, by_event_time=False)
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

    async def _new_generations(self, tickets: dict[str, Ticket]) -> dict[str, Ticket]:
        """Fresh tickets past every generation recorded in NATS (the state file may be gone),
        before any event is read, so no earlier generation's event is taken for theirs."""
        try:
            self._generations = await Generations.open(self.js)
        except NATS_ERRORS as exc:  # then only a duplicate ack tells a generation was used
            log.warning("cannot open the generations bucket (%r)", exc)
        async def renewed(name: str, ticket: Ticket) -> Ticket:
            return (await self._next_generation(name, ticket, ticket.generation)
                    if ticket.fresh else ticket)
        names = list(tickets)
        renewals = await bounded((renewed(n, tickets[n]) for n in names), PUBLISHING_AT_ONCE)
        return dict(zip(names, renewals, strict=True))

    async def _next_generation(self, name: str, ticket: Ticket, at_least: int) -> Ticket:
        """A fresh ticket with a generation never requested (as far as the bucket knows)."""
        generation = at_least
        if self._generations is not None:
            try:
                generation = await self._generations.reserve(self.plan.deployment_id, name,
                                                             at_least)
            except NATS_ERRORS as exc:
                log.warning("cannot reserve a generation of %s (%r)", name, exc)
        if generation != ticket.generation:
            ticket = Ticket(generation, ticket.requested_at, fresh=True)
            self.tracker.renumber(name, ticket)
        return ticket

    async def _publish(self, js: JetStreamContext, tickets: dict[str, Ticket]) -> bool:
        """Every request published (False: NATS was gone longer than the grace period)."""
        published = await bounded((self._publish_one(js, name, ticket)
                                   for name, ticket in tickets.items()), PUBLISHING_AT_ONCE)
        return all(published)

    async def _publish_one(self, js: JetStreamContext, name: str, ticket: Ticket) -> bool:
        """False once publishing (any request's) has failed for longer than the grace."""
        tries = 0
        while name not in self.request_seqs:
            try:
                self.request_seqs[name] = await publish_request(
                    js, self.plan.spec(name), deployment_id=self.plan.deployment_id,
                    generation=ticket.generation, fresh=ticket.fresh)
                self._failing_since = None
            except DuplicateRequest as exc:
                tries += 1
                if tries >= DUPLICATE_TRIES:
                    await self.tracker.fail(name, "DuplicateRequest", f"{exc} (tried "
                                            f"{tries} generations)")
                    break
                ticket = await self._next_generation(name, ticket, ticket.generation + 1)
            except NATS_ERRORS:
                self._failing_since = self._failing_since or self.loop.time()
                if self.loop.time() - self._failing_since > self.grace:
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
            # A stop (a signal, an unwritable state file) is acted on at once, not at the
            # next tick: every second counts while the workers go on launching.
            await until_either((tracker.changed, self.stop), 1.0)
            self.display.tick(tracker.view)

    async def _expire(self, js: JetStreamContext) -> None:
        """Deadline: cancel what is left, let workers confirm briefly, mark it Failed."""
        left = self.tracker.unfinished()
        reason = self.deadline_reason
        reachable = self.link.lost_at is None  # else each publish would wait its timeout
        for name in left if reachable else []:
            with contextlib.suppress(*NATS_ERRORS):
                await publish_cancel(js, deployment_id=self.plan.deployment_id, vm_name=name,
                                     reason=reason,
                                     generation=self.tracker.view.vms[name].generation)
        waited = self.loop.time() + (CANCEL_WAIT if reachable else 0.0)
        while self.tracker.unfinished() and self.loop.time() < waited:
            self.tracker.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tracker.changed.wait(), 0.2)
        expired = deadline_error(reason)
        for name in self.tracker.unfinished():
            await self.tracker.fail(name, expired.code, expired.message)
        for name in left if reachable else []:  # untaken requests must not outlive the run
            if name in self.request_seqs:
                with contextlib.suppress(Exception):
                    await js.delete_msg(REQUESTS_STREAM, self.request_seqs[name])

    async def hand_over(self, owner: str) -> float:
        """Give the unfinished VMs to `owner` (the legacy poller): a cancel naming it per VM,
        applied at once and published in the background until NATS answers, each followed by
        the deletion of its request. Returns the loop
        time from which `owner` may create or delete: when every worker's lease has lapsed
        (at once for embedded workers, which the caller stops)."""
        reason = f"NATS lost for more than {self.grace:g} s; {owner} drives it now"
        cancels = [await self.tracker.hand_over(name, owner, reason)
                   for name in self.tracker.unfinished()]
        if self.runtime is not None:
            return self.loop.time()
        self._announcing = asyncio.create_task(self._announce(cancels), name="hand-over")
        lost_at = self.link.lost_at if self.link.lost_at is not None else self.loop.time()
        return lost_at + self.ack_wait + LEASE_MARGIN

    async def _announce(self, cancels: list[Message]) -> None:
        """Each cancel, then its request out of the work queue: left there, it would be
        served by a worker that never heard of the cancel (started later, say)."""
        for message in cancels:
            while True:
                try:
                    await publish_event(self.js, message)
                    break
                except NATS_ERRORS:
                    await asyncio.sleep(0.5)
            if message.vm_name in self.request_seqs:
                with contextlib.suppress(Exception):  # already settled: nothing to delete
                    await self.js.delete_msg(REQUESTS_STREAM, self.request_seqs[message.vm_name])
        log.info("workers told that %d VMs are driven by the poller now", len(cancels))

    async def close(self) -> None:
        """The run is over: let a handover reach NATS if it is back, then stop announcing."""
        if self._announcing is None:
            return
        if self.link.lost_at is None:
            await asyncio.wait({self._announcing}, timeout=ANNOUNCE_WAIT)
        self._announcing.cancel()
        await asyncio.gather(self._announcing, return_exceptions=True)
