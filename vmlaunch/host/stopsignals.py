"""The signals that stop a long-running command in order, in one place.

SIGINT (Ctrl-C), SIGTERM (a service manager, `kill`) and SIGHUP (the terminal or the SSH
session went away) all mean "stop now, cleanly": without a handler, SIGHUP would kill the
process on the spot, leaving requests unsettled and `az` processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from vmlaunch.errors import ExitCode, HostError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
T = TypeVar("T")


class Stopped(HostError, exit_code=ExitCode.INTERRUPTED):
    """A stop signal ended the work; `signal` says which."""

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__(f"stopped by {sig.name}")
        self.signal = sig


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call `callback(signal)` on the running loop for each stop signal while inside."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback, sig)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def unless_stopped(work: Awaitable[T]) -> T:
    """The result of `work`, or Stopped when a stop signal came first: `work` is then
    cancelled and its clean-up (killing `az` trees, removing files) has run."""
    task = asyncio.ensure_future(work)
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        task.cancel()

    with on_stop_signals(stop):
        try:
            return await task
        except asyncio.CancelledError:
            if not received:
                raise
    raise Stopped(received[0])
