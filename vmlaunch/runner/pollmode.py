"""Legacy polling mode: no NATS; one `az vm create` child per VM and one `az vm list` per poll.

Runs for `orchestrator.py deploy --legacy-poll`, when NATS is unreachable at start, and when
NATS is lost mid-run. It makes the decisions of the bash loop it replaces, done right, and
emits the same events as the worker path (source "legacy-poller") by reusing the pipeline's
reporter, retry, clean-up and verification code. Verification and deletion run as one task per
VM, so a slow VM never delays another's update. A VM already in Azure (in flight or created)
with no create process of ours is adopted, never created a second time. After a fallback
from NATS a `Handover` fence keeps it from creating or deleting anything before the workers'
leases have lapsed; until then it only observes and adopts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.createproc import CreateProcess
from vmlaunch.azure.look import refusal
from vmlaunch.lifecycle.lease import OPEN, POLLER, Fence, Handover
from vmlaunch.lifecycle.polled import EXIT_GRACE, Phase, PolledVm, VmTasks, as_found
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.plans.plan import Plan
from vmlaunch.schema.messages import Message
from vmlaunch.schema.vmspec import VMSpec

log = logging.getLogger("legacy")

SOURCE = POLLER
IN_FLIGHT = ("Creating", "Updating")


async def run_legacy(plan: Plan, *, az: AzCli, sink: Callable[[Message], Awaitable[None]],
                     poll_interval: float, concurrency: int, private_key: str | None,
                     deadline: float, vms: list[str] | None = None,
                     attempts: dict[str, int] | None = None,
                     adopt_untagged: bool = False,
                     generations: dict[str, int] | None = None,
                     handover_at: float | None = None) -> None:
    """Create, watch and verify the plan's VMs (or `vms`) by polling, until every one is ready
    or finally failed, or until `deadline` (a loop.time() value): then the create processes
    are killed and the unfinished VMs get a final `failed` "DeadlineExceeded".

    `attempts`: attempts already started per VM (after NATS loss). An in-flight create found
    in Azure is adopted and keeps its number; a new create is the next number.
    Only VMs with this deployment's tag are adopted or replaced (`adopt_untagged`: also
    adopt, never delete, one with no deployment tag); any other fails as NotOurs.
    `generations`: each VM's request generation, carried by its events. `handover_at`: the
    loop time before which nothing is created or deleted (workers may still hold leases).
    The az calls made are logged at the end (see `calls_summary`)."""
    if poll_interval <= 0 or concurrency < 1:
        raise ValueError("run_legacy needs a positive poll_interval and a concurrency of at "
                         "least 1.")
    poller = _Poller(plan, az=az, sink=sink, poll_interval=poll_interval,
                     concurrency=concurrency, private_key=private_key, deadline=deadline,
                     adopt_untagged=adopt_untagged,
                     fence=OPEN if handover_at is None else Handover(handover_at),
                     generations=generations or {})
    before = collections.Counter(az.calls)
    try:
        await poller.run(vms if vms is not None else [s.name for s in plan.vms], attempts or {})
    finally:
        await poller.close()
        log.info("legacy poller: %s; az calls: %s", poller.outcome(),
                 calls_summary(az.calls - before))


def calls_summary(calls: collections.Counter[str]) -> str:
    """"17 (vm list 10, vm create 7)": the az invocations per subcommand, most first."""
    parts = ", ".join(f"{key} {n}" for key, n in calls.most_common())
    return f"{calls.total()} ({parts})" if parts else "0"


class _Poller:
    def __init__(self, plan: Plan, *, az: AzCli, sink: Callable[[Message], Awaitable[None]],
                 poll_interval: float, concurrency: int, private_key: str | None,
                 deadline: float, adopt_untagged: bool, fence: Fence,
                 generations: dict[str, int]) -> None:
        self.plan, self.az, self.sink = plan, az, sink
        self.adopt_untagged = adopt_untagged
        self.fence, self.generations = fence, generations
        self.poll_interval, self.concurrency = poll_interval, concurrency
        self.deadline = deadline
        self.loop = asyncio.get_running_loop()
        self.vms: dict[str, PolledVm] = {}
        self.work = VmTasks(az, private_key, fence)
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.run_id = uuid.uuid4().hex

    async def run(self, names: list[str], attempts: dict[str, int]) -> None:
        for name in names:
            await self._add(self.plan.spec(name), attempts.get(name, 0))
        next_poll = self.loop.time()
        while not self.finished:
            self.wake.clear()
            now = self.loop.time()
            if now >= self.deadline:
                await self._expire()
                return
            if now >= next_poll:
                next_poll = now + self.poll_interval
                await self._poll()
            await self._launch_due()
            wake_at = min([next_poll, self.deadline, *(
                vm.not_before for vm in self.vms.values()
                if vm.phase is Phase.QUEUED and vm.not_before > now)])
            with contextlib.suppress(TimeoutError):  # a finished task wakes us early
                await asyncio.wait_for(self.wake.wait(), max(0.0, wake_at - self.loop.time()))

    @property
    def finished(self) -> bool:
        return all(vm.phase in (Phase.READY, Phase.FAILED) for vm in self.vms.values())

    def outcome(self) -> str:
        counts = collections.Counter(vm.phase.value for vm in self.vms.values())
        return ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items())) or "no VMs"

    async def _add(self, spec: VMSpec, used: int) -> None:
        report = Reporter(self.sink, deployment_id=self.plan.deployment_id, vm_name=spec.name,
                          source=SOURCE, id_seed=f"{self.run_id}/{spec.name}",
                          generation=self.generations.get(spec.name, 0))
        vm = PolledVm(spec, spec, report, used, started=self.loop.time())
        self.vms[spec.name] = vm
        try:
            vm.original = vm.spec = spec.with_file_contents()
        except OSError as exc:
            error = AzError("InvalidRequest", f"cannot read a file of VM {spec.name!r}: {exc}",
                            FailureKind.PERMANENT)
            await report.failed(error, attempt=max(used, 1), final=True, spec=spec)
            vm.phase = Phase.FAILED

    # --- one poll ---------------------------------------------------------------------------

    async def _poll(self) -> None:
        # Processes are looked at *before* the list, so a create that exited shows its effect.
        gone = {vm.name for vm in self.vms.values() if vm.create is None or not vm.create.alive}
        seen = await self._list()
        if seen is None:
            return
        for vm in self.vms.values():
            if vm.phase is Phase.NEW:
                await self._first_sight(vm, seen.get(vm.name))
            if vm.phase is Phase.CREATING:
                await self._decide(vm, seen.get(vm.name), gone=vm.name in gone)

    async def _list(self) -> dict[str, dict[str, Any]] | None:
        seen: dict[str, dict[str, Any]] = {}
        for group in sorted({vm.spec.resource_group for vm in self.vms.values()}):
            timeout = max(1.0, min(300.0, self.deadline - self.loop.time()))
            result = await self.az.list_vms(group, timeout=timeout)
            if not result.ok or not isinstance(result.data, list):
                error = result.error
                log.warning("az vm list -g %s failed (%s); deciding at the next poll", group,
                            f"{error.code}: {error.message}" if error else "no JSON list")
                return None
            seen.update((item["name"], item) for item in result.data
                        if isinstance(item, dict) and "name" in item)
        return seen

    async def _first_sight(self, vm: PolledVm, seen: dict[str, Any] | None) -> None:
        state = (seen or {}).get("provisioningState")
        refused = None if seen is None or state == "Deleting" else refusal(
            seen, deployment_id=self.plan.deployment_id, adopt_untagged=self.adopt_untagged,
            delete=state == "Failed")
        if refused is not None:  # someone else's VM: neither adopted nor deleted
            await vm.report.failed(refused, attempt=max(vm.attempt, 1), final=True,
                                   spec=vm.spec)
            vm.phase = Phase.FAILED
        elif seen is not None and (state in IN_FLIGHT or state == "Succeeded"):
            vm.spec = as_found(vm.spec, seen)
            vm.attempt, vm.phase, vm.since = max(vm.attempt, 1), Phase.CREATING, self.loop.time()
            if state != "Succeeded":
                await vm.report.status("provisioning", f"found {vm.name} {state} in Azure; "
                                       "adopting it instead of creating it", attempt=vm.attempt,
                                       spec=vm.spec)
        elif not self.fence.open_now():
            pass  # a worker may still replace or create it: decide on a poll after the handover
        elif state == "Failed":
            self._spawn(vm, self.work.replace_failed(vm))
        elif seen is None and vm.attempt >= vm.spec.max_attempts:
            error = AzError("RetriesExhausted", f"{vm.attempt} attempts already made and "
                            f"{vm.name} is not in Azure", FailureKind.PERMANENT)
            await vm.report.failed(error, attempt=vm.attempt, final=True, spec=vm.spec)
            vm.phase = Phase.FAILED
        elif seen is None:
            vm.phase = Phase.QUEUED
        # Deleting (someone else's clean-up): decide again once it is gone.

    async def _decide(self, vm: PolledVm, seen: dict[str, Any] | None, *, gone: bool) -> None:
        state = (seen or {}).get("provisioningState")
        ip = (seen or {}).get("publicIps") or ""
        if state == "Succeeded" and ip:
            self._spawn(vm, self.work.succeeded(vm, seen or {}))
        elif state == "Failed":
            self._spawn(vm, self.work.failed(vm, _provisioning_failed(vm), grace=EXIT_GRACE))
        elif self.loop.time() - vm.since > vm.spec.create_timeout:
            timeout = AzError("Timeout", f"{vm.name} not provisioned after "
                              f"{vm.spec.create_timeout:g} s", FailureKind.TRANSIENT)
            self._spawn(vm, self.work.failed(vm, timeout, decided=True))
        elif gone and vm.create is not None and state in IN_FLIGHT:
            # The client died (killed, crashed) but Azure keeps creating: adopt, never re-create.
            code = vm.create.proc.returncode
            await vm.create.stop()
            vm.create = None
            await vm.report.status("provisioning", f"az vm create for {vm.name} ended (exit "
                                   f"{code}) while Azure is still creating it; waiting for it",
                                   attempt=vm.attempt, spec=vm.spec)
        elif gone and seen is None:
            missing = AzError("VmMissing", f"az vm create for {vm.name} ended and the VM is "
                              "not in Azure", FailureKind.TRANSIENT)
            self._spawn(vm, self.work.failed(vm, missing))

    async def _launch_due(self) -> None:
        running = sum(1 for vm in self.vms.values() if vm.create is not None)
        for vm in self.vms.values():
            if running >= self.concurrency:
                return
            if vm.phase is Phase.QUEUED and vm.not_before <= self.loop.time():
                await self._launch(vm)
                running += vm.create is not None

    async def _launch(self, vm: PolledVm) -> None:
        vm.attempt += 1
        where = f"zone {vm.spec.zone}" if vm.spec.zone else "no zone"
        await vm.report.status("creating", f"az vm create {vm.name} ({vm.spec.size}, {where})",
                               attempt=vm.attempt, spec=vm.spec)
        vm.phase, vm.since = Phase.CREATING, self.loop.time()
        try:
            vm.create = await CreateProcess.start(self.az, vm.spec,
                                                  deployment_id=self.plan.deployment_id)
        except (ValueError, OSError) as exc:  # no location; az missing or not executable
            code = "InvalidRequest" if isinstance(exc, ValueError) else "AzNotRunnable"
            error = AzError(code, str(exc), FailureKind.PERMANENT)
            self._spawn(vm, self.work.failed(vm, error, decided=True))

    # --- per-VM tasks -----------------------------------------------------------------------

    def _spawn(self, vm: PolledVm, work: Coroutine[Any, Any, None]) -> None:
        vm.phase = Phase.BUSY
        task = asyncio.create_task(self._guarded(vm, work), name=f"legacy-{vm.name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.wake.set()

    async def _guarded(self, vm: PolledVm, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # a bug must not leave the VM busy until the deadline
            log.exception("legacy poller: handling %s failed", vm.name)
            error = AzError("InternalError", f"{type(exc).__name__}: {exc}", FailureKind.PERMANENT)
            await vm.report.failed(error, attempt=vm.attempt, final=True, spec=vm.spec)
            vm.phase = Phase.FAILED

    # --- the end ----------------------------------------------------------------------------

    async def _expire(self) -> None:
        await self.close()
        for vm in self.vms.values():
            if vm.phase not in (Phase.READY, Phase.FAILED):
                error = AzError("DeadlineExceeded", f"the deployment deadline passed while "
                                f"{vm.name} was {vm.phase.value}", FailureKind.TRANSIENT)
                await vm.report.failed(error, attempt=max(vm.attempt, 1), final=True,
                                       spec=vm.spec)
                vm.phase = Phase.FAILED

    async def close(self) -> None:
        """Cancel the tasks and kill every create process still running. Repeatable."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for vm in self.vms.values():
            if vm.create is not None:
                await vm.create.stop()
                vm.create = None


def _provisioning_failed(vm: PolledVm) -> AzError:
    return AzError("ProvisioningFailed", f"{vm.name} ended in state Failed",
                   FailureKind.TRANSIENT)
