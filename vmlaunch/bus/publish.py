"""Events on the bus: publishing them, showing them, and the few a worker builds itself.

`Publisher` is how the worker and the manual launch put events on the events stream: the
event id goes in `Nats-Msg-Id`, so the server drops a re-published duplicate, and a
publish is retried while NATS is briefly away. `describe` and `progress_line` turn an
event into text for logs and terminals. `CancelMemory` keeps recent cancels;
`dead_letter` builds the event for a request that cannot be processed. None of them
ever shows custom data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from vmlaunch.bus.connection import REQUESTS_STREAM
from vmlaunch.schema.messages import (
    Cancel,
    CloudInitComplete,
    Complete,
    DeadLetter,
    Failed,
    Message,
    MessageError,
    SshVerified,
    Status,
    Subject,
    encode,
    stable_event_id,
)
from vmlaunch.schema.wirejson import parse_json, redacted_excerpt, safe_text

log = logging.getLogger("eventbus")

NATS_ERRORS = (nats.errors.Error, TimeoutError)
CANCEL_MEMORY = 600.0  # seconds a cancel also drops matching requests fetched later
CANCELS_KEPT = 8  # per VM: a rerun's cancels, not an unbounded list


def describe(message: Message) -> tuple[str, str]:
    """A short label and a one-line detail for an event; never shows custom data."""
    p = message.payload
    if isinstance(p, Status):
        return p.state, p.detail
    if isinstance(p, Complete):
        return "complete", (f"public IP {p.public_ip or '-'}, private IP {p.private_ip or '-'} "
                            f"after {p.duration_seconds:.1f} s")
    if isinstance(p, Failed):
        return "failed", f"{p.error_code}: {p.message}" + (" (final)" if p.final else "")
    if isinstance(p, SshVerified):
        return "ssh-ok", f"ssh {p.user}@{p.ip}:{p.port} answered"
    if isinstance(p, CloudInitComplete):
        return "cloud-init", f"{p.result}: {p.detail}"
    if isinstance(p, DeadLetter):
        return "deadletter", f"{p.reason} (delivered {p.deliveries} times)"
    if isinstance(p, Cancel):
        return "cancel", p.reason
    return "request", f"create {p.spec.name} ({p.spec.size}) in {p.spec.resource_group}"


def progress_line(message: Message) -> str:
    """`13:04:17 vm1 creating  az vm create vm1 (...) [attempt 1]`, in local time."""
    when = datetime.fromisoformat(message.time.replace("Z", "+00:00")).astimezone()
    label, detail = describe(message)
    attempt = f" [attempt {message.attempt}]" if message.attempt else ""
    return f"{when:%H:%M:%S} {message.vm_name or '-'} {label:<9} {detail}{attempt}"


class Publisher:
    """Publishes events to the events stream, the event id as `Nats-Msg-Id` (the server
    drops duplicates). Retries with backoff while NATS is away; gives up only when the
    connection is closed or after `give_up_after` seconds (None: never)."""

    def __init__(self, nc: Client, js: JetStreamContext, *,
                 give_up_after: float | None = None) -> None:
        self._nc, self._js = nc, js
        self.give_up_after = give_up_after

    async def publish(self, message: Message) -> bool:
        data, headers = encode(message), {"Nats-Msg-Id": message.event_id}
        deadline = None if self.give_up_after is None else time.monotonic() + self.give_up_after
        pause = 0.2
        while True:
            try:
                await self._js.publish(message.subject, data, headers=headers, timeout=5.0)
                return True
            except NATS_ERRORS as exc:
                if self._nc.is_closed or (deadline is not None and time.monotonic() > deadline):
                    log.warning("could not publish %s for %s: %s", message.subject,
                                message.vm_name, type(exc).__name__)
                    return False
                log.debug("publish %s failed (%s); retrying", message.subject, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


class CancelMemory:
    """Recent cancels: a request of a cancelled generation, or published before a cancel
    that names none, is dropped even when it is fetched after it; a rerun's request (the
    next generation, or published after it) is served. Generations first: the clocks of
    the hosts that wrote the two messages need not agree."""

    def __init__(self, keep: float = CANCEL_MEMORY) -> None:
        self.keep = keep
        # (deployment, vm) -> the last few cancels: (generation, time, reason, when heard)
        self._cancels: dict[tuple[str, str], list[tuple[int, str, str, float]]] = {}

    def add(self, cancel: Message) -> None:
        heard = self._cancels.setdefault((cancel.deployment_id, cancel.vm_name), [])
        heard.append((cancel.generation, cancel.time, cancel.payload.reason, time.monotonic()))
        del heard[:-CANCELS_KEPT]

    def match(self, request: Message, cancel: Message | None = None) -> str | None:
        """The reason when `request` is cancelled (by `cancel`, or by any remembered one)."""
        now = time.monotonic()
        self._cancels = {key: recent for key, heard in self._cancels.items()
                         if (recent := [c for c in heard if now - c[3] < self.keep])}
        for vm_name in (request.vm_name, ""):
            key = (request.deployment_id, vm_name)
            if cancel is not None and key != (cancel.deployment_id, cancel.vm_name):
                continue
            for generation, when, reason, _ in reversed(self._cancels.get(key, [])):
                if (request.generation <= generation if generation and request.generation
                        else request.time <= when):
                    return reason
        return None


def dead_letter(data: bytes, *, reason: str, request: Message | None, deliveries: int,
                source: str, seq: int) -> Message:
    """The dead letter of a request (`request` when it could be read); its id is stable
    per delivery, its excerpt never holds custom data, and whatever the raw bytes it
    encodes (its reason and ids are made safe)."""
    return Message(
        deployment_id=request.deployment_id if request else _guess_deployment(data),
        vm_name=request.vm_name if request else "",
        generation=request.generation if request else 0,  # a rerun's VM is not this one
        payload=DeadLetter(reason=safe_text(reason), subject=Subject.REQUEST.value,
                           deliveries=deliveries, excerpt=redacted_excerpt(data)),
        source=source, event_id=stable_event_id(REQUESTS_STREAM, seq, deliveries, "deadletter"),
    )


def _guess_deployment(data: bytes) -> str:
    """The raw request's deployment id when it is a short printable string, else unknown."""
    try:
        body = parse_json(data)
    except MessageError:
        return "unknown"
    value = body.get("deployment_id") if isinstance(body, dict) else None
    if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 200:
        return value  # isprintable() is False for lone surrogates and control characters
    return "unknown"
