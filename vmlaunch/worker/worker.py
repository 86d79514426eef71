"""The NATS worker (`vm_launcher.py serve`): runs the lifecycle for each request of the
shared work queue (one durable pull consumer: each request is done once), one `Tracked`
observer following all its VMs. A request is acked when finished; heartbeats keep AckWait
away meanwhile, and a dead worker's request goes to another after AckWait. Unreadable
requests, and ones whose deliveries failed too often (a graceful stop's release is no
failure), go to `vm.create.deadletter`. A lost consumer or stream is recreated, else the
worker exits 3 with the reason. Custom data never appears in logs or events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from vmlaunch.azure.azcli import AzCli
from vmlaunch.bus.connection import WORKER_CONSUMER, close_quietly, connect, round_trip
from vmlaunch.bus.pacing import SharedBudget
from vmlaunch.bus.publish import NATS_ERRORS, CancelMemory, Publisher
from vmlaunch.bus.streams import RELEASES_BUCKET, consumer_exists, worker_subscription
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.schema.messages import Cancel, MessageError, Subject, decode
from vmlaunch.worker.jobs import Job, JobRunner
from vmlaunch.worker.settings import WorkerSettings

log = logging.getLogger("worker")

SERVICE_NAME = "vm-launcher"
SERVICE_VERSION = "1.0.0"
STATUS_SUBJECT = "vm-launcher.status"
FETCH_WAIT = 1.0  # the longest a stop waits for the fetch in progress
RECOVERY_ATTEMPTS = 5  # refusals in a row to recreate a lost consumer before exit 3


class Worker:
    """One worker process's NATS side: `start()`, then `stop()`, which is graceful and
    safe to call twice (`serve` runs it between them until a signal)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.az = AzCli(settings.az)
        self.observer = Tracked(self.az, interval=settings.track_interval)  # all its VMs
        self.counts: Counter[str] = Counter()
        self.ack_wait = settings.ack_wait
        self.cancels = CancelMemory()
        self._jobs: dict[asyncio.Task[None], Job] = {}
        self._nc: Client | None = None
        self._budget: SharedBudget | None = None
        self._service: Service | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopped = False
        self._hurry = asyncio.Event()
        self.broken = asyncio.Event()  # set, with `broken_reason`, when it cannot go on
        self.broken_reason = ""
        self._refusals = 0  # failed attempts in a row to recreate the consumer

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    def stats(self) -> dict[str, object]:
        return {"worker_id": self.worker_id, "in_flight": len(self._jobs),
                "completed": self.counts["completed"], "failed": self.counts["failed"],
                "cancelled": self.counts["cancelled"],
                "dead_lettered": self.counts["dead_lettered"],
                "concurrency": self.settings.concurrency}

    async def start(self) -> None:
        """Connect, create streams and the shared consumer if missing, start fetching."""
        self._nc = nc = await connect(
            self.settings.nats, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect)
        js = nc.jetstream()
        subscription, self.ack_wait = await worker_subscription(
            js, self.settings.nats, ack_wait=self.settings.ack_wait)
        self._budget = SharedBudget(js, self.settings.write_budget)
        self.observer.budget = self._budget  # every job's creates within the fleet's budget
        runner = JobRunner(nc, Publisher(nc, js), releases=await js.key_value(RELEASES_BUCKET),
                           az=self.az, observer=self.observer, cancels=self.cancels,
                           counts=self.counts, worker_id=self.worker_id,
                           max_deliveries=self.settings.max_deliveries,
                           private_key=self.settings.ssh_private_key, ack_wait=self.ack_wait,
                           adopt_untagged=self.settings.adopt_untagged,
                           allowed_extra_args=frozenset(self.settings.allow_extra_args))
        await nc.subscribe(Subject.CANCEL.value, cb=self._on_cancel)
        self._service = await add_service(
            nc, name=SERVICE_NAME, version=SERVICE_VERSION,
            description="Creates and verifies Azure VMs from vm.create.request",
            metadata={"worker_id": self.worker_id}, stats_handler=lambda _: self.stats())
        await self._service.add_endpoint(name="status", subject=STATUS_SUBJECT,
                                         handler=self._on_status)
        self._fetcher = asyncio.create_task(self._fetch_loop(js, subscription, runner),
                                            name="fetcher")
        log.info("worker %s serving %s (concurrency %d, ack wait %g s, write budget %s)",
                 self.worker_id, Subject.REQUEST.value, self.settings.concurrency,
                 self.ack_wait, ",".join(map(str, self.settings.write_budget)))

    async def stop(self) -> None:
        """Fetch nothing more; let work finish within the grace period, then cancel the
        rest (their az trees are killed) and release their requests for another worker."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._slot_free.set()
        if self._fetcher is not None:
            await asyncio.gather(self._fetcher, return_exceptions=True)
        if self._jobs:
            log.info("stopping: waiting up to %g s for %d request(s)", self.settings.grace,
                     len(self._jobs))
            finished = asyncio.ensure_future(asyncio.wait(list(self._jobs)))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait([finished, hurry], timeout=self.settings.grace,
                               return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            hurry.cancel()
        await self._cancel_all()
        if self._budget is not None:
            await self._budget.close()  # a throttle's pause still being shared
        await self.observer.close()
        if self._service is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._service.stop()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(*NATS_ERRORS):
                await round_trip(self._nc, 2)
            await close_quietly(self._nc)  # the server may be gone or restarting
        log.info("worker %s stopped (%s)", self.worker_id, json.dumps(self.stats()))

    def hurry(self) -> None:
        """End the grace period of a stop now (a second stop signal)."""
        self._hurry.set()

    async def _cancel_all(self) -> None:
        left = dict(self._jobs)
        for task, job in left.items():
            job.stop_reason = job.stop_reason or "shutdown"
            task.cancel()
        if left:
            log.info("stopping: released %d unfinished request(s)", len(left))
            await asyncio.gather(*left, return_exceptions=True)

    # --- fetching ------------------------------------------------------------------------

    async def _fetch_loop(self, js: JetStreamContext,
                          subscription: JetStreamContext.PullSubscription,
                          runner: JobRunner) -> None:
        while not self._stopping.is_set():
            if len(self._jobs) >= self.settings.concurrency:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                (msg,) = await subscription.fetch(1, timeout=FETCH_WAIT)
            except TimeoutError:
                continue  # nothing to do (or NATS is away: the client reconnects)
            except Exception as exc:  # e.g. the consumer or the stream was deleted
                subscription = await self._recover(js, subscription, exc)
                runner.ack_wait = self.ack_wait
                continue
            await self._take(msg, runner)

    async def _recover(self, js: JetStreamContext,
                       subscription: JetStreamContext.PullSubscription,
                       exc: Exception) -> JetStreamContext.PullSubscription:
        """After a failed fetch: recreate a lost consumer (or stream) and subscribe again.
        NATS being away is waited out; after RECOVERY_ATTEMPTS refusals in a row (not
        authorised, a stream this tool cannot use) the worker gives up: it exits 3."""
        log.warning("fetching requests failed (%r); checking the consumer", exc)
        await asyncio.sleep(FETCH_WAIT)
        try:
            if not await consumer_exists(js):
                log.warning("the consumer %s is gone; recreating it", WORKER_CONSUMER)
                old = subscription  # kept until replaced: fetching from it keeps failing
                subscription, self.ack_wait = await worker_subscription(
                    js, self.settings.nats, ack_wait=self.settings.ack_wait)
                with contextlib.suppress(*NATS_ERRORS):
                    await old.unsubscribe()
        except Exception as error:
            if _passing(error) or not (self._nc and self._nc.is_connected):
                return subscription  # NATS away, or a cluster electing a leader: try again
            self._refusals += 1
            if self._refusals >= RECOVERY_ATTEMPTS:
                self.broken_reason = (f"cannot fetch requests ({exc!r}) and cannot recreate "
                                      f"the consumer: {error or type(error).__name__}")
                self.broken.set()
                self._stopping.set()
            return subscription
        self._refusals = 0
        return subscription

    async def _take(self, msg: Msg, runner: JobRunner) -> None:
        """Start a job for a fetched request (or settle it at once)."""
        if self._stopping.is_set():  # fetched while stopping: give it back at once
            await runner.release(msg)
            return
        if await runner.settle_again(msg):
            return
        held = self._held(msg)
        if held is not None:  # AckWait passed while NATS was away: keep the work going
            held.msg = msg  # and ack this newer delivery when done
            held.reconnects = self._nc.stats["reconnects"]
            await runner.record_release(msg.metadata.sequence.stream)  # not a failure
            log.info("request %s came back while in flight here; continuing it",
                     msg.metadata.sequence.stream)
            return
        job = Job(msg=msg, deliveries=msg.metadata.num_delivered,
                  reconnects=self._nc.stats["reconnects"])
        task = asyncio.create_task(runner.handle(job), name=f"request-{id(msg)}")
        self._jobs[task] = job
        task.add_done_callback(self._job_done)

    def _held(self, msg: Msg) -> Job | None:
        seq = msg.metadata.sequence.stream
        return next((j for j in self._jobs.values()
                     if j.msg.metadata.sequence.stream == seq), None)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("request handler failed", exc_info=task.exception())

    # --- cancels, status, connection -----------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decode(msg.data)
        except MessageError as exc:
            log.warning("ignoring unreadable cancel: %s", exc)
            return
        if not isinstance(cancel.payload, Cancel):
            return
        self.cancels.add(cancel)
        for task, job in list(self._jobs.items()):
            if not job.launching or job.stop_reason is not None or job.request is None:
                continue  # not started yet (it checks the memory) or already finishing
            reason = self.cancels.match(job.request, cancel)
            if reason is not None:
                job.stop_reason, job.cancel_detail = "cancel", reason
                task.cancel()

    async def _on_status(self, request: Request) -> None:
        await request.respond(json.dumps(self.stats()).encode())

    async def _on_disconnect(self) -> None:
        if not self._stopped:
            log.warning("NATS connection lost; reconnecting (work in flight continues)")

    async def _on_reconnect(self) -> None:
        log.warning("NATS reconnected")


def _passing(error: Exception) -> bool:
    """A JetStream error that goes away by itself (no answer yet, no leader yet)."""
    return isinstance(error, TimeoutError | ServiceUnavailableError | NoRespondersError)
