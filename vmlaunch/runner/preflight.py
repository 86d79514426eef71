"""What `deploy` finds out before it writes anything: the state files are usable, the
resource group exists (and its location), and what Azure already has of this deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli
from vmlaunch.azure.look import owner
from vmlaunch.display.views import Display
from vmlaunch.errors import ExitCode, RunnerError
from vmlaunch.plans.plan import Plan
from vmlaunch.state.statefile import StateFileError, load_state


class CannotRun(RunnerError, exit_code=ExitCode.CANNOT_RUN):
    """Exit 3: a prerequisite is missing (NATS required but unreachable, no resource group)."""


class BadInput(RunnerError, exit_code=ExitCode.BAD_INPUT):
    """Exit 2: the input cannot be used (e.g. a state file of another deployment)."""


async def resolve_location(az: AzCli, plan: Plan) -> Plan:
    """The plan with every VM's location (one `az group show` when some VM has none)."""
    if all(vm.location for vm in plan.vms):
        return plan
    group = plan.resource_group
    result = await az.group_show(group)
    if result.not_found:
        raise CannotRun(f"resource group {group!r} does not exist; create it first "
                        "(az group create) or fix the plan")
    if not result.ok or not isinstance(result.data, dict):
        message = result.error.message if result.error else "no answer"
        raise CannotRun(f"cannot read resource group {group!r}: {message}")
    return plan.with_location(str(result.data.get("location")))


def read_files(state_file: Path, events_file: Path, *, plan: Plan,
               display: Display) -> tuple[dict[str, Any], set[str]]:
    """Both files checked (bad: exit 2) and writable (else exit 3), before any az call."""
    try:
        loaded = load_state(state_file, events_file, writable=True,
                            deployment_id=plan.deployment_id)
    except StateFileError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise CannotRun(f"cannot use the state files: {exc}") from None
    if loaded.rebuilt:
        display.note(loaded.rebuilt, warning=True)
    return loaded.data, loaded.event_ids


async def survey(az: AzCli, plan: Plan, display: Display) -> tuple[dict[str, str], list[str]]:
    """One `az vm list -d`: the provisioning state of each VM of ours, and the possible
    leaks (ours, not in the plan: reported, never deleted)."""
    result = await az.list_vms(plan.resource_group)
    if not result.ok or not isinstance(result.data, list):
        message = result.error.message if result.error else "unreadable output"
        display.note(f"az vm list failed ({message}); every VM will be looked at by "
                     "its launcher", warning=True)
        return {}, []
    # Only this deployment's VMs: another one of the same name is never "already ready";
    # its launcher finds out whose it is.
    found = {vm.get("name"): vm for vm in result.data
             if isinstance(vm, dict) and owner(vm) == plan.deployment_id}
    leaks = sorted(name for name in found if name not in plan.names)
    if leaks:
        display.note(f"possible leak: VMs tagged {TAG_DEPLOYMENT}={plan.deployment_id} that "
                     f"are not in the plan (left alone): {', '.join(leaks)}", warning=True)
    return {name: str(vm.get("provisioningState", "")) for name, vm in found.items()}, leaks
