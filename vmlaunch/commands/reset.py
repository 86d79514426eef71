"""`reset`: delete the plan's VMs and their public IPs in parallel, and record it.

Each VM is deleted only when a read says it is gone or this deployment's; every step goes
to the files through the one writer (`state.writer.Recorder`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from vmlaunch.azure.azcli import AzCli
from vmlaunch.azure.look import look, refusal
from vmlaunch.commands.common import err, load_files, say
from vmlaunch.commands.status import azure_view
from vmlaunch.errors import ExitCode
from vmlaunch.host import atomicfile
from vmlaunch.plans.plan import Plan
from vmlaunch.schema.vocabulary import VmState
from vmlaunch.state.reducer import DeploymentView, ResetStep
from vmlaunch.state.writer import Recorder, StateWriter, WriteFailed

RESET_TIMEOUT = 300.0  # the legacy reset waits up to 5 minutes
RESET_CONCURRENCY = 10


async def reset(plan: Plan, *, az: str | None, state_file: Path, events_file: Path) -> int:
    """Delete the plan's VMs (NIC and disk go with them) and their public IPs, in parallel.

    0 when every VM is gone, 1 otherwise; 2 or 3 (before any delete) when the state files
    are malformed or cannot be written, or a live deploy uses them (3); 3 when they stop
    being writable."""
    if isinstance(code := load_files(state_file, events_file, writable=True,
                                deployment_id=plan.deployment_id), int):
        return code
    try:
        with atomicfile.run_lock(state_file):  # not while a deploy drives these VMs
            return await _reset(plan, az=az, state_file=state_file, events_file=events_file)
    except (WriteFailed, atomicfile.InUse) as exc:
        err(f"error: {exc}")
        return ExitCode.CANNOT_RUN


async def _reset(plan: Plan, *, az: str | None, state_file: Path, events_file: Path) -> int:
    cli = AzCli(az)
    limit = asyncio.Semaphore(RESET_CONCURRENCY)
    async with StateWriter(state_file, events_file, deployment_id=plan.deployment_id) as writer:
        recorder = Recorder(DeploymentView(plan.deployment_id, plan.vms), writer)

        async def delete(name: str) -> bool:
            async with limit:
                return await _reset_one(cli, recorder, plan, name)

        results = await asyncio.gather(*(delete(vm.name) for vm in plan.vms))
        left = await azure_view(cli, plan.resource_group)
        still = [vm.name for vm in plan.vms if vm.name in left]
        writer.append_event("vm_reset_complete", f"Reset: {sum(results)} of {len(plan.vms)} "
                            "VMs deleted" + (f"; still present: {', '.join(still)}"
                                             if still else ""))
    return ExitCode.OK if all(results) and not still else ExitCode.FAILED


async def _reset_one(cli: AzCli, recorder: Recorder, plan: Plan, name: str) -> bool:
    """Delete one VM of the plan, only when a read says it is gone or this deployment's."""
    if (why := await _not_ours_to_delete(cli, plan, name)) is not None:
        recorder.apply(ResetStep(name, None, f"left in place: {why}",
                                 ("vm_reset_failed", f"Not deleting VM: {name}: {why}")))
        err(f"error: not deleting {name}: {why}")
        return False
    recorder.apply(ResetStep(name, VmState.DELETING,
                             log=("vm_reset_deletion", f"Deleting VM: {name} (reset)")))
    say(f"deleting {name}")
    gone = await cli.delete_vm(plan.resource_group, name, timeout=RESET_TIMEOUT)
    if gone.ok:
        await cli.delete_public_ip(plan.resource_group, name)
        recorder.apply(ResetStep(name, VmState.DELETED,
                                 log=("vm_reset_deleted", f"Deleted VM: {name} (reset)")))
        say(f"deleted {name}")
        return True
    error = gone.error.message if gone.error else "unknown error"
    recorder.apply(ResetStep(name, None, error,
                             ("vm_reset_failed", f"Could not delete VM: {name}: {error}")))
    err(f"error: could not delete {name}: {error}")
    return False


async def _not_ours_to_delete(cli: AzCli, plan: Plan, name: str) -> str | None:
    """Why reset must leave the VM alone: its state could not be read (azure-cli.md §6), or
    it lacks this deployment's tag. None when it is absent or ours."""
    seen = await look(cli, plan.spec(name), time.monotonic() + RESET_TIMEOUT)
    if seen.error is not None:
        return f"its state could not be read ({seen.error.code}: {seen.error.message})"
    if seen.absent:
        return None
    refused = refusal(seen.data, deployment_id=plan.deployment_id, adopt_untagged=False,
                      delete=True)
    return refused.message if refused else None


