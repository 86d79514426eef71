"""A JetStream pull consumer read as a stream: each message handed over the moment it lands.

nats-py's `fetch(n, timeout)` returns when n messages came or its timeout ran out. When the
first answer it reads is a status (the 408 of the previous fetch's expired request, landing
late), it falls back to a lingering request and then holds the first message that request
brings until its deadline: measured, about one event in seventy up to 0.4 s late. Here a
message is handed over when it lands, whatever came before it; statuses only say when to
send the next request. One request is outstanding at a time (a batch, a few seconds of
patience, idle heartbeats), renewed when it is used up or has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header, StatusCode

from vmlaunch.errors import BusError

JS_API = "$JS.API"  # every JetStream context here is nc.jetstream(): no domain
BATCH = 200
EXPIRES = 5.0  # seconds a request waits on the server before it ends with a 408
HEARTBEAT = 1.0  # the server's idle heartbeat while a request waits
SILENCE = 3 * HEARTBEAT  # no message and no heartbeat for this long: the request is lost


class PullEnded(BusError):
    """The consumer can no longer be read (gone, server silent, or it refused a request):
    the caller makes a new one."""


class _Inbox:
    """What the server sent to one inbox, in order. `next` returns without a pass through
    the event loop while any is there: messages that landed together are handed over
    together (as a fetched batch was), so the caller's state write can take them at once."""

    def __init__(self) -> None:
        self.landed: deque[Msg] = deque()
        self.news = asyncio.Event()

    async def arrive(self, msg: Msg) -> None:
        self.landed.append(msg)
        self.news.set()

    async def next(self, consumer: str) -> Msg:
        while not self.landed:
            self.news.clear()
            try:
                await asyncio.wait_for(self.news.wait(), SILENCE)
            except TimeoutError:
                raise PullEnded(f"no heartbeat from {consumer} for {SILENCE:g} s") from None
        return self.landed.popleft()


async def pull(nc: Client, stream: str, consumer: str, *,
               idle: Callable[[], object]) -> AsyncIterator[Msg]:
    """The messages of `consumer`, one made for this pull (deliveries numbered from 1), in
    order, until the caller stops or PullEnded is raised. `idle` is called whenever the
    server says it has nothing for now (a heartbeat of the waiting request, or its end)."""
    subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    request = json.dumps({"batch": BATCH, "expires": int(EXPIRES * 1e9),
                          "idle_heartbeat": int(HEARTBEAT * 1e9)}).encode()
    inbox = _Inbox()
    sub = await nc.subscribe(nc.new_inbox(), cb=inbox.arrive)
    try:
        owed, delivered = 0, 0  # what the outstanding request may still bring; deliveries
        while True:
            if owed == 0:
                await nc.publish(subject, request, reply=sub.subject)
                owed = BATCH
            msg = await inbox.next(consumer)
            status = msg.headers.get(Header.STATUS) if msg.headers else None
            if not status:
                delivered = _next_delivery(msg, delivered, consumer)
                owed -= 1
                yield msg
            elif status == StatusCode.CONTROL_MESSAGE:  # an idle heartbeat: nothing for now
                idle()
            elif status == StatusCode.REQUEST_TIMEOUT:  # the request ended: ask again
                owed = 0
                idle()
            else:
                reason = msg.headers.get(Header.DESCRIPTION, "") if msg.headers else ""
                raise PullEnded(f"{consumer}: {status} {reason}".rstrip())
    finally:
        with contextlib.suppress(Exception):  # a closed connection has no subscription left
            await sub.unsubscribe()


def _next_delivery(msg: Msg, delivered: int, consumer: str) -> int:
    """The delivery number of `msg`, which must follow `delivered`: a gap means messages were
    lost on the way (a reconnect drops those in flight), and unacknowledged deliveries are
    never sent again, so the caller must make a new consumer from where it is."""
    try:
        number = msg.metadata.sequence.consumer
    except Exception:  # no JetStream reply subject: not a delivery of this consumer
        raise PullEnded(f"{consumer}: a message that is not a delivery") from None
    if number != delivered + 1:
        raise PullEnded(f"{consumer}: delivery {number} after {delivered}: some were lost")
    return number
