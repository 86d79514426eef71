"""The worker process (`vm_launcher.py serve`): start a `Worker`, run it until a stop
signal or until it cannot go on, stop it gracefully, and return the exit code.

SIGTERM, SIGINT and SIGHUP all stop it in order (`stopsignals.py`); a second one ends
the grace period at once.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
from collections.abc import Coroutine
from typing import Any

from vmlaunch.azure.verify import DEFAULT_RUN_COMMAND_CONCURRENCY, limit_run_commands
from vmlaunch.errors import ExitCode
from vmlaunch.host.stopsignals import on_stop_signals
from vmlaunch.worker.settings import WorkerSettings
from vmlaunch.worker.worker import Worker

log = logging.getLogger("worker")


async def serve(settings: WorkerSettings, *,
                run_commands: int = DEFAULT_RUN_COMMAND_CONCURRENCY) -> int:
    """Run a worker until SIGTERM/SIGINT/SIGHUP (a second one ends the grace period at
    once), with at most `run_commands` run-command checks at once. 0 after a graceful
    stop, 3 if it cannot start or cannot go on."""
    if shutil.which(settings.az) is None:
        log.error("cannot serve: the az executable %r was not found", settings.az)
        return ExitCode.CANNOT_RUN
    stop = asyncio.Event()
    worker = Worker(settings)
    limit_run_commands(worker.az, run_commands)

    def on_signal(sig: int) -> None:
        if stop.is_set():
            worker.hurry()
        else:
            log.info("%s: stopping", signal.Signals(sig).name)
            stop.set()

    with on_stop_signals(on_signal):
        try:
            await worker.start()
        except Exception as exc:  # NatsUnavailable, no JetStream, not authorised, ...
            log.error("cannot serve: %s", exc or type(exc).__name__)
            await worker.stop()
            return ExitCode.CANNOT_RUN
        try:
            await _first(stop.wait(), worker.broken.wait())
            if worker.broken.is_set():
                log.error("cannot serve any longer: %s", worker.broken_reason)
            else:
                log.info("stop requested; fetching nothing more")
        finally:
            await worker.stop()
    return ExitCode.CANNOT_RUN if worker.broken.is_set() else ExitCode.OK


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of `waits` ends; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
