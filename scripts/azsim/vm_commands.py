"""`az vm show/list/list-ip-addresses/delete/wait` and `az vm run-command invoke`, with
cloud-init's output."""

from __future__ import annotations

import math
import re
import time

from .context import Ctx, target
from .errors import CONFLICT, NO_TTY, AzError, http_error, not_found
from .output import WithResourceGroups, add_resource_group, resource_group_of
from .query import search
from .resources import iso, nic_resource, public_ip_resource, vm_resource
from .state import FOREVER, find, power_state, provisioning_state

CI_ERROR = ("('scripts_user', RuntimeError('Runparts: 1 failures (part-001) in 1 attempted "
            "commands'))")
CI_RECOVERABLE = "Failed at merging in cloud config part from part-001: empty cloud config"


def _existing_vm(ctx: Ctx, a: dict) -> tuple[dict, float]:
    rg, name = target(a)
    ctx.require_rg(rg)
    st, t = ctx.view()
    vm = find(st, "vms", rg, name)
    if vm is None:
        raise not_found("Microsoft.Compute/virtualMachines", rg, name)
    return vm, t


def cmd_vm_show(ctx: Ctx, a: dict):
    vm, t = _existing_vm(ctx, a)
    return vm_resource(vm, t, details=a["show_details"])


def cmd_vm_get_instance_view(ctx: Ctx, a: dict):
    return instance_view(*_existing_vm(ctx, a))


def cmd_vm_list(ctx: Ctx, a: dict):
    rg = a["resource_group"]
    if rg:
        ctx.require_rg(rg)
    st, t = ctx.view()
    vms = sorted(st["vms"].values(), key=lambda vm: vm["name"].lower())
    return WithResourceGroups([vm_resource(vm, t, details=a["show_details"]) for vm in vms
                               if not rg or vm["resource_group"].lower() == rg.lower()])


def cmd_vm_list_ip_addresses(ctx: Ctx, a: dict):
    """azure-cli's list-ip-addresses: every NIC attached to a VM (of the group and name,
    if given) with its private IPs and the public IPs they point to. It reads NICs and
    public IPs only, never a VM."""
    rg, name = a["resource_group"], a["name"]
    if rg:
        ctx.require_rg(rg)
    st, t = ctx.view()
    pips = {res["id"].lower(): res for res in
            (public_ip_resource(st, pip, t) for pip in st["public_ips"].values())}
    found = []
    for nic in sorted(st["nics"].values(), key=lambda nic: nic["name"].lower()):
        res = nic_resource(st, nic)
        if "virtualMachine" not in res:
            continue
        parts = res["virtualMachine"]["id"].split("/")
        vm_rg, vm_name = parts[4], parts[-1]
        if (rg and rg.lower() != vm_rg.lower()) or (name and name.lower() != vm_name.lower()):
            continue
        network: dict = {"privateIpAddresses": [], "publicIpAddresses": []}
        for conf in res["ipConfigurations"]:
            network["privateIpAddresses"].append(conf["privateIPAddress"])
            pip = pips.get(conf.get("publicIPAddress", {}).get("id", "").lower())
            if pip is not None:
                network["publicIpAddresses"].append({
                    "id": pip["id"], "ipAddress": pip.get("ipAddress"),
                    "ipAllocationMethod": pip["publicIPAllocationMethod"], "name": pip["name"],
                    "resourceGroup": resource_group_of(pip["id"]),
                    "zone": (pip.get("zones") or [None])[0]})
        found.append({"virtualMachine": {"name": vm_name, "network": network,
                                         "resourceGroup": vm_rg}})
    return WithResourceGroups(found)


def cmd_vm_delete(ctx: Ctx, a: dict):
    rg, name = target(a)
    if not a["yes"]:
        ctx.warn(NO_TTY)
        raise AzError("ERROR: Operation cancelled.")
    ctx.require_rg(rg)
    with ctx.tx() as (st, t):
        vm = find(st, "vms", rg, name)
        if vm is None:
            return None  # ARM answers 204
        if vm.get("deleting_since") is None:
            _start_delete(ctx, st, vm, t)
        gone = vm["gone_at"]
    if not a["no_wait"]:
        ctx.sleep_until(gone)
    return None


