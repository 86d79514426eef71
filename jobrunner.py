"""One fetched request while a worker holds it, from decoding to settling.

A request is read and checked, then dead-lettered, reported cancelled, or launched with
in-progress heartbeats; it is settled (ack, nak or term) exactly when that ends. How each
was settled is remembered by stream sequence: a request whose ack was lost while NATS was
away comes back and is settled again, not redone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from azcli import AzCli
from eventbus import NATS_ERRORS, CancelMemory, Publisher, dead_letter, describe
from lease import Fenced, Lease
from messages import CreateRequest, Message, MessageError, Subject, decode
from pipeline import Launch, Outcome, Reporter
from vmspec import VMSpec

log = logging.getLogger("worker")  # these lines are the worker's, as operators know them

SETTLED_MEMORY = 10_000  # finished requests remembered, to settle a redelivery again


@dataclass
class Job:
    """One fetched request while this worker holds it."""

    msg: Msg
    deliveries: int
    request: Message | None = None
    report: Reporter | None = None
    attempt: int = 1
    launching: bool = False
    stop_reason: str | None = None  # "cancel" or "shutdown"
    cancel_detail: str = ""
    lease: Lease | None = None


class JobRunner:
    """Runs one worker's jobs on its connection; counts how they end in `counts`."""

    def __init__(self, nc: Client, publisher: Publisher, *, az: AzCli, cancels: CancelMemory,
                 counts: Counter[str], worker_id: str, max_deliveries: int,
                 private_key: str | None, ack_wait: float) -> None:
        self._nc, self._publisher = nc, publisher
        self.az, self.cancels, self.counts = az, cancels, counts
        self.worker_id, self.max_deliveries = worker_id, max_deliveries
        self.private_key, self.ack_wait = private_key, ack_wait
        self._settled: OrderedDict[int, str] = OrderedDict()

    async def handle(self, job: Job) -> None:
        try:
            await self._process(job)
        except asyncio.CancelledError:
            if job.stop_reason != "shutdown":
                raise
            await self.settle(job.msg, "nak")  # another worker (or a restart) takes it

    async def settle_again(self, msg: Msg) -> bool:
        """Settle a request finished here as it was settled then; False if it was not."""
        how = self._settled.get(msg.metadata.sequence.stream)
        if how is None:
            return False
        log.info("request %s came back after it was finished here; settling it again",
                 msg.metadata.sequence.stream)
        await self.settle(msg, how)
        return True

    async def settle(self, msg: Msg, how: str, **kwargs: float) -> None:
        """ack / nak / term, flushed; if NATS is away the request comes back after AckWait."""
        if how != "nak":
            self._settled[msg.metadata.sequence.stream] = how
            while len(self._settled) > SETTLED_MEMORY:
                self._settled.popitem(last=False)
        try:
            await getattr(msg, how)(**kwargs)
            await self._nc.flush(timeout=5)
        except NATS_ERRORS as exc:
            log.warning("could not %s request (%s); it returns after AckWait", how,
                        type(exc).__name__)

    async def _process(self, job: Job) -> None:
        try:
            request = decode(job.msg.data)
            if not isinstance(request.payload, CreateRequest):
                raise MessageError(f"expected a {Subject.REQUEST.value} message, got "
                                   f"{request.type.value}", field="type")
        except MessageError as exc:
            await self._dead_letter(job, f"unreadable request: {exc}")
            return
        job.request = request
        job.report = Reporter(self._emitter(job), deployment_id=request.deployment_id,
                              vm_name=request.payload.spec.name, source=self.worker_id,
                              id_seed=f"{request.event_id}/{job.deliveries}",
                              generation=request.generation)
        if job.deliveries > self.max_deliveries:
            await self._dead_letter(job, f"delivered {job.deliveries} times, more than the "
                                    f"limit of {self.max_deliveries}", request=request)
        elif (reason := self.cancels.match(request)) is not None:
            job.cancel_detail = reason
            await self._finish_cancelled(job)
        else:
            await self._launch(job, request.payload.spec)

    async def _launch(self, job: Job, spec: VMSpec) -> None:
        assert job.report is not None and job.request is not None
        request = job.request
        job.lease = Lease(self.ack_wait, cancelled=lambda: self.cancels.match(request))
        launch = Launch(spec, az=self.az, report=job.report, private_key=self.private_key,
                        fence=job.lease)
        heartbeat = asyncio.create_task(self._heartbeat(job))
        job.launching = True
        try:
            result = await launch.run()
        except asyncio.CancelledError:
            if job.stop_reason != "cancel":
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._finish_cancelled(job)
            return
        except Fenced as exc:
            await self._fenced(job, exc)
            return
        except Exception:
            log.exception("launch of %s crashed; releasing the request", spec.name)
            await self.settle(job.msg, "nak", delay=self.ack_wait / 3)
            return
        finally:
            job.launching = False
            heartbeat.cancel()
        self.counts["completed" if result.outcome is Outcome.READY else "failed"] += 1
        await self.settle(job.msg, "ack")

    async def _fenced(self, job: Job, exc: Fenced) -> None:
        """A known cancel ends the request; a lapsed lease leaves it unsettled: it is (or
        will be) someone else's after its AckWait."""
        assert job.request is not None
        reason = self.cancels.match(job.request)
        if reason is not None:
            job.cancel_detail = reason
            await self._finish_cancelled(job)
            return
        log.warning("stopping %s without creating or deleting it: %s", job.request.vm_name,
                    exc)
        self.counts["fenced"] += 1

    async def _finish_cancelled(self, job: Job) -> None:
        assert job.report is not None
        await job.report.status("cancelled", f"cancelled: {job.cancel_detail}",
                                attempt=job.attempt)
        self.counts["cancelled"] += 1
        await self.settle(job.msg, "term")

    async def _dead_letter(self, job: Job, reason: str, *,
                           request: Message | None = None) -> None:
        await self._emitter(job)(dead_letter(
            job.msg.data, reason=reason, request=request, deliveries=job.deliveries,
            source=self.worker_id, seq=job.msg.metadata.sequence.stream))
        self.counts["dead_lettered"] += 1
        await self.settle(job.msg, "term")

    def _emitter(self, job: Job) -> Callable[[Message], Awaitable[None]]:
        async def emit(message: Message) -> None:
            job.attempt = max(job.attempt, message.attempt)
            label, detail = describe(message)
            log.info("%s/%s %s: %s%s", message.deployment_id, message.vm_name or "-", label,
                     detail, f" [attempt {message.attempt}]" if message.attempt else "")
            await self._publisher.publish(message)
        return emit

    async def _heartbeat(self, job: Job) -> None:
        """In-progress every AckWait/3; the lease is renewed only once the server has it."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            sent_at = time.monotonic()
            with contextlib.suppress(*NATS_ERRORS):
                if await self._confirmed(job.msg.in_progress) and job.lease is not None:
                    job.lease.renew(sent_at)

    async def _confirmed(self, send: Callable[[], Awaitable[None]]) -> bool:
        """Send, then flush on the same connection. While reconnecting, nats-py buffers the
        send and its flush returns at once without a round trip: that confirms nothing."""
        nc = self._nc
        reconnects = nc.stats["reconnects"]
        if not nc.is_connected:
            return False
        await send()
        await nc.flush(timeout=self.ack_wait / 3)
        return nc.is_connected and nc.stats["reconnects"] == reconnects
