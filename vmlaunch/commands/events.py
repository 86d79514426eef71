"""`events`: the audit trail from the events stream, from a NATS URL or from the embedded
server's store under the state directory (through the running deploy's server if any)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from nats.aio.client import Client

from vmlaunch.bus.auth import write_embedded_auth
from vmlaunch.bus.connection import NatsSettings, NatsUnavailable, close_quietly, connect
from vmlaunch.bus.embedded import EmbeddedNats, embedded_client
from vmlaunch.bus.feed import EventFeed
from vmlaunch.bus.publish import describe
from vmlaunch.bus.streams import StreamMismatch, prepare_streams
from vmlaunch.commands.common import err, say
from vmlaunch.errors import ExitCode
from vmlaunch.host.stopsignals import on_stop_signals
from vmlaunch.schema.messages import Message, encode

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str) -> datetime:
    """`90s`, `10m`, `2h`, `1d` ago, or an ISO-8601 time (UTC unless it says otherwise)."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    when = datetime.fromisoformat(text.strip())
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def running_embedded_url(store: Path) -> str | None:
    """The URL of a live embedded server on this store (a deploy in progress), if any."""
    for ports in (store / "ports").glob("*.ports"):
        pid = ports.stem.rsplit("_", 1)[-1]
        with contextlib.suppress(ValueError, OSError, KeyError, IndexError, psutil.Error):
            if psutil.Process(int(pid)).name().startswith("nats-server"):
                return json.loads(ports.read_text())["nats"][0]
    return None


def event_line(message: Message) -> str:
    label, detail = describe(message)
    attempt = f" [attempt {message.attempt}]" if message.attempt else ""
    return (f"{message.time} {message.deployment_id}/{message.vm_name or '-'} {label:<10} "
            f"{detail}{attempt} ({message.source or '?'})")


async def _embedded_settings(stack: contextlib.AsyncExitStack,
                             store: Path) -> NatsSettings | None:
    """The running deploy's embedded server, else one started on its store, else None."""
    url = running_embedded_url(store)
    if url is None:
        if not (store / "jetstream").is_dir():
            return None
        config, _ = write_embedded_auth(store)  # a fresh secret for our own server
        url = (await stack.enter_async_context(EmbeddedNats(store, config=config))).url
    return embedded_client_settings(url, store, name="vm-launch-events")


def embedded_client_settings(url: str, store: Path, *, name: str) -> NatsSettings | None:
    """Settings for the embedded server with the secret from its 0600 file (None, with a
    message, when this user cannot read it: it belongs to another user's deploy)."""
    try:
        return embedded_client(url, store, name=name)
    except OSError as exc:
        err(f"error: cannot read the embedded server's secret: {exc}")
        return None


async def events(*, nats: NatsSettings | None, store: Path, deployment_id: str | None,
                 vms: tuple[str, ...], since: datetime | None, follow: bool,
                 json_out: bool) -> int:
    """Print the audit trail; without `follow`, stop once caught up."""
    async with contextlib.AsyncExitStack() as stack:
        nats = nats or await _embedded_settings(stack, store)
        if nats is None:
            err(f"error: no --nats-url and no embedded store at {store}")
            return ExitCode.CANNOT_RUN
        try:
            nc: Client = await connect(nats)
            stack.push_async_callback(close_quietly, nc)
            await prepare_streams(nc.jetstream(), nats)
        except (NatsUnavailable, StreamMismatch) as exc:
            err(f"error: {exc}")
            return ExitCode.CANNOT_RUN

        async def show(message: Message) -> None:
            if not vms or message.vm_name in vms:
                if json_out:
                    print(encode(message).decode(), flush=True)
                else:
                    say(event_line(message))

        feed = EventFeed(nc, show, start=since, deployment_id=deployment_id)
        stop = asyncio.Event()
        reader = asyncio.create_task(feed.run())
        waiter = asyncio.create_task(stop.wait() if follow else feed.caught_up.wait())
        with on_stop_signals(lambda _: stop.set()):
            try:
                await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                await feed.stop(reader)
    return ExitCode.OK