def _start_delete(ctx: Ctx, st: dict, vm: dict, t: float) -> None:
    scn, name = ctx.scn, vm["name"]
    gone = t + scn.seconds(name, vm["attempt"], "delete_seconds")
    vm.update(deleting_since=t, gone_at=gone, disk_vanishes=False,
              nic_reserved_until=gone + scn.nic_reservation_raw * scn.scale)
    # A VM deleted before it became Succeeded never did.
    st["succeeded_at"][name] = [x for x in st["succeeded_at"].get(name, []) if x <= t]
    for key in ("running_at", "ips_at"):
        if vm.get(key) is not None and vm[key] > t:
            vm[key] = None


def _provisioning_status(vm: dict, t: float) -> dict:
    """The ProvisioningState status; a failed one carries the Azure error code (§7)."""
    state = provisioning_state(vm, t)
    if state == "Failed":
        return {"code": f"ProvisioningState/failed/{vm['fail_code']}", "level": "Error",
                "displayStatus": "Provisioning failed", "message": vm["fail_message"],
                "time": iso(vm["ready_at"])}
    status = {"code": f"ProvisioningState/{state.lower()}", "level": "Info",
              "displayStatus": f"Provisioning {state.lower()}"}
    if state == "Succeeded":
        status["time"] = iso(vm["ready_at"])
    return status


def instance_view(vm: dict, t: float) -> dict:
    """`vm get-instance-view`, which `vm wait --custom` queries: the VM with
    instanceView.statuses. A failed VM never ran, so it shows as deallocated."""
    res = vm_resource(vm, t)
    statuses = [_provisioning_status(vm, t)]
    power = power_state(vm, t) or ("VM deallocated" if statuses[0]["level"] == "Error" else "")
    if power:
        statuses.append({"code": f"PowerState/{power.split()[-1]}", "level": "Info",
                         "displayStatus": power})
    res["instanceView"] = {"statuses": statuses}
    add_resource_group(res)
    return res


def cmd_vm_wait(ctx: Ctx, a: dict):
    rg, name = target(a)
    custom = a["custom"]
    if not custom and not any(a[k] for k in ("created", "deleted", "exists", "updated")):
        raise AzError("ERROR: incorrect usage: --created | --deleted | --exists | --updated | "
                      "--custom JMESPATH")
    interval = max(a["interval"], 1)
    for _ in range(max(math.ceil(a["timeout"] / interval), 1)):
        if _wait_satisfied(ctx, rg, name, a, custom):
            return None
        time.sleep(interval * ctx.scn.scale)
    return {}  # azure-cli returns (not raises) its timeout error, and prints it as {}


def _wait_satisfied(ctx: Ctx, rg: str, name: str, a: dict, custom: str | None) -> bool:
    """One poll of azure-cli's WaitCommandOperation."""
    st, t = ctx.view()
    vm = find(st, "vms", rg, name)
    if vm is None:
        if a["deleted"]:
            return True
        if a["created"]:
            return False
        ctx.require_rg(rg)
        raise not_found("Microsoft.Compute/virtualMachines", rg, name)
    if a["exists"]:
        return True
    state = provisioning_state(vm, t)
    if state == "Failed":
        raise AzError("ERROR: The operation failed")
    if (a["created"] or a["updated"]) and state == "Succeeded":
        return True
    # azure-cli's verify_property: the text is compiled and evaluated on every poll.
    return bool(custom) and bool(search(custom, instance_view(vm, t)))


# ================================================================ vm run-command invoke


def _cloud_init_call(script: str) -> dict | None:
    m = re.search(r"cloud-init\s+status([^;&|\n]*)", script)
    if m is None:
        return None
    flags = m.group(1).split()
    return {"long": any(f == "--long" or re.fullmatch(r"-[a-z]*l[a-z]*", f) for f in flags),
            "wait": any(f == "--wait" or re.fullmatch(r"-[a-z]*w[a-z]*", f) for f in flags)}


