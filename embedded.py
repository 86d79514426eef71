"""Embedded mode: a private nats-server plus local `vm_launcher.py serve` workers.

Used by `deploy` when no NATS URL is given and a nats-server binary exists. The server
keeps its JetStream store under the state directory (so a rerun resumes from its events)
and listens on a free loopback port. Every child is in its own session (a Ctrl-C on the
terminal reaches only the orchestrator, which then stops them in order) and carries
PR_SET_PDEATHSIG, so even a SIGKILL of the orchestrator leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from natsconn import EmbeddedNats
from procs import die_with_parent

log = logging.getLogger("embedded")

VM_LAUNCHER = Path(__file__).resolve().parent / "vm_launcher.py"


@dataclass(frozen=True)
class WorkerOptions:
    count: int = 2
    concurrency: int | None = None
    az: str | None = None
    ssh_private_key: str | None = None
    grace: float = 2.0  # how long a stopping worker lets work in flight finish


def worker_argv(url: str, index: int, options: WorkerOptions) -> list[str]:
    argv = [sys.executable, str(VM_LAUNCHER), "serve", "--nats-url", url,
            "--worker-id", f"embedded-{os.getpid()}-{index}", "--grace", str(options.grace)]
    if options.concurrency is not None:
        argv.extend(["--concurrency", str(options.concurrency)])
    if options.az is not None:
        argv.extend(["--az", options.az])
    if options.ssh_private_key is not None:
        argv.extend(["--ssh-private-key", options.ssh_private_key])
    return argv


class EmbeddedRuntime:
    """`async with EmbeddedRuntime(store, options) as runtime:` -> `runtime.url`.

    `stop()` stops the workers (SIGTERM, then SIGKILL after their grace plus a margin)
    and then the server; it is safe to call twice.
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

    async def start(self) -> None:
        await self.nats.start()
        env = {**os.environ, **({"AZ_CLI": self.options.az} if self.options.az else {})}
        for index in range(1, self.options.count + 1):
            logfile = self.store / f"worker-{index}.log"
            # 0600 when new (an existing log keeps its mode): it names hosts and users.
            with open(os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                      "ab") as out:
                self.workers.append(await asyncio.create_subprocess_exec(
                    *worker_argv(self.url, index, self.options), env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, preexec_fn=die_with_parent(os.getpid())))
        log.info("embedded NATS at %s (pid %s), %d workers", self.url, self.nats.pid,
                 len(self.workers))

    def alive_workers(self) -> int:
        return sum(1 for w in self.workers if w.returncode is None)

    async def stop_workers(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        grace = self.options.grace + 5.0
        waits = [asyncio.wait_for(w.wait(), grace) for w in workers]
        for worker, result in zip(workers, await asyncio.gather(*waits, return_exceptions=True),
                                  strict=True):
            if isinstance(result, BaseException):
                _signal(worker, signal.SIGKILL)
                await worker.wait()
            # Anything the worker left in its session (its az children) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)

    async def stop(self) -> None:
        await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        await self.stop_workers()
        await self.nats.stop()


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
