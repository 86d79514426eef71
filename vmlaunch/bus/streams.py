"""JetStream streams, the KV buckets and the workers' shared consumer.

Whoever starts first creates them; nobody changes them unasked. An existing stream keeps
an administrator's settings (and a cluster's replicas) unless `--replicas` was given, and
a stream this tool cannot work with is an error, not something to overwrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from vmlaunch.bus.connection import (
    ACK_WAIT,
    DUPLICATE_WINDOW,
    EVENTS_MAX_AGE,
    EVENTS_STREAM,
    REQUESTS_STREAM,
    WORKER_CONSUMER,
    NatsSettings,
    NatsUnavailable,
    NatsUnreachable,
    StreamsMissing,
    connect,
)
from vmlaunch.errors import BusError, ExitCode
from vmlaunch.schema.messages import EVENT_SUBJECTS, Subject

log = logging.getLogger("streams")

# Graceful releases per request (key: its stream sequence), so that they do not count
# towards the dead-letter limit. Kept as long as an unsettled request can plausibly live.
RELEASES_BUCKET = "VM_RELEASES"
RELEASES_STREAM = f"KV_{RELEASES_BUCKET}"
RELEASES_MAX_AGE = EVENTS_MAX_AGE
# The last request generation per VM (key `<deployment>.<vm>`): it outlives state files, so
# a rerun after `rm state/*` still takes a generation never used. Kept for ever.
GENERATIONS_BUCKET = "VM_GENERATIONS"
# The fleet's shared write budget (pacing.py): one ledger of the latest VM writes. Kept a
# day after the last write; no window is longer.
PACING_BUCKET = "VM_PACING"
PACING_STREAM = f"KV_{PACING_BUCKET}"
PACING_MAX_AGE = 86400.0


class StreamMismatch(BusError, exit_code=ExitCode.CANNOT_RUN):
    """A stream exists with settings this tool cannot work with; an administrator must fix it."""


def _stream_configs() -> list[StreamConfig]:
    """The streams this tool needs, as it creates them (replicas are set by the caller)."""
    return [
        StreamConfig(
            name=REQUESTS_STREAM, subjects=[Subject.REQUEST.value],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW, max_msg_size=256 * 1024 + 4096),
        StreamConfig(
            name=EVENTS_STREAM, subjects=[s.value for s in EVENT_SUBJECTS],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=EVENTS_MAX_AGE, discard=DiscardPolicy.OLD, duplicate_window=120.0),
        _kv_config(RELEASES_BUCKET, max_age=RELEASES_MAX_AGE),
        _kv_config(GENERATIONS_BUCKET, max_age=None),
        _kv_config(PACING_BUCKET, max_age=PACING_MAX_AGE),
    ]


def _kv_config(bucket: str, *, max_age: float | None) -> StreamConfig:
    """A KV bucket's stream, laid out as nats-py's create_key_value does (history 1)."""
    return StreamConfig(
        name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, max_msgs_per_subject=1, max_age=max_age,
        discard=DiscardPolicy.NEW, allow_rollup_hdrs=True, deny_delete=True,
        allow_direct=True, duplicate_window=120.0)


async def ensure_streams(js: JetStreamContext, *, replicas: int | None = None) -> None:
    """Create the requests work queue, the events audit stream and the KV buckets (releases,
    generations, pacing) when missing, with `replicas` (default 1).

    An existing stream is never changed, except its replicas when `replicas` is given and
    differs: an administrator's settings (or a larger cluster's R3) stay. A stream this
    tool cannot work with (other retention, missing subjects) raises StreamMismatch.
    """
    for config in _stream_configs():
        await _ensure_stream(js, config, replicas=replicas)


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig, *,
                         replicas: int | None) -> None:
    try:
        existing = (await js.stream_info(wanted.name)).config
    except NotFoundError:
        try:
            await js.add_stream(dataclasses.replace(wanted, num_replicas=replicas or 1))
            return
        except BadRequestError:  # another process created it first: look at theirs
            existing = (await js.stream_info(wanted.name)).config
    _check_usable(existing, wanted)
    if replicas is not None and existing.num_replicas != replicas:
        log.warning("stream %s: replicas %s -> %d (--replicas)", wanted.name,
                    existing.num_replicas, replicas)
        await js.update_stream(dataclasses.replace(existing, num_replicas=replicas))


def _check_usable(existing: StreamConfig, wanted: StreamConfig) -> None:
    problems = []
    if existing.retention != wanted.retention:
        problems.append(f"retention is {_text(existing.retention)}, not "
                        f"{_text(wanted.retention)}")
    missing = sorted(set(wanted.subjects or []) - set(existing.subjects or []))
    if missing:
        problems.append(f"subjects lack {', '.join(missing)}")
    if problems:
        raise StreamMismatch(f"stream {wanted.name} exists but {'; '.join(problems)}; "
                             "an administrator must fix or delete it")


def _text(value: object) -> str:
    """An API enum's wire value ('workqueue'), a plain string as it is."""
    return str(getattr(value, "value", value))