def cloud_init_text(vm: dict, at: float, *, long: bool, wait: bool, waited: float) -> str:
    """`cloud-init status [--long] [--wait]` as cloud-init 23.4+ prints it (tabular)."""
    ready = vm.get("cloud_init_at") is not None and at >= vm["cloud_init_at"]
    mode = vm.get("cloud_init") or "done"
    status, extended, errors = ("running", "running", [])
    if ready:
        status, extended, errors = {"error": ("error", "error", [CI_ERROR]),
                                    "degraded": ("done", "degraded done", [])
                                    }.get(mode, ("done", "done", []))
    text = "." * math.ceil(waited / 0.25) + "\n" if wait else ""
    text += f"status: {status}\n"
    if long:
        text += (f"extended_status: {extended}\nboot_status_code: enabled-by-generator\n"
                 "detail:\nDataSourceAzure [seed=/dev/sr0]\n")
        text += "errors:\n" + "".join(f"\t- {e}\n" for e in errors) if errors else "errors: []\n"
        if ready and mode == "degraded":
            text += f"recoverable_errors:\nWARNING:\n\t- {CI_RECOVERABLE}\n"
    return text


def _echo_after(script: str, operator: str) -> str:
    m = re.search(re.escape(operator) + r"\s*echo\s+(['\"]?)([^'\"|;&\n]*)\1", script)
    return m.group(2).strip() + "\n" if m else ""


def script_stdout(vm: dict, script: str, *, start: float, end: float, scale: float) -> str:
    """What the simulated VM prints for a script (see docs/az-simulator.md)."""
    ci = _cloud_init_call(script)
    ci_at = vm.get("cloud_init_at")
    if ci is not None:
        waited = max(0.0, min(ci_at or end, end) - start) / scale
        return cloud_init_text(vm, end, long=ci["long"], wait=ci["wait"], waited=waited)
    if "boot-finished" in script:
        exists = ci_at is not None and end >= ci_at and vm.get("cloud_init") != "never"
        return _echo_after(script, "&&" if exists else "||")
    m = re.fullmatch(r"\s*echo\s+(['\"]?)([^\n]*?)\1\s*", script)
    return m.group(2) + "\n" if m else ""


def _script_end(ctx: Ctx, vm: dict, script: str, t: float) -> float | None:
    """When the run-command returns; None for never (cloud-init that never finishes)."""
    end = t + ctx.scn.seconds(vm["name"], vm["attempt"], "run_command_seconds")
    ci = _cloud_init_call(script)
    if ci is None:
        return end
    if vm.get("cloud_init") == "never" or vm.get("cloud_init_at") is None:
        return None
    return max(end, vm["cloud_init_at"]) if ci["wait"] else end


def cmd_run_command(ctx: Ctx, a: dict):
    rg, name = target(a)
    ctx.require_rg(rg)
    script = "\n".join(a["scripts"] or [])
    with ctx.tx() as (st, t):
        vm = find(st, "vms", rg, name)
        if vm is None:
            raise not_found("Microsoft.Compute/virtualMachines", rg, name)
        if provisioning_state(vm, t) == "Deleting" or power_state(vm, t) != "VM running":
            raise http_error("OperationNotAllowed", f"Operation 'RunCommand' is not allowed on "
                             f"VM '{name}' since the VM is not running.")
        if (vm.get("run_command_busy_until") or 0) > t:
            raise http_error("Conflict", CONFLICT)
        end = _script_end(ctx, vm, script, t)
        vm["run_command_busy_until"] = FOREVER if end is None else end
        snapshot = dict(vm)
    ctx.sleep_until(FOREVER if end is None else end)
    stdout = script_stdout(snapshot, script, start=t, end=end, scale=ctx.scn.scale)[-4096:]
    return {"value": [{"code": "ProvisioningState/succeeded",
                       "displayStatus": "Provisioning succeeded", "level": "Info",
                       "message": f"Enable succeeded: \n[stdout]\n{stdout}\n[stderr]\n"}]}
