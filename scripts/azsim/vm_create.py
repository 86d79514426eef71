"""`az vm create`: plan the deployment under the lock, then poll for its end as azure-cli does."""

from __future__ import annotations

import os

from .budget import remaining_header, spend_put_vm
from .context import Ctx
from .errors import (
    MARKED_FOR_DELETION,
    AzError,
    deployment_error,
    failure_message,
    nic_reserved_message,
    preflight_error,
    put_vm_throttled,
)
from .lro import await_deployment, poll_after
from .resources import image_reference, random_hex
from .scenario import Scenario
from .state import bump, nic_reserved, provisioning_state

QUICK_SECONDS = 2.0  # re-deploys and rejected PUTs, before scaling
ACCEPT_SECONDS = 1.0  # validation and the deployment PUT's round trip, before scaling
PLACEHOLDER_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ example"


def _read_file_arg(path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise AzError(f"ERROR: [Errno {e.errno}] {e.strerror}: '{path}'") from None


def _vm_spec(ctx: Ctx, a: dict) -> dict:
    """The requested VM properties, after azure-cli's client-side defaults."""
    name = a["name"]
    keys = [_read_file_arg(v).strip() if os.path.isfile(os.path.expanduser(v)) else v
            for v in a["ssh_key_values"] or []]
    if not keys and a["authentication_type"] != "password":
        keys = [PLACEHOLDER_KEY]  # --ssh-key-name / --generate-ssh-keys: content not modelled
    pip = a["public_ip_address"]
    tags = dict(t.partition("=")[::2] for t in a["tags"] or [])
    return {
        "name": name, "resource_group": a["resource_group"],
        "location": a["location"] or ctx.scn.location, "size": a["size"], "zone": a["zone"],
        "image": a["image"] or "Ubuntu2204", "priority": a["priority"],
        "eviction_policy": a["eviction_policy"], "max_price": a["max_price"],
        "admin_username": a["admin_username"] or "azureuser", "ssh_keys": keys,
        "auth_type": a["authentication_type"] or "ssh", "computer_name": a["computer_name"],
        "os_disk_size_gb": a["os_disk_size_gb"], "storage_sku": a["storage_sku"], "tags": tags,
        "nic_delete_option": a["nic_delete_option"],
        "os_disk_delete_option": a["os_disk_delete_option"],
        "custom_data": _read_file_arg(a["custom_data"]) if a["custom_data"] else None,
        "nic": f"{name}VMNic", "vnet": a["vnet_name"] or f"{name}VNET",
        "subnet": a["subnet"] or f"{name}Subnet", "nsg": a["nsg"],
        "public_ip_name": f"{name}PublicIP" if pip is None else (pip or None),
        "public_ip_sku": a["public_ip_sku"] or "Standard",
        "accelerated": bool(a["accelerated_networking"]),
    }


def cmd_vm_create(ctx: Ctx, a: dict):
    ctx.require_rg(a["resource_group"])
    spec = _vm_spec(ctx, a)
    with ctx.tx() as (st, t):
        plan = _admit(ctx, st, t, spec)
    if plan["kind"] == "preflight":
        raise preflight_error(plan["code"], plan["message"])
    if plan["kind"] == "throttled":
        raise put_vm_throttled(plan["op"], plan["retry_after"], plan["remaining"],
                               debug=a["debug"])
    accepted = t + ACCEPT_SECONDS * ctx.scn.scale
    if a["no_wait"]:  # the deployment was accepted; how it ends is not this client's business
        ctx.sleep_until(accepted)
        return None
    if plan["kind"] == "rejected":
        ctx.sleep_until(poll_after(ctx, accepted, t + QUICK_SECONDS * ctx.scn.scale))
        raise deployment_error(spec["resource_group"], spec["name"], plan["code"],
                               plan["message"], nested=False)
    return await_deployment(ctx, spec, plan, accepted)


def _admit(ctx: Ctx, st: dict, t: float, spec: dict) -> dict:
    """Preflight validation, then the VM PUT, which spends one call of the PutVM budget."""
    name, scn = spec["name"], ctx.scn
    attempt = st["create_attempts"].get(name, 0) + 1
    plan = _preflight(scn, spec, attempt)
    if plan is None:
        throttled = spend_put_vm(st, scn, t)
        if throttled is not None:  # a 429 on the PUT is not an attempt
            bump(st["put_vm_throttled"], throttled["op"])
            return {"kind": "throttled", **throttled, "remaining": remaining_header(st, scn, t)}
    st["create_attempts"][name] = attempt
    return plan or _plan_deployment(ctx, st, t, spec, attempt)


def _preflight(scn: Scenario, spec: dict, attempt: int) -> dict | None:
    """A rule's preflight failure: the deployment is invalid, so nothing is PUT."""
    name = spec["name"]
    fail = scn.setting(name, attempt, "fail")
    if fail and scn.setting(name, attempt, "fail_phase", "async") == "preflight":
        message = scn.setting(name, attempt, "fail_message") or failure_message(fail, spec)
        return {"kind": "preflight", "code": fail, "message": message}
    return None


def _rejected(code: str, message: str) -> dict:
    return {"kind": "rejected", "code": code, "message": message}


def _plan_of(vm: dict) -> dict:
    return {"kind": "deploy", "op": vm["op"], "ready_at": vm["ready_at"],
            "outcome": vm["outcome"], "code": vm["fail_code"], "message": vm["fail_message"]}


def _plan_deployment(ctx: Ctx, st: dict, t: float, spec: dict, attempt: int) -> dict:
    """Decide, under the lock, what this create's PUT does: get rejected, or deploy."""
    name = spec["name"]
    vm = st["vms"].get(name)
    if vm is not None and vm["resource_group"].lower() != spec["resource_group"].lower():
        return _rejected("InvalidParameter", f"az-sim keeps one namespace of VM names: '{name}' "
                         f"exists in resource group '{vm['resource_group']}'.")
    if vm is not None and vm.get("deleting_since") is not None:
        return _rejected("OperationNotAllowed", MARKED_FOR_DELETION.format(name=name))
    if vm is not None:
        return _redeploy(ctx, st, t, vm, spec, attempt)
    nic = st["nics"].get(spec["nic"])
    if nic is not None and nic_reserved(nic, t):
        return _rejected("NicReservedForAnotherVm",
                         nic_reserved_message(nic, ctx.scn.nic_reservation_raw))
    return _fresh_deploy(ctx, st, t, spec, attempt)


def _fresh_deploy(ctx: Ctx, st: dict, t: float, spec: dict, attempt: int) -> dict:
    name, rg, scn = spec["name"], spec["resource_group"], ctx.scn
    nic = _ensure_nic(st, spec)
    pip = _ensure_public_ip(ctx, st, spec, nic) if spec["public_ip_name"] else None
    vm_hex = random_hex()
    disk = f"{name}_OsDisk_1_{vm_hex}"  # the service names it, with a new suffix each create
    st["disks"][disk] = {"name": disk, "resource_group": rg, "location": spec["location"],
                         "zone": spec["zone"], "size_gb": spec["os_disk_size_gb"] or 30,
                         "sku": spec["storage_sku"] or "Premium_LRS", "vm": name,
                         "time_created": t}
    vm = {**spec, "vm_hex": vm_hex, "os_disk": disk, "private_ip": nic["private_ip"],
          "mac": nic["mac"], "public_ip": pip["address"] if pip else None, "time_created": t}
    st["vms"][name] = vm
    return _start_operation(ctx, st, vm, t, attempt,
                            seconds=scn.seconds(name, attempt, "create_seconds"),
                            fail=scn.setting(name, attempt, "fail"),
                            hang=scn.setting(name, attempt, "hang", False), redeploy=False)


def _ensure_nic(st: dict, spec: dict) -> dict:
    """A leftover NIC of the same name is reused (incremental deployment), keeping its IP."""
    nic = st["nics"].get(spec["nic"])
    if nic is None:
        n = bump(st, "private_counter") - 1
        nic = {"name": spec["nic"], "resource_group": spec["resource_group"],
               "location": spec["location"], "private_ip": f"10.0.{n // 250}.{4 + n % 250}",
               "mac": "00-0D-3A-" + "-".join(f"{b:02X}" for b in os.urandom(3)),
               "ipconfig": f"ipconfig{spec['name']}", "vnet": spec["vnet"],
               "subnet": spec["subnet"]}
        st["nics"][spec["nic"]] = nic
    nic.update(vm=spec["name"], reserved_until=None, reserved_for=None,
               public_ip=spec["public_ip_name"], accelerated=spec["accelerated"])
    return nic


def _ensure_public_ip(ctx: Ctx, st: dict, spec: dict, nic: dict) -> dict:
    pip = st["public_ips"].get(spec["public_ip_name"])
    if pip is None:
        n = bump(st, "public_counter") - 1
        address = ctx.scn.public_ip or f"20.{100 + n // 62500}.{n // 250 % 250}.{1 + n % 250}"
        pip = {"name": spec["public_ip_name"], "resource_group": spec["resource_group"],
               "location": spec["location"], "sku": spec["public_ip_sku"], "zone": spec["zone"],
               "address": address}
        st["public_ips"][pip["name"]] = pip
    pip["nic"] = nic["name"]
    return pip


def _start_operation(ctx: Ctx, st: dict, vm: dict, t: float, attempt: int, *, seconds: float,
                     fail: str | None, hang: bool, redeploy: bool) -> dict:
    """Write the operation's whole future into the record: when it ends, and how."""
    scn, name = ctx.scn, vm["name"]
    ready = None if hang else t + seconds
    message = (scn.setting(name, attempt, "fail_message") or failure_message(fail, vm)
               if fail else None)
    vm.update(op=random_hex(), attempt=attempt, created_at=t, ready_at=ready, redeploy=redeploy,
              outcome="Failed" if fail else "Succeeded", fail_code=fail, fail_message=message,
              gone_at=None, disk_vanishes=False)
    if fail and ready is not None and not scn.setting(name, attempt, "left_failed", True):
        # The VM vanishes when its deployment fails; its NIC stays behind, reserved.
        vm.update(gone_at=ready, disk_vanishes=True,
                  nic_reserved_until=ready + scn.nic_reservation_raw * scn.scale)
    if not fail and ready is not None:
        st["succeeded_at"].setdefault(name, []).append(ready)
        if vm.get("running_at") is None:
            vm.update(running_at=ready, cloud_init=scn.setting(name, attempt, "cloud_init", "done"),
                      cloud_init_at=ready + scn.seconds(name, attempt, "cloud_init_seconds"))
    early = t if scn.public_ip_early and vm["public_ip_sku"] == "Standard" else None
    known = [x for x in (vm.get("ips_at"), vm.get("running_at"), early) if x is not None]
    vm["ips_at"] = min(known) if known else None
    bump(st["create_counts"], name)
    return _plan_of(vm)


MUTABLE = ("size", "priority", "eviction_policy", "max_price", "tags", "custom_data")


def _immutable_change(vm: dict, spec: dict) -> str | None:
    if (vm["zone"] or None) != (spec["zone"] or None):
        return "zones"
    if image_reference(vm["image"]) != image_reference(spec["image"]):
        return "imageReference"
    if vm["admin_username"] != spec["admin_username"]:
        return "osProfile.adminUsername"
    return None


def _redeploy(ctx: Ctx, st: dict, t: float, vm: dict, spec: dict, attempt: int) -> dict:
    """A create of an existing VM: ARM updates it in place (no existence check in az)."""
    change = _immutable_change(vm, spec)
    if change:
        return _rejected("PropertyChangeNotAllowed", f"Changing property '{change}' is not "
                         "allowed.")
    state = provisioning_state(vm, t)
    if state in ("Creating", "Updating"):  # join the operation in flight
        bump(st["create_counts"], vm["name"])
        return _plan_of(vm)
    vm.update({key: spec[key] for key in MUTABLE})
    scn, name = ctx.scn, vm["name"]
    if state == "Failed":  # a re-PUT retries the allocation, so the rules apply again
        return _start_operation(ctx, st, vm, t, attempt,
                                seconds=scn.seconds(name, attempt, "create_seconds"),
                                fail=scn.setting(name, attempt, "fail"),
                                hang=scn.setting(name, attempt, "hang", False), redeploy=True)
    return _start_operation(ctx, st, vm, t, attempt, seconds=QUICK_SECONDS * scn.scale,
                            fail=None, hang=False, redeploy=True)