async def ensure_worker_consumer(js: JetStreamContext, *, ack_wait: float = ACK_WAIT) -> float:
    """The one durable pull consumer that all workers share; returns its actual AckWait.

    `ack_wait` applies only when this call creates the consumer (tests shorten it); an
    existing consumer keeps its own, and workers pace their heartbeats by the returned value.
    """
    config = ConsumerConfig(
        durable_name=WORKER_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        # Workers count deliveries themselves and dead-letter past their limit, so the
        # server must never silently drop a request.
        max_deliver=-1,
        max_ack_pending=1000,
    )
    try:
        info = await js.consumer_info(REQUESTS_STREAM, WORKER_CONSUMER)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):  # another worker was quicker
            await js.add_consumer(REQUESTS_STREAM, config)
        info = await js.consumer_info(REQUESTS_STREAM, WORKER_CONSUMER)
    return info.config.ack_wait or ack_wait


async def worker_subscription(js: JetStreamContext, settings: NatsSettings, *,
                              ack_wait: float) -> tuple[JetStreamContext.PullSubscription, float]:
    """Streams (see `prepare_streams`) and the shared consumer (created when missing), a
    pull subscription bound to it, and the consumer's actual AckWait."""
    await prepare_streams(js, settings)
    actual = await ensure_worker_consumer(js, ack_wait=ack_wait)
    subscription = await js.pull_subscribe_bind(durable=WORKER_CONSUMER, stream=REQUESTS_STREAM)
    return subscription, actual


async def consumer_exists(js: JetStreamContext) -> bool:
    """Whether the shared consumer (and so its stream) still exists."""
    try:
        await js.consumer_info(REQUESTS_STREAM, WORKER_CONSUMER)
    except NotFoundError:
        return False
    return True


async def prepare_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create or align the streams, or with `manage_streams` off only check that they
    exist (StreamsMissing naming them), for users that may not manage streams."""
    missing = []
    try:
        if settings.manage_streams:
            await ensure_streams(js, replicas=settings.replicas)
            return
        for stream in (REQUESTS_STREAM, EVENTS_STREAM):
            with contextlib.suppress(NotFoundError):
                await js.stream_info(stream)
                continue
            missing.append(stream)
    except (nats.errors.Error, TimeoutError) as exc:
        raise NatsUnreachable(f"NATS at {settings.shown} has no usable JetStream ({exc!r}; a "
                              "user that may not manage streams needs --no-manage-streams)"
                              ) from None
    if missing:
        raise StreamsMissing(f"stream(s) {', '.join(missing)} do not exist on NATS at "
                             f"{settings.shown} (--no-manage-streams); an admin creates "
                             "them with: python orchestrator.py streams")


async def provision_streams(settings: NatsSettings) -> None:
    """As an admin: create or align the streams and the workers' consumer (NatsUnavailable
    with the reason when that cannot be done)."""
    nc = await connect(settings)
    try:
        js = nc.jetstream()
        await ensure_streams(js, replicas=settings.replicas)
        await ensure_worker_consumer(js)
    except (nats.errors.Error, TimeoutError) as exc:
        raise NatsUnavailable(f"cannot create the streams on NATS at {settings.shown} "
                              f"({exc!r})") from None
    finally:
        await nc.close()
