"""One fetched request while a worker holds it, from decoding to settling.

A request is read and checked, then dead-lettered, reported cancelled, or launched with
in-progress heartbeats; it is settled (ack, nak or term) exactly when that ends, and no
exception leaves it unsettled. How each was settled is remembered by stream sequence: a
request whose ack was lost while NATS was away comes back and is settled again, not redone.

The dead-letter limit counts failed deliveries only: deliveries that ended without a
failure are counted in `releases.py` and taken off.
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
from nats.js.kv import KeyValue

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.bus.connection import round_trip
from vmlaunch.bus.publish import NATS_ERRORS, CancelMemory, Publisher, dead_letter, describe
from vmlaunch.lifecycle.lease import Fenced, Lease
from vmlaunch.lifecycle.machine import Lifecycle, Outcome
from vmlaunch.lifecycle.observe import Observer
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.schema.messages import CreateRequest, Message, MessageError, Subject, decode
from vmlaunch.schema.speccheck import deployment_id_problem, show
from vmlaunch.schema.vmspec import VMSpec, spec_problems
from vmlaunch.worker.releases import Releases

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
    settled: bool = False
    lease: Lease | None = None
    reconnects: int = 0  # the connection's reconnects when `msg` was delivered


class JobRunner:
    """Runs one worker's jobs on its connection; counts how they end in `counts`."""

    def __init__(self, nc: Client, publisher: Publisher, *, releases: KeyValue, az: AzCli,
                 observer: Observer, cancels: CancelMemory, counts: Counter[str], worker_id: str,
                 max_deliveries: int, private_key: str | None, ack_wait: float,
                 adopt_untagged: bool = False,
                 allowed_extra_args: frozenset[str] = frozenset()) -> None:
        self._nc, self._publisher, self._releases = nc, publisher, Releases(releases)
        self.az, self.cancels, self.counts = az, cancels, counts
        self.observer = observer  # one tracker for every VM of this worker
        self.worker_id, self.max_deliveries = worker_id, max_deliveries
        self.private_key, self.ack_wait = private_key, ack_wait
        self.adopt_untagged = adopt_untagged  # the worker's option, never a request's
        self.allowed_extra_args = allowed_extra_args
        self._settled: OrderedDict[int, str] = OrderedDict()

    async def handle(self, job: Job) -> None:
        try:
            await self._process(job)
        except asyncio.CancelledError:
            if job.stop_reason != "shutdown":
                raise
            if not job.settled:
                await self.give_back(job)
        except Exception:  # a bug must not leave the request unsettled for ever
            log.exception("handling request %s failed; it returns after AckWait/3",
                          job.msg.metadata.sequence.stream)
            if not job.settled:
                await self._settle(job, "nak", delay=self.ack_wait / 3)

    async def give_back(self, job: Job) -> None:
        """On a graceful stop: release the request if it is surely still ours. Once the
        lease has lapsed, or the connection was lost since the delivery (a restarted server
        redelivers what was pending, heartbeats or not), the server may have given it to
        another worker, and a nak would then hand it to a third one while the second still
        drives the VM (two creates)."""
        seq = job.msg.metadata.sequence.stream
        held, ours = job.lease is None or job.lease.held(), self._on_delivery_connection(job)
        if self._nc.is_connected:  # given back or not, this delivery ended without a failure
            await self.record_release(seq)
        if not held:
            why = "its lease lapsed"
        elif not ours:
            why = "NATS was lost since it was delivered"
        # Again after the record's round trips: nats-py buffers a nak sent while it
        # reconnects and counts the reconnect only once it is back.
        elif self._on_delivery_connection(job):
            await self.settle(job.msg, "nak")  # another worker (or a restart) takes it
            return
        else:
            why = "NATS was lost while it was given back"
        log.info("request %s: %s, so it is not given back (the server redelivers it)",
                 seq, why)

    def _on_delivery_connection(self, job: Job) -> bool:
        return self._nc.is_connected and self._nc.stats["reconnects"] == job.reconnects

    async def release(self, msg: Msg) -> None:
        """Give a request back on a graceful stop; recorded first, so that this delivery
        does not count towards the dead-letter limit."""
        await self.record_release(msg.metadata.sequence.stream)
        await self.settle(msg, "nak")

    async def record_release(self, seq: int) -> None:
        """Count one delivery of request `seq` that ended without a failure."""
        await self._releases.record(seq)

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
            await round_trip(self._nc, 5)
        except NATS_ERRORS as exc:
            log.warning("could not %s request (%s); it returns after AckWait", how,
                        type(exc).__name__)

    async def _process(self, job: Job) -> None:
        seq = job.msg.metadata.sequence.stream
        counted = job.deliveries - await self._releases.count(seq)
        request, problem = _read(job.msg.data)
        if counted > self.max_deliveries:  # checked first: even a request that crashes us
            await self._dead_letter(job, f"delivered {job.deliveries} times ({counted} not "
                                    f"ended by a graceful stop), more than the limit of "
                                    f"{self.max_deliveries}", request=request)
            return
        if request is None:
            await self._dead_letter(job, f"unreadable request: {problem}")
            return
        job.request = request
        job.report = Reporter(self._emitter(job), deployment_id=request.deployment_id,
                              vm_name=request.payload.spec.name, source=self.worker_id,
                              id_seed=f"{request.event_id}/{job.deliveries}",
                              generation=request.generation)
        if (reason := self.cancels.match(request)) is not None:
            job.cancel_detail = reason
            await self._finish_cancelled(job)
        elif problems := self._problems(request):
            await self._refuse(job, request.payload.spec, problems)
        else:
            await self._launch(job, request.payload.spec)

    def _problems(self, request: Message) -> list[str]:
        """Why this worker will not run a request: its spec or its deployment id (a tag
        value on the az argv) is unsafe, its extra args use a flag not allowed here, or
        its envelope names another VM than its spec (cancels go by the envelope's name)."""
        why = deployment_id_problem(request.deployment_id)
        name = request.payload.spec.name
        other = (f"vm_name {show(request.vm_name)} is not the spec's name {show(name)}"
                 if request.vm_name != name else None)
        return [*(p for p in (why, other) if p),
                *spec_problems(request.payload.spec, files_are_paths=False,
                               allowed_extra_args=self.allowed_extra_args)]

    async def _refuse(self, job: Job, spec: VMSpec, problems: list[str]) -> None:
        """Fail for good without a single az call; the sender must fix the request."""
        assert job.report is not None
        error = AzError("InvalidRequest", "; ".join(problems), FailureKind.PERMANENT)
        await job.report.failed(error, attempt=1, final=True, spec=spec)
        self.counts["failed"] += 1
        await self._settle(job, "ack")

    async def _launch(self, job: Job, spec: VMSpec) -> None:
        assert job.report is not None and job.request is not None
        request = job.request
        job.lease = Lease(self.ack_wait, cancelled=lambda: self.cancels.match(request))
        launch = Lifecycle(spec, az=self.az, report=job.report, observer=self.observer,
                           private_key=self.private_key, adopt_untagged=self.adopt_untagged,
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
            await self._settle(job, "nak", delay=self.ack_wait / 3)
            return
        finally:
            job.launching = False
            heartbeat.cancel()
        self.counts["completed" if result.outcome is Outcome.READY else "failed"] += 1
        await self._settle(job, "ack")

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
        await self.record_release(job.msg.metadata.sequence.stream)  # not a failure

    async def _finish_cancelled(self, job: Job) -> None:
        assert job.report is not None
        await job.report.status("cancelled", f"cancelled: {job.cancel_detail}",
                                attempt=job.attempt)
        self.counts["cancelled"] += 1
        await self._settle(job, "term")

    async def _dead_letter(self, job: Job, reason: str, *,
                           request: Message | None = None) -> None:
        await self._emitter(job)(dead_letter(
            job.msg.data, reason=reason, request=request, deliveries=job.deliveries,
            source=self.worker_id, seq=job.msg.metadata.sequence.stream))
        self.counts["dead_lettered"] += 1
        await self._settle(job, "term")

    async def _settle(self, job: Job, how: str, **kwargs: float) -> None:
        job.settled = True
        await self.settle(job.msg, how, **kwargs)

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
        await round_trip(nc, self.ack_wait / 3)
        return nc.is_connected and nc.stats["reconnects"] == reconnects


def _read(data: bytes) -> tuple[Message | None, str]:
    """The request in `data`, or None and why it cannot be used."""
    try:
        request = decode(data)
    except MessageError as exc:
        return None, str(exc)
    except Exception as exc:  # decode must not raise anything else; if it does, the
        log.exception("decoding a request failed")  # request is still unreadable
        return None, f"decoding failed ({type(exc).__name__})"
    if not isinstance(request.payload, CreateRequest):
        return None, f"type: expected a {Subject.REQUEST.value} message, got {request.type.value}"
    return request, ""
