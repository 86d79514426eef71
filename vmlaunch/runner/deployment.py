"""`deploy`: a validated plan in; requests out; events into the state files; an exit code back.

Order of work: resolve the location (one `az group show`, also proving the resource group
exists), look at Azure once (`az vm list -d`: finished VMs are skipped, VMs tagged with
this deployment but not in the plan are reported as possible leaks, never deleted), ask
for confirmation, reach NATS (given URL, else the embedded server and workers, else the
legacy poller), and only then touch the state files. The run ends when every VM is ready
or finally failed, at the deadline (cancel, mark Failed), or on SIGINT/SIGTERM/SIGHUP (exit 130;
a rerun resumes). NATS lost for longer than the grace period switches the unfinished VMs
to legacy polling for the rest of the run, even if NATS comes back; the workers are fenced
out of them first (`NatsRun.hand_over`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli
from vmlaunch.azure.verify import DEFAULT_RUN_COMMAND_CONCURRENCY, limit_run_commands
from vmlaunch.bus.connection import (
    NatsSettings,
    NatsUnavailable,
    NatsUnreachable,
    close_quietly,
    connect,
    nats_server_binary,
)
from vmlaunch.bus.embedded import EmbeddedRuntime, WorkerOptions
from vmlaunch.bus.streams import StreamMismatch, prepare_streams
from vmlaunch.display.views import Display
from vmlaunch.errors import ExitCode
from vmlaunch.host import atomicfile, customdata
from vmlaunch.host.stopsignals import STOP_SIGNALS
from vmlaunch.lifecycle.lease import POLLER
from vmlaunch.lifecycle.machine import deadline_error
from vmlaunch.lifecycle.tracked import FOLLOWED_AT_ONCE
from vmlaunch.plans.plan import Plan
from vmlaunch.runner import pollmode
from vmlaunch.runner.natsmode import Link, NatsRun
from vmlaunch.runner.preflight import BadInput, CannotRun, read_files, resolve_location, survey
from vmlaunch.runner.tracker import Ticket, Tracker, decide
from vmlaunch.state.writer import StateWriter, WriteFailed

DEFAULT_POLL_INTERVAL = 30.0


@dataclass(frozen=True)
class DeployOptions:
    state_file: Path
    events_file: Path
    az: str | None = None
    ssh_private_key: str | None = None
    nats: NatsSettings | None = None  # None: embedded mode when a nats-server exists
    require_nats: bool = False
    legacy_poll: bool = False
    nats_grace: float = 10.0
    workers: WorkerOptions = field(default_factory=WorkerOptions)
    concurrency: int = FOLLOWED_AT_ONCE  # legacy mode: VMs in flight at once
    run_command_concurrency: int = DEFAULT_RUN_COMMAND_CONCURRENCY  # legacy mode's checks
    adopt_untagged: bool = False  # legacy mode; embedded workers get workers.adopt_untagged
    poll_interval: float | None = None  # legacy mode; default the plan's, else 30
    deadline: float | None = None  # default the plan's
    confirm: Callable[[str], bool] | None = None  # None: no question asked


async def deploy(plan: Plan, options: DeployOptions, display: Display) -> int:
    """Run a deployment; 0 all ready, 1 some failed, 2 bad input, 3 could not run, 130 stopped."""
    loop = asyncio.get_running_loop()
    customdata.prepare()  # legacy polling creates VMs here
    try:
        async with contextlib.AsyncExitStack() as stack:
            return await Deployment(plan, options, display, stack).run()
    except (CannotRun, BadInput, StreamMismatch, WriteFailed) as exc:
        display.fatal(str(exc))
        return exc.exit_code
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


class Deployment:
    def __init__(self, plan: Plan, options: DeployOptions, display: Display,
                 stack: contextlib.AsyncExitStack) -> None:
        self.plan, self.options, self.display = plan, options, display
        self.stack = stack
        self.stop = asyncio.Event()
        self.link = Link()
        self.az = AzCli(options.az)
        limit_run_commands(self.az, options.run_command_concurrency)
        self.loop = asyncio.get_running_loop()
        self.deadline = 0.0  # loop time; set once the question (if any) is answered
        self.runtime: EmbeddedRuntime | None = None
        self.mode = "legacy polling"
        self.tracker: Tracker | None = None
        self.leaks: list[str] = []
        self.writer_failure: WriteFailed | None = None  # the state files stayed unwritable
        self.run_locked = False

    async def run(self) -> int:
        state, written = read_files(self.options.state_file, self.options.events_file,
                                    plan=self.plan, display=self.display)
        self.plan = await resolve_location(self.az, self.plan)
        azure, self.leaks = await survey(self.az, self.plan, self.display)
        done, tickets = decide(self.plan, state.get("vm_states") or {}, azure)
        if tickets and self.options.confirm is not None:
            question = f"Create {len(tickets)} VMs in Azure?" + (
                f" ({len(done)} already ready)" if done else "")
            if not self.options.confirm(question):
                self.display.note("Nothing launched.")
                return ExitCode.FAILED
        self.deadline = self.loop.time() + (self.options.deadline or self.plan.deadline)
        # From here on a Ctrl-C is an orderly stop (not during the question above).
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self.stop.set)
        nc = await self._reach_nats() if tickets else None
        if not tickets:
            self.mode = "nothing to launch"
        await self._start_tracking(state.get("vm_states") or {}, written, done, tickets)
        code = await self._launch(nc, tickets) if tickets else None
        if self.writer_failure is not None:
            raise CannotRun(f"{self.writer_failure}; stopped launching new VMs (the events "
                            "stream keeps the record: run again once the file can be written)")
        return code if code is not None else self._finish()

    async def _start_tracking(self, vm_states: dict[str, Any], written: set[str],
                              done: list[str], tickets: dict[str, Ticket]) -> None:
        """Open the state files (only now are they touched) and record the start."""
        self._lock_run()
        writer = await self.stack.enter_async_context(StateWriter(
            self.options.state_file, self.options.events_file,
            deployment_id=self.plan.deployment_id, on_broken=self._writer_broken))
        self.tracker = tracker = Tracker(self.plan, writer=writer, display=self.display,
                                         written=written)
        for name in done:
            tracker.mark_done(name, vm_states.get(name) or {})
        launched = {name: tracker.launch(name, ticket) for name, ticket in tickets.items()}
        for name in self.leaks:
            tracker.note("vm_possible_leak", f"VM {name} is tagged {TAG_DEPLOYMENT}="
                         f"{self.plan.deployment_id} but not in the plan; left alone",
                         show=False)
        tracker.note("vm_launch_started", f"Launching {len(tickets)} of {len(self.plan.vms)} "
                     f"VMs of {self.plan.deployment_id} ({self.mode})", show=False,
                     vm_states={name: fields for name, fields in launched.items() if fields})
        self.display.begin(tracker.view, f"{self.plan.deployment_id}: {len(tickets)} VMs to "
                           f"launch in {self.plan.resource_group} ({self.mode})")

    def _writer_broken(self, failure: WriteFailed) -> None:
        """An unwritable state file stops the run: nothing new is launched unrecorded."""
        self.writer_failure = failure
        self.stop.set()

    def _lock_run(self) -> None:
        """One run per state file (else CannotRun): taken where the state directory is
        first written, before the embedded server starts on its store or anything launches."""
        if self.run_locked:
            return
        try:
            self.stack.enter_context(atomicfile.run_lock(self.options.state_file))
        except OSError as exc:
            raise CannotRun(str(exc)) from None
        self.run_locked = True

    async def _reach_nats(self) -> Client | None:
        """A NATS client, or None for legacy polling (CannotRun under --require-nats)."""
        options = self.options
        if options.legacy_poll:
            return None
        settings = options.nats
        if settings is None:
            if nats_server_binary() is None:
                return self._no_nats("no NATS URL given and no nats-server binary found")
            self._lock_run()
            self.runtime = EmbeddedRuntime(options.state_file.parent / "nats", options.workers)
            try:
                await self.stack.enter_async_context(self.runtime)
            except (NatsUnavailable, OSError) as exc:
                return self._no_nats(f"embedded NATS could not start: {exc}")
            settings = self.runtime.client("vm-launch-orchestrator")
        try:
            nc = await connect(settings, disconnected_cb=self.link.disconnected,
                               reconnected_cb=self.link.reconnected)
            self.stack.push_async_callback(close_quietly, nc)
            await prepare_streams(nc.jetstream(), settings)
        except NatsUnreachable as exc:  # the one failure polling may work around
            return self._no_nats(str(exc))
        except NatsUnavailable as exc:  # wrong secret, TLS, no streams: fix it, no fallback
            raise CannotRun(str(exc)) from None
        self.mode = (f"NATS, embedded, {options.workers.count} workers" if self.runtime
                     else f"NATS at {settings.shown}")
        return nc

    def _no_nats(self, reason: str) -> None:
        if self.options.require_nats:
            raise CannotRun(f"{reason} (--require-nats)")
        self.display.note(f"{reason}; falling back to legacy polling", warning=True)
        return None

    # --- launching -------------------------------------------------------------------------

    async def _launch(self, nc: Client | None, tickets: dict[str, Ticket]) -> int | None:
        if nc is None:
            return await self._run_legacy(None)
        assert self.tracker is not None
        nats_run = NatsRun(
            nc, self.plan, self.tracker, self.display, stop=self.stop,
            link=self.link, deadline_at=self.deadline, grace=self.options.nats_grace,
            deadline_reason=f"deadline of {self.options.deadline or self.plan.deadline:g} "
                            "s reached", runtime=self.runtime)
        outcome = await nats_run.run(tickets)
        if outcome != "lost":
            return ExitCode.INTERRUPTED if outcome == "stopped" else None
        return await self._run_legacy(await self._switch_to_legacy(nats_run))

    async def _switch_to_legacy(self, nats_run: NatsRun) -> float:
        """Hand the unfinished VMs to the poller; from when it may create or delete."""
        assert self.tracker is not None
        self.stack.push_async_callback(nats_run.close)  # runs before the client closes
        handover_at = await nats_run.hand_over(POLLER)
        left = self.tracker.unfinished()
        self.tracker.note("vm_launch_mode_changed", f"NATS lost for more than "
                          f"{self.options.nats_grace:g} s: polling Azure for the {len(left)} "
                          "unfinished VMs for the rest of this run")
        self.display.note("NATS lost; continuing by legacy polling", warning=True)
        if self.runtime is not None:
            await self.runtime.stop()
        return handover_at

    async def _run_legacy(self, handover_at: float | None) -> int | None:
        assert self.tracker is not None
        tracker = self.tracker
        left = tracker.unfinished()
        interval = self.options.poll_interval or self.plan.poll_interval or DEFAULT_POLL_INTERVAL
        poller = asyncio.create_task(pollmode.run_legacy(
            self.plan, az=self.az, sink=tracker.sink, poll_interval=interval,
            concurrency=self.options.concurrency, private_key=self.options.ssh_private_key,
            deadline=self.deadline, vms=left, handover_at=handover_at,
            attempts={name: tracker.view.vms[name].attempt for name in left},
            generations={name: tracker.view.vms[name].generation for name in left},
            adopt_untagged=self.options.adopt_untagged,
            write_budget=self.options.workers.write_budget))  # one budget, whoever writes
        stopper = asyncio.create_task(self.stop.wait())
        ticker = asyncio.create_task(self._tick_until(poller))
        try:
            await asyncio.wait([poller, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _end_tasks([poller, stopper, ticker])
        if self.stop.is_set() and tracker.unfinished():
            tracker.note("vm_launch_interrupted", "Interrupted; run again to resume")
            return ExitCode.INTERRUPTED
        expired = deadline_error("not finished by the legacy poller before the deadline")
        for name in tracker.unfinished():
            await tracker.fail(name, expired.code, expired.message)
        return None

    async def _tick_until(self, task: asyncio.Task[Any]) -> None:
        assert self.tracker is not None
        while not task.done():
            await asyncio.sleep(1.0)
            self.display.tick(self.tracker.view)

    def _finish(self) -> int:
        assert self.tracker is not None
        view = self.tracker.view
        ready = sum(vm.ready for vm in view.vms.values())
        failed = [vm.name for vm in view.vms.values() if not vm.ready]
        text = f"{ready} of {len(view.vms)} VMs ready" + (
            f"; failed: {', '.join(failed)}" if failed else "")
        self.tracker.end(text, all_ready=not failed)
        self.display.finish(view)
        return ExitCode.FAILED if failed else ExitCode.OK


async def _end_tasks(tasks: list[asyncio.Task[Any]], *, patience: float = 10.0) -> None:
    """Cancel tasks and wait for them, cancelling again (a cancel can be swallowed)."""
    for _ in range(3):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=patience)
