"""The manual launch (`vm_launcher.py launch`): one VM, in the foreground, no orchestrator.

The same pipeline as the worker; its events go to the terminal (progress lines or JSON
lines), to NATS when a server answers (one warning when none does; a rejected secret or
a TLS failure is exit 3 before anything is launched), and to the state and events files
through the shared reducer when asked.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from vmlaunch.azure.azcli import AzCli
from vmlaunch.azure.writebudget import DEFAULT_WINDOWS, LocalBudget, Window
from vmlaunch.bus.connection import (
    NatsSettings,
    NatsUnavailable,
    NatsUnreachable,
    close_quietly,
    connect,
)
from vmlaunch.bus.publish import Publisher, progress_line
from vmlaunch.bus.streams import StreamMismatch, prepare_streams
from vmlaunch.commands.common import load_files
from vmlaunch.display.views import terminal_safe
from vmlaunch.errors import ExitCode
from vmlaunch.host import atomicfile, customdata
from vmlaunch.host.stopsignals import Stopped, unless_stopped
from vmlaunch.lifecycle.machine import Lifecycle, Outcome
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.schema.messages import Message, encode, new_event_id
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.state.reducer import DeploymentView
from vmlaunch.state.writer import Recorder, StateWriter, WriteFailed

log = logging.getLogger("manual_launch")

# How long one event may wait for NATS before the launch stops publishing.
PUBLISH_PATIENCE = 5.0


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class _Outputs:
    """Where each event goes: the terminal, NATS (while it works), the state files."""

    def __init__(self, spec: VMSpec, *, deployment_id: str, json_lines: bool) -> None:
        self.show: Callable[[Message], str] = (
            (lambda m: encode(m).decode()) if json_lines
            else (lambda m: terminal_safe(progress_line(m))))
        self.publisher: Publisher | None = None
        self.view = DeploymentView(deployment_id, [spec])
        self.recorder = Recorder(self.view, None)  # given a writer with --state-file

    async def emit(self, message: Message) -> None:
        print(self.show(message), flush=True)
        self.recorder.apply(message)
        if self.publisher is not None and not await self.publisher.publish(message):
            warn("NATS stopped answering; continuing without publishing events")
            self.publisher = None


async def _connect(settings: NatsSettings, stack: contextlib.AsyncExitStack) -> Publisher | None:
    """A publisher, or None (one warning) when no server answers. A wrong secret, a TLS
    failure or missing streams raise NatsUnavailable: errors to fix, not to work around."""
    try:
        nc = await connect(settings)
        stack.push_async_callback(close_quietly, nc)
        await prepare_streams(nc.jetstream(), settings)
    except NatsUnreachable as exc:
        warn(f"{exc}; continuing without publishing events")
        return None
    except StreamMismatch as exc:
        warn(f"NATS has no usable JetStream ({exc}); continuing without publishing events")
        return None
    return Publisher(nc, nc.jetstream(), give_up_after=PUBLISH_PATIENCE)


async def launch(spec: VMSpec, *, deployment_id: str, az: str, private_key: str | None,
                 nats: NatsSettings | None, json_lines: bool,
                 files: tuple[Path, Path] | None, adopt_untagged: bool = False,
                 write_budget: tuple[Window, ...] = DEFAULT_WINDOWS) -> int:
    """Create and verify one VM whose spec passed `spec_problems`, its create paced by
    `write_budget` alone (one create: not worth the fleet's ledger). 0 ready, 1 failed or
    stopped by SIGINT/SIGTERM/SIGHUP, 2 a malformed state or events file (or another
    deployment's), 3 one that cannot be written or that a live run holds, or NATS rejected
    our credentials or TLS (nothing launched)."""
    customdata.prepare()
    spec = spec.with_file_contents()
    outputs = _Outputs(spec, deployment_id=deployment_id, json_lines=json_lines)
    if files is not None and isinstance(code := load_files(
            *files, writable=True, deployment_id=deployment_id), int):
        return code  # before any az call
    try:
        with contextlib.ExitStack() as held:
            if files is not None:  # not while a deploy (or reset) drives these VMs
                held.enter_context(atomicfile.run_lock(files[0]))
            return await _launch(spec, outputs, deployment_id=deployment_id, az=az,
                                 private_key=private_key, nats=nats, files=files,
                                 json_lines=json_lines, adopt_untagged=adopt_untagged,
                                 budget=LocalBudget(write_budget))
    except (WriteFailed, atomicfile.InUse) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return ExitCode.CANNOT_RUN


async def _launch(spec: VMSpec, outputs: _Outputs, *, deployment_id: str, az: str,
                  private_key: str | None, nats: NatsSettings | None,
                  files: tuple[Path, Path] | None, json_lines: bool,
                  adopt_untagged: bool, budget: LocalBudget) -> int:
    cli = AzCli(az)  # first: without a process guard nothing else is worth starting
    async with contextlib.AsyncExitStack() as stack:
        if nats is not None:
            try:
                outputs.publisher = await _connect(nats, stack)
            except NatsUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                return ExitCode.CANNOT_RUN
        if files is not None:
            outputs.recorder.writer = await stack.enter_async_context(
                StateWriter(*files, deployment_id=deployment_id))
        report = Reporter(outputs.emit, deployment_id=deployment_id, vm_name=spec.name,
                          source=f"manual@{socket.gethostname()}",
                          id_seed=f"{deployment_id}/{spec.name}/{new_event_id()}")
        try:
            result = await unless_stopped(
                Lifecycle(spec, az=cli, report=report, private_key=private_key,
                          observer=Tracked(cli, budget=budget),
                          adopt_untagged=adopt_untagged).run())
        except Stopped as stopped:
            warn(f"{spec.name}: interrupted by {stopped.signal.name}; its az processes were "
                 "stopped (run again to resume)")
            return ExitCode.FAILED
    if not json_lines:
        vm = outputs.view.vms[spec.name]
        print(f"{spec.name}: ready ({vm.public_ip or 'no public IP'}) after {result.attempts} "
              f"attempt(s)" if result.outcome is Outcome.READY else
              f"{spec.name}: failed after {result.attempts} attempt(s): {vm.last_error}",
              flush=True)
    return ExitCode.OK if result.outcome is Outcome.READY else ExitCode.FAILED
