"""The orchestrator's event feed hands over each event as it lands.

The case that held events back: the answer a read finds first is a status left over from
an earlier pull request (a 408 that landed after its read had timed out). nats-py's
`fetch` then went on with a lingering request and kept the next event until its own
deadline (0.5 s); in fleet runs that was the 0.3-0.4 s stall of about ten VMs at once.
The first test puts such a status into the feed's inbox, as the server would, and times
one event through: on loopback it takes a few milliseconds, the held one took ~0.5 s. The
others: events that landed together reach the state writer together, and deliveries lost on
the way are read again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats
import pytest
from conftest import async_wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from vmlaunch.bus.feed import EventFeed, publish_event
from vmlaunch.bus.streams import ensure_streams
from vmlaunch.schema.messages import Complete, Message, decode

pytestmark = pytest.mark.timeout(60)

DEPLOYMENT = "feed-test"
HANDED_OVER_WITHIN = 0.25  # s: far above loopback delivery, well below the held 0.5 s


def complete(vm_name: str) -> Message:
    return Message(deployment_id=DEPLOYMENT, vm_name=vm_name, source="w1", generation=1,
                   payload=Complete(public_ip="20.0.0.4", private_ip="10.0.0.4",
                                    vm_id="id-1", duration_seconds=3.0))


async def watching_pulls(url: str) -> tuple[Client, asyncio.Queue[Msg]]:
    """A second client and the pull requests it sees the feed send (their reply subject is
    the feed's inbox)."""
    other = await nats.connect(url)
    pulls: asyncio.Queue[Msg] = asyncio.Queue()
    await other.subscribe("$JS.API.CONSUMER.MSG.NEXT.VM_EVENTS.*", cb=pulls.put)
    await other.flush()
    return other, pulls


def started(nc: Client, deliver: Callable[[Message], Awaitable[None]]
            ) -> tuple[EventFeed, asyncio.Task[None]]:
    """A running feed of the test's deployment (`feed.stop(task)` ends it)."""
    feed = EventFeed(nc, deliver, start=None, deployment_id=DEPLOYMENT, by_event_time=False)
    return feed, asyncio.create_task(feed.run())


async def test_an_event_after_a_stale_status_is_handed_over_at_once(nats_server):
    nc = await nats.connect(nats_server.url)
    observer, pulls = await watching_pulls(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        arrived: dict[str, float] = {}

        async def collect(message: Message) -> None:
            arrived[message.vm_name] = time.monotonic()

        feed, task = started(nc, collect)
        await asyncio.wait_for(feed.caught_up.wait(), 10)
        for vm_name in ("vm-1", "vm-2", "vm-3"):
            request = await asyncio.wait_for(pulls.get(), 10)  # a read waits on this one
            await observer.publish(request.reply, b"", headers={
                "Status": "408", "Description": "Request Timeout"})
            await observer.flush()
            await publish_event(js, complete(vm_name))
            sent = time.monotonic()
            await async_wait_until(lambda name=vm_name: name in arrived, timeout=5, interval=0.005)
            assert arrived[vm_name] - sent < HANDED_OVER_WITHIN, vm_name
        await feed.stop(task)
    finally:
        await observer.close()
        await nc.close()


async def test_events_that_landed_together_are_handed_over_together(nats_server):
    """Fifty events stored before the feed starts come in a few socket reads; each read's
    events reach `deliver` with no pass through the event loop between them, so the state
    writer (which runs in the loop) writes them at once instead of one write per event."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        for n in range(50):
            await publish_event(js, complete(f"vm-{n}"))
        loop = asyncio.get_running_loop()
        passes: list[int] = []  # the loop passes seen before each delivery
        ran = [0]

        async def collect(message: Message) -> None:
            passes.append(ran[0])
            loop.call_soon(lambda: ran.__setitem__(0, ran[0] + 1))

        feed, task = started(nc, collect)
        await asyncio.wait_for(feed.caught_up.wait(), 10)
        await feed.stop(task)
    finally:
        await nc.close()
    assert len(passes) == 50
    assert len(set(passes)) <= 10, f"{len(set(passes))} separate hand-overs for 50 events"


async def test_a_gap_in_the_deliveries_makes_the_feed_read_again_from_where_it_was(nats_server):
    """Deliveries lost on the way (a reconnect drops those in flight; with no acks they are
    never sent again) show as a gap in the consumer's delivery numbers. Here another client
    pulls from the feed's consumer and takes one: the feed sees the gap and reads again from
    after the last event it had, so it gets the taken one too."""
    nc = await nats.connect(nats_server.url)
    thief, pulls = await watching_pulls(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        arrived: list[str] = []

        async def collect(message: Message) -> None:
            arrived.append(message.vm_name)

        feed, task = started(nc, collect)
        await publish_event(js, complete("vm-1"))
        await async_wait_until(lambda: arrived == ["vm-1"], timeout=10)
        request = await asyncio.wait_for(pulls.get(), 10)
        taken = await thief.subscribe(thief.new_inbox())
        await thief.publish(request.subject, b'{"batch": 1, "expires": 5000000000}',
                            reply=taken.subject)
        await thief.flush()
        for vm_name in ("vm-2", "vm-3", "vm-4"):
            await publish_event(js, complete(vm_name))
        stolen = await taken.next_msg(timeout=10)
        assert decode(stolen.data).vm_name in {"vm-2", "vm-3", "vm-4"}
        await async_wait_until(lambda: sorted(arrived) == ["vm-1", "vm-2", "vm-3", "vm-4"],
                               timeout=10)
        await feed.stop(task)
    finally:
        await thief.close()
        await nc.close()
    assert arrived[0] == "vm-1" and len(arrived) == 4
