"""The orchestrator's side of the bus: requests and cancels out, a deployment's events in.

A request's `Nats-Msg-Id` is `<deployment>/<vm>/<generation>`: a rerun that publishes the
same generation again within the stream's duplicate window is dropped by the server, so
resuming never doubles work (and a worker looks before it creates, so a re-delivery after
the window is safe too). A *new* request must not be dropped: its generation comes from the
KV bucket `VM_GENERATIONS` (key `<deployment>.<vm>`, the last generation published), which
outlives the state file, and a duplicate ack of it raises `DuplicateRequest`. The events are
read through an ephemeral pull consumer that starts at a time (`pull.py`: each event handed
over as it lands); after any trouble (NATS away, consumer gone with a restarted server,
deliveries lost) it is re-created from the next stream sequence, so no event is missed or
read twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vmlaunch.bus.connection import EVENTS_STREAM
from vmlaunch.bus.pull import pull
from vmlaunch.bus.streams import GENERATIONS_BUCKET
from vmlaunch.errors import BusError
from vmlaunch.schema.messages import (
    EVENT_SUBJECTS,
    Cancel,
    CreateRequest,
    Message,
    MessageError,
    Subject,
    decode,
    encode,
)
from vmlaunch.schema.vmspec import VMSpec

log = logging.getLogger("eventfeed")

SOURCE = "orchestrator"
RESUME_WAIT = 0.5  # the pause before a new consumer after trouble



class DuplicateRequest(BusError):
    """The server already had a request of this generation: a new one would be dropped."""


def request_id(deployment_id: str, vm_name: str, generation: int) -> str:
    return f"{deployment_id}/{vm_name}/{generation}"


async def publish_request(js: JetStreamContext, spec: VMSpec, *, deployment_id: str,
                          generation: int, fresh: bool = True) -> int:
    """Publish one create request (custom data as content); the stream sequence it got.
    A duplicate ack is the expected answer only when resuming (`fresh` False: the
    original's sequence); for a new request it raises DuplicateRequest."""
    message = Message(deployment_id=deployment_id, vm_name=spec.name, source=SOURCE,
                      generation=generation, payload=CreateRequest(spec=spec.with_file_contents()))
    ack = await js.publish(Subject.REQUEST.value, encode(message), timeout=5.0, headers={
        "Nats-Msg-Id": request_id(deployment_id, spec.name, generation)})
    if ack.duplicate and fresh:
        raise DuplicateRequest(f"generation {generation} of {spec.name} was already requested")
    return ack.seq


async def publish_cancel(js: JetStreamContext, *, deployment_id: str, vm_name: str,
                         reason: str, generation: int = 0) -> Message:
    """`vm.create.cancel` for one VM (or the whole deployment with an empty name)."""
    message = Message(deployment_id=deployment_id, vm_name=vm_name, source=SOURCE,
                      generation=generation, payload=Cancel(reason=reason))
    await publish_event(js, message)
    return message


async def publish_event(js: JetStreamContext, message: Message) -> None:
    await js.publish(message.subject, encode(message), timeout=5.0,
                     headers={"Nats-Msg-Id": message.event_id})


class Generations:
    """The last generation requested per VM, in a KV bucket that outlives state files."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> Generations:
        """The bucket (made with the streams: `streams.ensure_streams`)."""
        return cls(await js.key_value(GENERATIONS_BUCKET))

    async def reserve(self, deployment_id: str, vm_name: str, at_least: int) -> int:
        """A generation never requested before (≥ `at_least`), recorded before it is used."""
        key = f"{deployment_id}.{vm_name}"
        while True:
            try:
                entry = await self.kv.get(key)
                last, revision = int(entry.value or b"0"), entry.revision
            except KeyNotFoundError:
                last, revision = 0, None
            generation = max(at_least, last + 1)
            try:
                if revision is None:
                    await self.kv.create(key, str(generation).encode())
                else:
                    await self.kv.update(key, str(generation).encode(), last=revision)
                return generation
            except KeyWrongLastSequenceError:
                continue  # another orchestrator of this deployment was quicker


class EventFeed:
    """Delivers the events stream's messages from `start` (optionally one deployment's) to
    `deliver`, in stream order, until cancelled. `caught_up` is set once nothing more is
    pending; `last_seq` is the stream sequence of the last message read. `by_event_time`:
    also drop events whose own `time` is before `start` (what `events --since` asks for; a
    deployment's feed filters by generation instead)."""

    def __init__(self, nc: Client, deliver: Callable[[Message], Awaitable[None]], *,
                 start: datetime | None, deployment_id: str | None = None,
                 by_event_time: bool = True) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.deliver = deliver
        self.start = start
        self.deployment_id = deployment_id
        self.by_event_time = by_event_time
        self.last_seq = 0
        self.caught_up = asyncio.Event()
        self._consumer: str | None = None
        self._stopping = False

    def _config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True,
            num_replicas=1, filter_subjects=[s.value for s in EVENT_SUBJECTS])
        if self.last_seq:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.last_seq + 1
        elif self.start is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.start
        else:
            config.deliver_policy = DeliverPolicy.ALL
        return config

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, consumer lost: start again after it
                log.debug("event feed interrupted (%r); resuming after seq %d", exc,
                          self.last_seq)
                await asyncio.sleep(RESUME_WAIT)

    async def _read(self) -> None:
        """One consumer from after `last_seq`, read until it fails; then it is deleted (or
        left to the server's inactivity threshold when it cannot be)."""
        try:
            info = await self.js.add_consumer(EVENTS_STREAM, self._config())
            self._consumer = info.name
            if info.num_pending == 0:
                self.caught_up.set()
            async with contextlib.aclosing(pull(self.nc, EVENTS_STREAM, info.name,
                                                idle=self.caught_up.set)) as messages:
                async for msg in messages:
                    meta = msg.metadata
                    if meta.sequence.stream > self.last_seq:
                        self.last_seq = meta.sequence.stream
                        await self._deliver(msg.subject, msg.data)
                    if meta.num_pending == 0:
                        self.caught_up.set()
                    if self._stopping:
                        return
        finally:
            await self._forget()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End `task` (running `run`) for sure. A flag as well as a cancel: in Python 3.11 a
        cancel that races with a read's own timeout can surface as a plain timeout."""
        self._stopping = True
        for _ in range(3):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=4 * RESUME_WAIT)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("event feed ended with %r", task.exception())

    async def _deliver(self, subject: str, data: bytes) -> None:
        try:
            message = decode(data)
        except MessageError as exc:
            log.debug("skipping an unreadable event: %s", exc)
            return
        if message.subject != subject:  # e.g. a worker's "cancel" sent as a status
            log.debug("skipping a %s message sent on %s", message.subject, subject)
            return
        if self.deployment_id is not None and message.deployment_id != self.deployment_id:
            return
        # The server's start time is the time a message was stored; this is the event's.
        if self.by_event_time and self.start is not None and (
                datetime.fromisoformat(message.time) < self.start):
            return
        await self.deliver(message)

    async def _forget(self) -> None:
        name, self._consumer = self._consumer, None
        if name is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.js.delete_consumer(EVENTS_STREAM, name), 1.0)
