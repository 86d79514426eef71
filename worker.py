"""The NATS worker (`vm_launcher.py serve`): takes create requests from the shared work
queue and runs the launch pipeline for each, publishing every event it makes.

Many workers on many machines share one durable pull consumer, so each request is done
once. A request is acknowledged only when finished (ready or finally failed); while it
runs, in-progress heartbeats keep AckWait away, and a worker that dies lets the request
go to another worker after AckWait. A request that cannot be read, or that was delivered
too often, goes to `vm.create.deadletter` with the reason. Custom data never appears in
logs or events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
from collections import Counter
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from azcli import AzCli
from eventbus import NATS_ERRORS, CancelMemory, Publisher
from jobrunner import Job, JobRunner
from messages import Cancel, MessageError, Subject, decode
from natsconn import (
    ACK_WAIT,
    REQUESTS_STREAM,
    WORKER_CONSUMER,
    NatsSettings,
    connect,
    ensure_worker_consumer,
    prepare_streams,
)
from speccheck import allow_list_problems

log = logging.getLogger("worker")

SERVICE_NAME = "vm-launcher"
SERVICE_VERSION = "1.0.0"
STATUS_SUBJECT = "vm-launcher.status"
FETCH_WAIT = 1.0  # the longest a stop waits for the fetch in progress


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything `serve` takes; checks itself (ValueError listing every problem)."""

    nats: NatsSettings
    worker_id: str = field(default_factory=default_worker_id)
    az: str = "az"
    concurrency: int = 4
    ssh_private_key: str | None = None
    grace: float = 30.0
    max_deliveries: int = 5
    ack_wait: float = ACK_WAIT
    adopt_untagged: bool = False  # adopt (never delete) a same-named VM with no deployment tag
    # The only flags a request's extra_args may pass to az vm create (--allow-extra-arg).
    allow_extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.concurrency < 1, "concurrency must be at least 1"),
            (self.grace < 0, "grace must not be negative"),
            (self.max_deliveries < 1, "max_deliveries must be at least 1"),
            (self.ack_wait < 1, "ack_wait must be at least 1 second"),
            (not self.worker_id, "worker_id must not be empty"),
        ) if bad]
        problems += [f"allow_extra_args: {problem}"
                     for problem in allow_list_problems(self.allow_extra_args)]
        if problems:
            raise ValueError("Worker settings: " + "; ".join(problems) + ".")


class Worker:
    """One worker process's NATS side: `start()`, then `stop()`, which is graceful and
    safe to call twice (`serve` runs it between them until a signal)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.az = AzCli(settings.az)
        self.counts: Counter[str] = Counter()
        self.ack_wait = settings.ack_wait
        self.cancels = CancelMemory()
        self._jobs: dict[asyncio.Task[None], Job] = {}
        self._nc: Client | None = None
        self._service: Service | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopped = False
        self._hurry = asyncio.Event()

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
        await prepare_streams(js, self.settings.nats)
        self.ack_wait = await ensure_worker_consumer(js, ack_wait=self.settings.ack_wait)
        subscription = await js.pull_subscribe_bind(durable=WORKER_CONSUMER,
                                                    stream=REQUESTS_STREAM)
        runner = JobRunner(nc, Publisher(nc, js), az=self.az, cancels=self.cancels,
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
        self._fetcher = asyncio.create_task(self._fetch_loop(subscription, runner),
                                            name="fetcher")
        log.info("worker %s serving %s (concurrency %d, ack wait %g s)", self.worker_id,
                 Subject.REQUEST.value, self.settings.concurrency, self.ack_wait)

    async def stop(self) -> None:
        """Fetch nothing more; let work finish within the grace period, then cancel the
        rest (their az trees are killed) and nak their requests for another worker."""
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
        if self._service is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._service.stop()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(*NATS_ERRORS):
                await self._nc.flush(timeout=2)
            await self._nc.close()
        log.info("worker %s stopped (%s)", self.worker_id, json.dumps(self.stats()))

    def hurry(self) -> None:
        """End the grace period of a stop now (a second SIGTERM/SIGINT)."""
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

    async def _fetch_loop(self, subscription: JetStreamContext.PullSubscription,
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
            except Exception as exc:  # keep serving whatever happens
                log.warning("fetching requests failed (%r); trying again", exc)
                await asyncio.sleep(FETCH_WAIT)
                continue
            if self._stopping.is_set():  # fetched while stopping: give it back at once
                await runner.settle(msg, "nak")
                continue
            if await runner.settle_again(msg):
                continue
            held = self._held(msg)
            if held is not None:  # AckWait passed while NATS was away: keep the work going
                held.msg = msg  # and ack this newer delivery when done
                log.info("request %s came back while in flight here; continuing it",
                         msg.metadata.sequence.stream)
                continue
            job = Job(msg=msg, deliveries=msg.metadata.num_delivered)
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


async def serve(settings: WorkerSettings) -> int:
    """Run a worker until SIGTERM/SIGINT (a second one ends the grace period at once).
    0 after a graceful stop, 3 if it cannot start."""
    if shutil.which(settings.az) is None:
        log.error("cannot serve: the az executable %r was not found", settings.az)
        return 3
    stop = asyncio.Event()
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: worker.hurry() if stop.is_set() else stop.set())
    try:
        await worker.start()
    except Exception as exc:  # NatsUnavailable, no JetStream, not authorised, ...
        log.error("cannot serve: %s", exc or type(exc).__name__)
        await worker.stop()
        return 3
    try:
        await stop.wait()
        log.info("stop requested; fetching nothing more")
    finally:
        await worker.stop()
    return 0
