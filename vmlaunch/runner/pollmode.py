"""Legacy polling mode: no NATS; `az vm create --no-wait` per VM and one `az vm list` per poll.

Runs for `orchestrator.py deploy --legacy-poll`, when NATS is unreachable at start, and when
NATS is lost mid-run. Each VM runs the one lifecycle (lifecycle/machine.py) in its own task,
so a slow VM never delays another's update. Azure is observed as by the worker
(`Tracked`: one listing per poll interval for all of them); only where events go differs
(the `sink`, i.e. the reducer; source "legacy-poller"). After a fallback from NATS a
`Handover` fence keeps them from creating or deleting anything before the workers' leases
have lapsed; until then they only observe and adopt.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.writebudget import DEFAULT_WINDOWS, LocalBudget, Window
from vmlaunch.lifecycle.lease import OPEN, POLLER, Fence, Handover
from vmlaunch.lifecycle.machine import Lifecycle, Step, deadline_error
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.plans.plan import Plan
from vmlaunch.schema.messages import Message
from vmlaunch.schema.vmspec import VMSpec

log = logging.getLogger("legacy")

SOURCE = POLLER
Sink = Callable[[Message], Awaitable[None]]


async def run_legacy(plan: Plan, *, az: AzCli, sink: Sink,
                     poll_interval: float, concurrency: int, private_key: str | None,
                     deadline: float, vms: list[str] | None = None,
                     attempts: dict[str, int] | None = None,
                     adopt_untagged: bool = False,
                     generations: dict[str, int] | None = None,
                     handover_at: float | None = None,
                     write_budget: tuple[Window, ...] = ()) -> None:
    """Create, watch and verify the plan's VMs (or `vms`) by polling, until every one is ready
    or finally failed, or until `deadline` (a loop.time() value): then the create processes
    are killed and the unfinished VMs get a final `failed` "DeadlineExceeded".

    `attempts`: attempts already started per VM (after NATS loss). An in-flight create found
    in Azure is adopted and keeps its number; a new create is the next number.
    Only VMs with this deployment's tag are adopted or replaced (`adopt_untagged`: also
    adopt, never delete, one with no deployment tag); any other fails as NotOurs.
    `generations`: each VM's request generation, carried by its events. `handover_at`: the
    loop time before which nothing is created or deleted (workers may still hold leases).
    Creates keep within `write_budget` (none given: the PutVM budget). The az calls made
    are logged at the end (see `calls_summary`)."""
    if poll_interval <= 0 or concurrency < 1:
        raise ValueError("run_legacy needs a positive poll_interval and a concurrency of at "
                         "least 1.")
    observer = Tracked(az, interval=poll_interval, creates=concurrency,
                       budget=LocalBudget(write_budget or DEFAULT_WINDOWS))
    fence = OPEN if handover_at is None else Handover(handover_at)
    lives = [await _life(plan, spec, az=az, sink=sink, observer=observer, fence=fence,
                         private_key=private_key, adopt_untagged=adopt_untagged,
                         used=(attempts or {}).get(spec.name, 0),
                         generation=(generations or {}).get(spec.name, 0))
             for spec in plan.vms if vms is None or spec.name in vms]
    before = collections.Counter(az.calls)
    try:
        await _drive(lives, deadline)
    finally:
        await observer.close()
        log.info("legacy poller: %s; az calls: %s", outcome(lives),
                 calls_summary(az.calls - before))


def calls_summary(calls: collections.Counter[str]) -> str:
    """"17 (vm list 10, vm create 7)": the az invocations per subcommand, most first."""
    parts = ", ".join(f"{key} {n}" for key, n in calls.most_common())
    return f"{calls.total()} ({parts})" if parts else "0"


async def _life(plan: Plan, spec: VMSpec, *, az: AzCli, sink: Sink, observer: Tracked,
                fence: Fence, private_key: str | None, adopt_untagged: bool, used: int,
                generation: int) -> Lifecycle:
    """One VM's lifecycle, starting at LOOK; already FAILED when a file of its spec cannot be
    read (it carries the files' contents, as a request does)."""
    report = Reporter(sink, deployment_id=plan.deployment_id, vm_name=spec.name,
                      source=SOURCE, id_seed=f"{uuid.uuid4().hex}/{spec.name}",
                      generation=generation)
    try:
        loaded, problem = spec.with_file_contents(), None
    except OSError as exc:
        loaded, problem = spec, exc
    life = Lifecycle(loaded, az=az, report=report, observer=observer,
                     private_key=private_key, adopt_untagged=adopt_untagged, fence=fence,
                     used=used, start=Step.LOOK)
    if problem is not None:
        await life.abandon(AzError("InvalidRequest", f"cannot read a file of VM "
                                   f"{spec.name!r}: {problem}", FailureKind.PERMANENT))
    return life


async def _drive(lives: list[Lifecycle], deadline: float) -> None:
    """Run every unfinished lifecycle at once until all end or `deadline` (loop time):
    then the rest are cancelled (their create processes killed) and fail for good."""
    loop = asyncio.get_running_loop()
    tasks = {asyncio.create_task(_guarded(life), name=f"legacy-{life.name}"): life
             for life in lives if not life.finished}
    if not tasks:
        return
    try:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
    finally:  # also when we are cancelled: no task, and so no create process, outlives us
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in pending:
        life = tasks[task]
        await life.abandon(deadline_error(f"the deployment deadline passed while {life.name} "
                                          f"was at {life.step.value}"))


async def _guarded(life: Lifecycle) -> None:
    try:
        await life.run()
    except Exception as exc:  # a bug must not leave the VM unfinished until the deadline
        log.exception("legacy poller: handling %s failed", life.name)
        await life.abandon(AzError("InternalError", f"{type(exc).__name__}: {exc}",
                                   FailureKind.PERMANENT))


def outcome(lives: list[Lifecycle]) -> str:
    """"2 ready, 1 failed": how the lifecycles ended."""
    counts = collections.Counter(life.step.value for life in lives)
    return ", ".join(f"{n} {step}" for step, n in sorted(counts.items())) or "no VMs"
