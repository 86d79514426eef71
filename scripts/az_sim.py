"""Azure CLI simulator: behaves like `az` 2.91.0 from outside, for the VM commands we use.

A VM's provisioning state is a pure function of the times stored in its record, so every
process computes it lazily and a killed client does not stop provisioning (as in Azure).
The JSON state file is shared by many concurrent processes: writers take an exclusive flock
on a sidecar lock file and replace the file atomically; readers take no lock.
See docs/az-simulator.md.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from az_sim_cli import (
    AzError,
    Opt,
    UsageError,
    add_resource_group,
    compile_query,
    format_output,
    http_error,
    parse_args,
    search,
    truthy,
)

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
FOREVER = 1e18  # a busy-until time that never comes (JSON has no infinity)
QUICK_SECONDS = 2.0  # re-deploys and rejected PUTs, before scaling
DEFAULTS = {"create_seconds": 60.0, "delete_seconds": 20.0, "run_command_seconds": 20.0,
            "cloud_init_seconds": 0.0}
RULE_KEYS = {"match", "attempts", "fail", "fail_phase", "fail_message", "left_failed", "hang",
             "cloud_init", *DEFAULTS}
TOP_KEYS = {"time_scale", "location", "resource_groups", "logged_in", "public_ip",
            "public_ip_early", "nic_reservation_seconds", "defaults", "throttle", "vms"}
CLOUD_INIT_MODES = ("done", "degraded", "error", "never")


def _hex() -> str:
    return os.urandom(16).hex()


def _guid(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _bump(counter: dict, key: str) -> int:
    counter[key] = counter.get(key, 0) + 1
    return counter[key]


# ================================================================ scenario


class ScenarioError(ValueError):
    pass


def _check_number(problems: list[str], where: str, value, *, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        problems.append(f"{where} must be a number >= {minimum:g}, not {value!r}")


def _check_rule(problems: list[str], where: str, rule) -> None:
    if not isinstance(rule, dict):
        problems.append(f"{where} must be a mapping")
        return
    problems.extend(f"{where}: unknown key {k!r}" for k in sorted(set(rule) - RULE_KEYS))
    if not isinstance(rule.get("match"), str):
        problems.append(f"{where}.match must be a string (an fnmatch pattern)")
    attempts = rule.get("attempts")
    if attempts is not None and not (isinstance(attempts, list) and all(
            isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in attempts)):
        problems.append(f"{where}.attempts must be a list of integers >= 1")
    for key in DEFAULTS.keys() & rule.keys():
        _check_number(problems, f"{where}.{key}", rule[key])
    if rule.get("fail_phase", "async") not in ("async", "preflight"):
        problems.append(f"{where}.fail_phase must be async or preflight")
    if rule.get("cloud_init", "done") not in CLOUD_INIT_MODES:
        problems.append(f"{where}.cloud_init must be one of {', '.join(CLOUD_INIT_MODES)}")
    for key in ("left_failed", "hang"):
        if key in rule and not isinstance(rule[key], bool):
            problems.append(f"{where}.{key} must be true or false")
    for key in ("fail", "fail_message"):
        if rule.get(key) is not None and not isinstance(rule[key], str):
            problems.append(f"{where}.{key} must be a string")


def _check_scenario(data: dict) -> list[str]:
    """Every problem of a scenario, so that one run reports them all."""
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(data) - TOP_KEYS)]
    _check_number(problems, "time_scale", data.get("time_scale", 1.0), minimum=1e-6)
    _check_number(problems, "nic_reservation_seconds", data.get("nic_reservation_seconds", 0))
    for key in ("logged_in", "public_ip_early"):
        if not isinstance(data.get(key, False), bool):
            problems.append(f"{key} must be true or false")
    for key in ("location", "public_ip"):
        if not isinstance(data.get(key, ""), str):
            problems.append(f"{key} must be a string")
    groups = data.get("resource_groups", [])
    if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        problems.append("resource_groups must be a list of names")
    defaults = data.get("defaults", {})
    if isinstance(defaults, dict):
        unknown = sorted(set(defaults) - DEFAULTS.keys())
        problems.extend(f"defaults: unknown key {k!r}" for k in unknown)
        for key, value in defaults.items():
            _check_number(problems, f"defaults.{key}", value)
    else:
        problems.append("defaults must be a mapping")
    throttle = data.get("throttle", {})
    if not isinstance(throttle, dict) or set(throttle) - {"first_calls", "code", "commands",
                                                          "message"}:
        problems.append("throttle must be a mapping of first_calls, code, commands, message")
    else:
        _check_number(problems, "throttle.first_calls", throttle.get("first_calls", 0))
        if not isinstance(throttle.get("commands", []), list):
            problems.append("throttle.commands must be a list such as ['vm create']")
    rules = data.get("vms", [])
    if isinstance(rules, list):
        for i, rule in enumerate(rules):
            _check_rule(problems, f"vms[{i}]", rule)
    else:
        problems.append("vms must be a list of rules")
    return problems


class Scenario:
    """The AZ_SIM_SCENARIO file. Durations it returns are already multiplied by time_scale."""

    def __init__(self, data: dict | None = None) -> None:
        data = data or {}
        self.scale = float(data.get("time_scale", 1.0))
        self.location = data.get("location", "westus2")
        groups = data.get("resource_groups")
        self.groups = None if groups is None else {g.lower() for g in groups}
        self.logged_in = data.get("logged_in", True)
        self.public_ip = data.get("public_ip")
        self.public_ip_early = data.get("public_ip_early", False)
        self.nic_reservation_raw = float(data.get("nic_reservation_seconds", 0))
        self.defaults = {**DEFAULTS, **data.get("defaults", {})}
        self.throttle = data.get("throttle") or {}
        self.rules = data.get("vms") or []

    def rg_exists(self, rg: str) -> bool:
        return self.groups is None or rg.lower() in self.groups

    def setting(self, name: str, attempt: int, key: str, default=None):
        """Per key, the first rule that matches the name and attempt and sets the key wins."""
        for rule in self.rules:
            attempts = rule.get("attempts")
            if key in rule and fnmatchcase(name, rule["match"]) and (
                    attempts is None or attempt in attempts):
                return rule[key]
        return self.defaults.get(key, default)

    def seconds(self, name: str, attempt: int, key: str) -> float:
        return float(self.setting(name, attempt, key)) * self.scale


def load_scenario(path: str | None) -> Scenario:
    if not path:
        return Scenario()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text)  # JSON is YAML too, and needs no yaml import
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ScenarioError(f"{path} is not valid YAML: {e}") from None
    data = {} if data is None else data
    problems = _check_scenario(data) if isinstance(data, dict) else ["it must be a mapping"]
    if problems:
        raise ScenarioError(f"{path}: " + "; ".join(problems))
    return Scenario(data)


# ================================================================ state file


def empty_state() -> dict:
    return {"vms": {}, "nics": {}, "public_ips": {}, "disks": {}, "create_counts": {},
            "create_attempts": {}, "succeeded_at": {}, "calls": {}, "throttle_seen": 0,
            "private_counter": 0, "public_counter": 0}


class StateStore:
    """The JSON state file shared by every az-sim process."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return {**empty_state(), **json.load(f)}
        except FileNotFoundError:
            return empty_state()

    @contextmanager
    def transaction(self):
        """Yield the state for a read-modify-write under the lock; save it if no error."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                           encoding="utf-8") as f:
                json.dump(state, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        finally:
            os.close(fd)  # closing releases the flock


# ================================================================ time model


def provisioning_state(vm: dict, now: float) -> str:
    if vm.get("deleting_since") is not None:
        return "Deleting"
    if vm.get("ready_at") is None or now < vm["ready_at"]:
        return "Updating" if vm.get("redeploy") else "Creating"
    return vm["outcome"]


def ips_visible(vm: dict, now: float) -> bool:
    return vm.get("ips_at") is not None and now >= vm["ips_at"]


def power_state(vm: dict, now: float) -> str:
    if provisioning_state(vm, now) == "Creating" and vm.get("ready_at"):
        halfway = (vm["created_at"] + vm["ready_at"]) / 2
        return "VM starting" if now >= halfway and vm["outcome"] == "Succeeded" else ""
    running = vm.get("running_at") is not None and now >= vm["running_at"]
    return "VM running" if running else ""


def materialize(state: dict, now: float) -> dict:
    """Apply the transitions that are due: a VM past gone_at vanishes with its side resources."""
    for name, vm in list(state["vms"].items()):
        if vm.get("gone_at") is not None and now >= vm["gone_at"]:
            _remove_vm(state, name, vm)
    return state


def _remove_vm(state: dict, name: str, vm: dict) -> None:
    del state["vms"][name]
    nic = state["nics"].get(vm["nic"])
    if nic is not None and nic.get("vm") == name:
        if vm.get("nic_delete_option") == "Delete":
            del state["nics"][vm["nic"]]
        else:
            nic.update(vm=None, reserved_for=name, reserved_until=vm.get("nic_reserved_until"))
    disk = state["disks"].get(vm["os_disk"])
    if disk is not None and disk.get("vm") == name:
        if vm.get("os_disk_delete_option") == "Delete" or vm.get("disk_vanishes"):
            del state["disks"][vm["os_disk"]]
        else:
            disk["vm"] = None


def nic_reserved(nic: dict, now: float) -> bool:
    return nic.get("vm") is None and (nic.get("reserved_until") or 0) > now


def find(state: dict, kind: str, rg: str, name: str) -> dict | None:
    """A resource by name; names are one namespace, a record in another RG is not found."""
    item = state[kind].get(name)
    return item if item is not None and item["resource_group"].lower() == rg.lower() else None


# ================================================================ resource shapes

ARM = f"/subscriptions/{SUBSCRIPTION}/resourceGroups"
IMAGE_ALIASES = {
    "ubuntu2204": ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "latest"),
    "ubuntu2404": ("Canonical", "ubuntu-24_04-lts", "server", "latest"),
    "debian11": ("Debian", "debian-11", "11-backports-gen2", "latest"),
    "debian12": ("Debian", "debian-12", "12-gen2", "latest"),
}
EXACT_VERSIONS = {"0001-com-ubuntu-server-jammy": "22.04.202501010"}


def vm_id(rg: str, name: str) -> str:
    return f"{ARM}/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


def net_id(rg: str, kind: str, name: str) -> str:
    return f"{ARM}/{rg}/providers/Microsoft.Network/{kind}/{name}"


def disk_id(rg: str, name: str) -> str:
    # ARM returns disk ids (and managedBy) with the resource group upper-cased.
    return f"{ARM}/{rg.upper()}/providers/Microsoft.Compute/disks/{name}"


def image_reference(image: str) -> dict:
    parts = IMAGE_ALIASES.get(image.lower()) or tuple(image.split(":"))
    if len(parts) != 4:
        return {"id": image}
    publisher, offer, sku, version = parts
    exact = version if version != "latest" else EXACT_VERSIONS.get(offer, "1.0.20250101")
    return {"exactVersion": exact, "offer": offer, "publisher": publisher, "sku": sku,
            "version": version}


def _os_profile(vm: dict) -> dict:
    linux = {"disablePasswordAuthentication": vm["auth_type"] != "password",
             "patchSettings": {"assessmentMode": "ImageDefault", "patchMode": "ImageDefault"},
             "provisionVMAgent": True}
    if vm["ssh_keys"]:
        path = f"/home/{vm['admin_username']}/.ssh/authorized_keys"
        linux["ssh"] = {"publicKeys": [{"keyData": k, "path": path} for k in vm["ssh_keys"]]}
    return {"adminUsername": vm["admin_username"], "allowExtensionOperations": True,
            "computerName": vm["computer_name"] or vm["name"], "linuxConfiguration": linux,
            "requireGuestProvisionSignal": True, "secrets": []}


def _storage_profile(vm: dict) -> dict:
    os_disk = {"caching": "ReadWrite", "createOption": "FromImage",
               "deleteOption": vm["os_disk_delete_option"] or "Detach",
               "diskSizeGB": vm["os_disk_size_gb"] or 30,
               "managedDisk": {"id": disk_id(vm["resource_group"], vm["os_disk"]),
                               "storageAccountType": vm["storage_sku"] or "Premium_LRS"},
               "name": vm["os_disk"], "osType": "Linux"}
    return {"dataDisks": [], "diskControllerType": "SCSI",
            "imageReference": image_reference(vm["image"]), "osDisk": os_disk}


def vm_resource(vm: dict, now: float, *, details: bool = False) -> dict:
    """The VM as `vm show` prints it; keys ARM does not return are omitted, not null."""
    rg, name = vm["resource_group"], vm["name"]
    nic_ref = {"id": net_id(rg, "networkInterfaces", vm["nic"])}
    if vm["nic_delete_option"]:
        nic_ref["deleteOption"] = vm["nic_delete_option"]
    res = {"hardwareProfile": {"vmSize": vm["size"]}, "id": vm_id(rg, name),
           "location": vm["location"], "name": name,
           "networkProfile": {"networkInterfaces": [nic_ref]}, "osProfile": _os_profile(vm),
           "provisioningState": provisioning_state(vm, now),
           "securityProfile": {"securityType": "TrustedLaunch",
                               "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}},
           "storageProfile": _storage_profile(vm), "timeCreated": _iso(vm["time_created"]),
           "type": "Microsoft.Compute/virtualMachines", "vmId": _guid(vm["vm_hex"])}
    if vm["priority"]:
        res["priority"] = vm["priority"]
    if vm["priority"] in ("Spot", "Low"):
        res["evictionPolicy"] = vm["eviction_policy"] or "Deallocate"
        price = vm["max_price"]
        res["billingProfile"] = {"maxPrice": -1.0 if price is None else price}
    if vm["tags"]:
        res["tags"] = vm["tags"]
    if vm["zone"]:
        res["zones"] = [vm["zone"]]
    if details:
        visible = ips_visible(vm, now)
        res.update(fqdns="", macAddresses=vm["mac"] if visible else "",
                   powerState=power_state(vm, now),
                   privateIps=vm["private_ip"] if visible else "",
                   publicIps=(vm["public_ip"] or "") if visible else "")
    return res


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def create_output(vm: dict) -> dict:
    out = {"fqdns": "", "id": vm_id(vm["resource_group"], vm["name"]),
           "location": vm["location"], "macAddress": vm["mac"], "powerState": "VM running",
           "privateIpAddress": vm["private_ip"], "publicIpAddress": vm["public_ip"] or ""}
    if vm["zone"]:
        out["zones"] = vm["zone"]
    return out


def nic_resource(state: dict, nic: dict) -> dict:
    rg, name = nic["resource_group"], nic["name"]
    nid = net_id(rg, "networkInterfaces", name)
    ipconf = {"id": f"{nid}/ipConfigurations/{nic['ipconfig']}", "name": nic["ipconfig"],
              "primary": True, "privateIPAddress": nic["private_ip"],
              "privateIPAddressVersion": "IPv4", "privateIPAllocationMethod": "Dynamic",
              "provisioningState": "Succeeded",
              "subnet": {"id": net_id(rg, "virtualNetworks", f"{nic['vnet']}/subnets/"
                                      f"{nic['subnet']}")},
              "type": "Microsoft.Network/networkInterfaces/ipConfigurations"}
    if nic["public_ip"] and find(state, "public_ips", rg, nic["public_ip"]):
        ipconf["publicIPAddress"] = {"id": net_id(rg, "publicIPAddresses", nic["public_ip"])}
    res = {"enableAcceleratedNetworking": nic["accelerated"], "enableIPForwarding": False,
           "id": nid, "ipConfigurations": [ipconf], "location": nic["location"],
           "macAddress": nic["mac"], "name": name, "nicType": "Standard",
           "provisioningState": "Succeeded", "type": "Microsoft.Network/networkInterfaces"}
    if nic["vm"]:
        res["virtualMachine"] = {"id": vm_id(rg, nic["vm"])}
    return res


def attached_nic(state: dict, pip: dict) -> dict | None:
    nic = find(state, "nics", pip["resource_group"], pip.get("nic") or "")
    return nic if nic is not None and nic["public_ip"] == pip["name"] else None


def public_ip_resource(state: dict, pip: dict, now: float) -> dict:
    rg = pip["resource_group"]
    standard = pip["sku"] == "Standard"
    res = {"id": net_id(rg, "publicIPAddresses", pip["name"]), "idleTimeoutInMinutes": 4,
           "ipTags": [], "location": pip["location"], "name": pip["name"],
           "provisioningState": "Succeeded", "publicIPAddressVersion": "IPv4",
           "publicIPAllocationMethod": "Static" if standard else "Dynamic",
           "sku": {"name": pip["sku"], "tier": "Regional"},
           "type": "Microsoft.Network/publicIPAddresses"}
    nic = attached_nic(state, pip)
    vm = state["vms"].get(nic["vm"]) if nic and nic["vm"] else None
    if standard or (vm is not None and ips_visible(vm, now)):
        res["ipAddress"] = pip["address"]  # a Basic (dynamic) address exists only while in use
    if nic is not None:
        nid = net_id(rg, "networkInterfaces", nic["name"])
        res["ipConfiguration"] = {"id": f"{nid}/ipConfigurations/{nic['ipconfig']}"}
    if pip["zone"] and standard:
        res["zones"] = [pip["zone"]]
    return res


def disk_resource(disk: dict) -> dict:
    rg = disk["resource_group"]
    res = {"diskSizeGB": disk["size_gb"], "diskState": "Attached" if disk["vm"] else "Unattached",
           "id": disk_id(rg, disk["name"]), "location": disk["location"], "name": disk["name"],
           "osType": "Linux", "provisioningState": "Succeeded",
           "sku": {"name": disk["sku"], "tier": disk["sku"].split("_")[0]},
           "timeCreated": _iso(disk["time_created"]), "type": "Microsoft.Compute/disks"}
    if disk["vm"]:
        res["managedBy"] = f"{ARM}/{rg.upper()}/providers/Microsoft.Compute/virtualMachines/" \
                           f"{disk['vm']}"
    if disk["zone"]:
        res["zones"] = [disk["zone"]]
    return res


# ================================================================ error texts

DEPLOY_MESSAGE = ("At least one resource deployment operation failed. Please list deployment "
                  "operations for details. Please see https://aka.ms/arm-deployment-operations "
                  "for usage details.")
TERMINAL_FAILED = ("The resource write operation failed to complete successfully, because it "
                   "reached terminal provisioning state 'Failed'.")
ALLOCATION = ("Allocation failed. We do not have sufficient capacity for the requested VM size "
              "in this {where}. Read more about improving likelihood of allocation success at "
              "http://aka.ms/allocation-guidance")
SITE = "/opt/az/lib/python3.13/site-packages"
TRACEBACK_HEAD = (
    "ERROR: The command failed with an unexpected error. Here is the traceback:\n"
    "ERROR: The content for this response was already consumed\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/__init__.py", line 706, in _run_job\n'
    "    result = cmd_copy(params)\n"
    f'  File "{SITE}/azure/cli/command_modules/vm/custom.py", line 1248, in create_vm\n'
    "    LongRunningOperation(cmd.cli_ctx)(client.begin_create_or_update(resource_group_name, "
    "deployment_name, deployment))\n"
    f'  File "{SITE}/azure/mgmt/resource/resources/v2025_04_01/operations/_operations.py", '
    "line 11174, in _create_or_update_initial\n"
    "    raise HttpResponseError(response=response, error_format=ARMErrorFormat)\n"
    "azure.core.exceptions.HttpResponseError: ")
TRACEBACK_TAIL = (
    "\nDuring handling of the above exception, another exception occurred:\n\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/arm.py", line 109, in '
    "handle_template_based_exception\n"
    "    raise CLIError(ex.inner_exception.error.message)\n"
    "AttributeError: 'NoneType' object has no attribute 'error'\n"
    "\nDuring handling of the above exception, another exception occurred:\n\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/arm.py", line 112, in '
    "handle_template_based_exception\n"
    "    raise_subdivision_deployment_error(ex.response.internal_response.text, ex.error.code "
    "if ex.error else None)\n"
    f'  File "{SITE}/requests/models.py", line 1037, in content\n'
    '    raise RuntimeError("The content for this response was already consumed")\n'
    "RuntimeError: The content for this response was already consumed\n"
    "To check existing issues, please visit: https://github.com/Azure/azure-cli/issues\n")


def not_found(kind: str, rg: str, name: str) -> AzError:
    return http_error("ResourceNotFound", f"The Resource '{kind}/{name}' under resource group "
                      f"'{rg}' was not found. For more details please go to "
                      "https://aka.ms/ARMResourceNotFoundFix", exit_code=3)


def rg_not_found(rg: str) -> AzError:
    return http_error("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.",
                      exit_code=3)


def failure_message(code: str, spec: dict) -> str:
    """Azure's text for a failure code (from public issues), filled in for this VM."""
    size, loc = spec["size"], spec["location"]
    digits = re.search(r"\d+", size)
    cores = int(digits.group()) if digits else 4
    family = "standard" + re.sub(r"^Standard_([A-Z]+).*", r"\1", size) + "Family"
    texts = {
        "ZonalAllocationFailed": ALLOCATION.format(where="zone"),
        "AllocationFailed": ALLOCATION.format(where="region"),
        "OverconstrainedAllocationRequest": "Allocation failed. VM(s) with the following "
        "constraints cannot be allocated, because the condition is too restrictive. Please "
        "remove some constraints and try again.",
        "SkuNotAvailable": "The requested VM size for resource 'Following SKUs have failed for "
        f"Capacity Restrictions: {size}' is currently not available in location '{loc}'. Please "
        "try another size or deploy to a different location or different zone. See "
        "https://aka.ms/azureskunotavailable for details.",
        "OperationNotAllowed": "Operation could not be completed as it results in exceeding "
        f"approved {family} Cores quota. Additional details - Deployment Model: Resource "
        f"Manager, Location: {loc}, Current Limit: 24, Current Usage: 24, Additional Required: "
        f"{cores}, (Minimum) New Limit Required: {24 + cores}. Submit a request for Quota "
        "increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/"
        "UsageAndQuota.ReactView by specifying parameters listed in the 'Details' section for "
        "deployment to succeed. Please read more about quota limits at "
        "https://docs.microsoft.com/en-us/azure/azure-supportability/per-vm-quota-requests",
        "InvalidParameter": "The value of parameter linuxConfiguration.ssh.publicKeys.keyData "
        "is invalid.",
        "OSProvisioningTimedOut": f"OS Provisioning for VM '{spec['name']}' did not finish in "
        "the allotted time. The VM may still finish provisioning successfully. Please check "
        "provisioning state later.",
        "InternalServerError": "An unexpected error occured while processing the network "
        "profile of the VM. Please retry later.",
    }
    texts["QuotaExceeded"] = texts["OperationNotAllowed"]
    texts["OverconstrainedZonalAllocationRequest"] = texts["OverconstrainedAllocationRequest"]
    return texts.get(code, f"The operation failed with error code '{code}'.")


def deployment_error(rg: str, name: str, code: str, message: str, *, nested: bool) -> AzError:
    """An async deployment failure: azure-cli prints ARM's raw body on one line."""
    inner = [{"code": code, "message": message}]
    if nested:  # the VM resource exists and reached the terminal state Failed
        inner = [{"code": "ResourceDeploymentFailure", "target": vm_id(rg, name),
                  "message": TERMINAL_FAILED, "details": inner}]
    body = {"status": "Failed", "error": {
        "code": "DeploymentFailed",
        "target": f"{ARM}/{rg}/providers/Microsoft.Resources/deployments/vm_deploy_{_hex()}",
        "message": DEPLOY_MESSAGE, "details": inner}}
    return AzError("ERROR: " + json.dumps(body, separators=(",", ":")) + "\n")


def traceback_error(code: str, message: str, inner: tuple[str, str] | None = None) -> AzError:
    """A synchronous 4xx on the deployment PUT, as azure-cli 2.91.0 crashes printing it."""
    text = f"{TRACEBACK_HEAD}({code}) {message}\nCode: {code}\nMessage: {message}\n"
    if inner is not None:
        icode, imsg = inner
        text += f"Exception Details:\t({icode}) {imsg}\n\tCode: {icode}\n\tMessage: {imsg}\n"
        if icode == "InvalidParameter":
            text += "\tTarget: linuxConfiguration.ssh.publicKeys.keyData\n"
    return AzError(text + TRACEBACK_TAIL)


def preflight_error(code: str, message: str) -> AzError:
    dep = f"vm_deploy_{_hex()}"
    outer = (f"The template deployment '{dep}' is not valid according to the validation "
             f"procedure. The tracking id is '{_guid(_hex())}'. See inner errors for details.")
    return traceback_error("InvalidTemplateDeployment", outer, (code, message))


THROTTLE_MESSAGES = {
    "TooManyRequests": "The request is being throttled as the limit has been reached for "
    "operation type - {op}. For more information, see - https://aka.ms/computethrottling",
}


def throttle_error(command: str, throttle: dict) -> AzError:
    code = throttle.get("code", "TooManyRequests")
    op = "PutVM3Min" if command == "vm create" else "Read_30Min"
    default = THROTTLE_MESSAGES.get(code, "Number of requests for subscription "
                                    f"'{SUBSCRIPTION}' exceeded the limit.")
    message = throttle.get("message") or default.format(op=op)
    if command == "vm create":
        return traceback_error(code, message)
    return http_error(code, message)


CONFLICT = ("Run command extension execution is in progress. Please wait for completion "
            "before invoking a run command.")
PREEMPTED = "Operation execution has been preempted by a more recent operation."
MARKED_FOR_DELETION = ("Operation 'Create or Update VM' is not allowed on VM '{name}' since the "
                       "VM is marked for deletion. You can only retry the Delete operation (or "
                       "wait for an ongoing one to complete).")
NO_TTY = "WARNING: Unable to prompt for confirmation as no tty available. Use --yes.\n"
PLACEHOLDER_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ example"
CI_ERROR = ("('scripts_user', RuntimeError('Runparts: 1 failures (part-001) in 1 attempted "
            "commands'))")
CI_RECOVERABLE = "Failed at merging in cloud config part from part-001: empty cloud config"


# ================================================================ command plumbing


class Ctx:
    """What a command handler needs: scenario, state, parsed args, scaled sleeping."""

    def __init__(self, scn: Scenario, store: StateStore, args: dict) -> None:
        self.scn = scn
        self.store = store
        self.args = args
        # Poll often enough to notice a delete, rarely enough for 20 parallel clients.
        self.poll = min(0.1, max(0.02, 0.1 * scn.scale))

    def view(self) -> tuple[dict, float]:
        t = time.time()
        return materialize(self.store.read(), t), t

    @contextmanager
    def tx(self):
        with self.store.transaction() as state:
            t = time.time()
            yield materialize(state, t), t

    def require_rg(self, rg: str) -> None:
        if not self.scn.rg_exists(rg):
            raise rg_not_found(rg)

    def warn(self, text: str) -> None:
        if not self.args["only_show_errors"]:
            sys.stderr.write(text)

    def sleep_until(self, deadline: float, check=None) -> None:
        while (left := deadline - time.time()) > 0:
            time.sleep(min(left, self.poll))
            if check is not None:
                check()


def target(a: dict) -> tuple[str, str]:
    """The resource group and name of show/delete/wait-style commands (or from --ids)."""
    rg, name = a.get("resource_group"), a.get("name")
    if a.get("ids"):
        parts = a["ids"][0].split("/")
        rg, name = (parts[4] if len(parts) > 4 else rg), parts[-1]
    if not rg:
        raise AzError("ERROR: (--resource-group | --ids) are required")
    if not name:
        raise AzError("ERROR: (--name | --ids) are required")
    return rg, name


# ================================================================ vm create


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
        attempt = _bump(st["create_attempts"], spec["name"])
        plan = _plan_deployment(ctx, st, t, spec, attempt)
    if plan["kind"] == "preflight":
        raise preflight_error(plan["code"], plan["message"])
    if a["no_wait"]:  # the deployment was accepted; how it ends is not this client's business
        return None
    if plan["kind"] == "rejected":
        time.sleep(QUICK_SECONDS * ctx.scn.scale)
        raise deployment_error(spec["resource_group"], spec["name"], plan["code"],
                               plan["message"], nested=False)
    return _await_deployment(ctx, spec, plan)


def _rejected(code: str, message: str) -> dict:
    return {"kind": "rejected", "code": code, "message": message}


def _plan_of(vm: dict) -> dict:
    return {"kind": "deploy", "op": vm["op"], "ready_at": vm["ready_at"],
            "outcome": vm["outcome"], "code": vm["fail_code"], "message": vm["fail_message"]}


def _plan_deployment(ctx: Ctx, st: dict, t: float, spec: dict, attempt: int) -> dict:
    """Decide, under the lock, what this create does: fail preflight, get rejected, deploy."""
    name, scn = spec["name"], ctx.scn
    fail = scn.setting(name, attempt, "fail")
    if fail and scn.setting(name, attempt, "fail_phase", "async") == "preflight":
        message = scn.setting(name, attempt, "fail_message") or failure_message(fail, spec)
        return {"kind": "preflight", "code": fail, "message": message}
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
        return _rejected("NicReservedForAnotherVm", _nic_reserved_text(ctx, nic))
    return _fresh_deploy(ctx, st, t, spec, attempt)


def _nic_reserved_text(ctx: Ctx, nic: dict) -> str:
    secs = f"{ctx.scn.nic_reservation_raw:g}"
    return (f"Nic(s) in request is reserved for another Virtual Machine for {secs} seconds. "
            f"Please provide another nic(s) or retry after {secs} seconds. Reserved VM: "
            f"{vm_id(nic['resource_group'], nic.get('reserved_for') or '')}")


def _fresh_deploy(ctx: Ctx, st: dict, t: float, spec: dict, attempt: int) -> dict:
    name, rg, scn = spec["name"], spec["resource_group"], ctx.scn
    nic = _ensure_nic(st, spec)
    pip = _ensure_public_ip(ctx, st, spec, nic) if spec["public_ip_name"] else None
    vm_hex = _hex()
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
        n = _bump(st, "private_counter") - 1
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
        n = _bump(st, "public_counter") - 1
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
    vm.update(op=_hex(), attempt=attempt, created_at=t, ready_at=ready, redeploy=redeploy,
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
    _bump(st["create_counts"], name)
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
        _bump(st["create_counts"], vm["name"])
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


def _await_deployment(ctx: Ctx, spec: dict, plan: dict) -> dict:
    """Sleep until the operation's end; a delete in between preempts it."""
    rg, name, ready = spec["resource_group"], spec["name"], plan["ready_at"]

    def preempted(vm: dict | None) -> bool:
        return vm is None or vm["op"] != plan["op"] or vm.get("deleting_since") is not None

    def check() -> None:
        st, t = ctx.view()
        if (ready is None or t < ready) and preempted(st["vms"].get(name)):
            raise deployment_error(rg, name, "OperationPreempted", PREEMPTED, nested=False)

    ctx.sleep_until(FOREVER if ready is None else ready, check)
    if plan["outcome"] == "Failed":
        raise deployment_error(rg, name, plan["code"], plan["message"], nested=True)
    st, _ = ctx.view()
    vm = st["vms"].get(name)
    if preempted(vm):
        raise deployment_error(rg, name, "OperationPreempted", PREEMPTED, nested=False)
    return create_output(vm)


# ================================================================ vm show / list / delete / wait


def cmd_vm_show(ctx: Ctx, a: dict):
    rg, name = target(a)
    ctx.require_rg(rg)
    st, t = ctx.view()
    vm = find(st, "vms", rg, name)
    if vm is None:
        raise not_found("Microsoft.Compute/virtualMachines", rg, name)
    return vm_resource(vm, t, details=a["show_details"])


def cmd_vm_list(ctx: Ctx, a: dict):
    rg = a["resource_group"]
    if rg:
        ctx.require_rg(rg)
    st, t = ctx.view()
    vms = sorted(st["vms"].values(), key=lambda vm: vm["name"].lower())
    return [vm_resource(vm, t, details=a["show_details"]) for vm in vms
            if not rg or vm["resource_group"].lower() == rg.lower()]


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


def instance_view(vm: dict, t: float) -> dict:
    """What `vm wait --custom` queries: the VM with instanceView.statuses."""
    res = vm_resource(vm, t)
    state = provisioning_state(vm, t)
    statuses = [{"code": f"ProvisioningState/{state.lower()}", "level": "Info",
                 "displayStatus": f"Provisioning {state.lower()}"}]
    if power_state(vm, t):
        code = power_state(vm, t).split()[-1]
        statuses.append({"code": f"PowerState/{code}", "level": "Info",
                         "displayStatus": power_state(vm, t)})
    res["instanceView"] = {"statuses": statuses}
    add_resource_group(res)
    return res


def cmd_vm_wait(ctx: Ctx, a: dict):
    rg, name = target(a)
    custom = compile_query(a["custom"], label="--custom") if a["custom"] else None
    if custom is None and not any(a[k] for k in ("created", "deleted", "exists", "updated")):
        raise AzError("ERROR: incorrect usage: --created | --deleted | --exists | --updated | "
                      "--custom JMESPATH")
    interval = max(a["interval"], 1)
    for _ in range(max(math.ceil(a["timeout"] / interval), 1)):
        if _wait_satisfied(ctx, rg, name, a, custom):
            return None
        time.sleep(interval * ctx.scn.scale)
    return {}  # azure-cli returns (not raises) its timeout error, and prints it as {}


def _wait_satisfied(ctx: Ctx, rg: str, name: str, a: dict, custom) -> bool:
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
    return custom is not None and truthy(search(custom, instance_view(vm, t)))


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


# ================================================================ network, disk, group, account

ARM_TYPES = {"public_ips": "Microsoft.Network/publicIPAddresses",
             "nics": "Microsoft.Network/networkInterfaces", "disks": "Microsoft.Compute/disks"}


def _render(st: dict, kind: str, item: dict, t: float) -> dict:
    if kind == "public_ips":
        return public_ip_resource(st, item, t)
    return nic_resource(st, item) if kind == "nics" else disk_resource(item)


def lister(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg = a["resource_group"]
        if rg:
            ctx.require_rg(rg)
        st, t = ctx.view()
        items = sorted(st[kind].values(), key=lambda item: item["name"].lower())
        return [_render(st, kind, item, t) for item in items
                if not rg or item["resource_group"].lower() == rg.lower()]
    return handler


def shower(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg, name = target(a)
        ctx.require_rg(rg)
        st, t = ctx.view()
        item = find(st, kind, rg, name)
        if item is None:
            raise not_found(ARM_TYPES[kind], rg, name)
        return _render(st, kind, item, t)
    return handler


def deleter(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg, name = target(a)
        if kind == "disks" and not a["yes"]:
            ctx.warn(NO_TTY)
            raise AzError("ERROR: Operation cancelled.")
        ctx.require_rg(rg)
        with ctx.tx() as (st, t):
            item = find(st, kind, rg, name)
            if item is not None:
                _check_deletable(ctx, st, kind, item, t)
                del st[kind][name]
        return None
    return handler


def _check_deletable(ctx: Ctx, st: dict, kind: str, item: dict, t: float) -> None:
    rg = item["resource_group"]
    own_id = (disk_id(rg, item["name"]) if kind == "disks"
              else net_id(rg, ARM_TYPES[kind].split("/")[1], item["name"]))
    if kind == "public_ips" and (nic := attached_nic(st, item)) is not None:
        conf = f"{net_id(rg, 'networkInterfaces', nic['name'])}/ipConfigurations/{nic['ipconfig']}"
        raise http_error("PublicIPAddressCannotBeDeleted", f"Public IP address {own_id} can not "
                         f"be deleted since it is still allocated to resource {conf}. In order to "
                         "delete the public IP, disassociate/detach the Public IP address from "
                         "the resource.  To learn how to do this, see aka.ms/deletepublicip.")
    if kind == "nics" and item["vm"]:
        raise http_error("NicInUse", f"Network Interface {own_id} is used by existing resource "
                         f"{vm_id(rg, item['vm'])}. In order to delete the network interface, "
                         "it must be dissociated from the resource. To learn more, see "
                         "aka.ms/deletenic.")
    if kind == "nics" and nic_reserved(item, t):
        raise http_error("NicReservedForAnotherVm", _nic_reserved_text(ctx, item))
    if kind == "disks" and item["vm"]:
        raise http_error("OperationNotAllowed", f"Disk {item['name']} is attached to VM "
                         f"{vm_id(rg.upper(), item['vm'])}.")


def cmd_group_show(ctx: Ctx, a: dict):
    rg = a["name"]
    ctx.require_rg(rg)
    return {"id": f"{ARM}/{rg}", "location": ctx.scn.location, "managedBy": None, "name": rg,
            "properties": {"provisioningState": "Succeeded"}, "tags": None,
            "type": "Microsoft.Resources/resourceGroups"}


def cmd_account_show(ctx: Ctx, a: dict):
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    return {"environmentName": "AzureCloud", "homeTenantId": tenant, "id": SUBSCRIPTION,
            "isDefault": True, "managedByTenants": [], "name": "example-subscription",
            "state": "Enabled", "tenantDefaultDomain": "contoso.onmicrosoft.com",
            "tenantDisplayName": "Contoso", "tenantId": tenant,
            "user": {"name": "ci@contoso.com", "type": "user"}}


def cmd_version(ctx: Ctx, a: dict):
    return {"azure-cli": "2.91.0", "azure-cli-core": "2.91.0", "azure-cli-telemetry": "1.1.0",
            "extensions": {}}


# ================================================================ command table


def _ref_opts() -> list[Opt]:
    return [Opt("--name", "-n"), Opt("--resource-group", "-g"), Opt("--ids", kind="list")]


ENUM_DELETE = ["Delete", "Detach"]
CREATE_OPTS = [
    Opt("--name", "-n", required=True), Opt("--resource-group", "-g", required=True),
    Opt("--location", "-l"), Opt("--image"), Opt("--size", default="Standard_D2s_v5"),
    Opt("--zone", "-z"), Opt("--priority", choices=["Regular", "Low", "Spot", "SpotPlus"]),
    Opt("--eviction-policy", choices=["Deallocate", "Delete"]), Opt("--max-price", type=float),
    Opt("--admin-username"), Opt("--admin-password"), Opt("--ssh-key-name"),
    Opt("--ssh-key-values", kind="list"), Opt("--generate-ssh-keys", kind="flag"),
    Opt("--authentication-type", choices=["ssh", "password", "all"]), Opt("--vnet-name"),
    Opt("--subnet"), Opt("--nsg"), Opt("--public-ip-sku", choices=["Basic", "Standard"]),
    Opt("--public-ip-address"), Opt("--custom-data"), Opt("--os-disk-size-gb", type=int),
    Opt("--tags", kind="list"), Opt("--nic-delete-option", choices=ENUM_DELETE),
    Opt("--os-disk-delete-option", choices=ENUM_DELETE), Opt("--no-wait", kind="flag"),
    Opt("--accelerated-networking", kind="bool"), Opt("--storage-sku"), Opt("--computer-name"),
]
DETAILS = Opt("--show-details", "-d", kind="flag")
COMMANDS = {
    "vm create": (CREATE_OPTS, cmd_vm_create),
    "vm show": ([*_ref_opts(), DETAILS], cmd_vm_show),
    "vm list": ([Opt("--resource-group", "-g"), DETAILS], cmd_vm_list),
    "vm delete": ([*_ref_opts(), Opt("--yes", "-y", kind="flag"), Opt("--no-wait", kind="bool"),
                   Opt("--force-deletion", kind="bool")], cmd_vm_delete),
    "vm wait": ([*_ref_opts(), Opt("--created", kind="flag"), Opt("--deleted", kind="flag"),
                 Opt("--exists", kind="flag"), Opt("--updated", kind="flag"), Opt("--custom"),
                 Opt("--timeout", type=int, default=3600), Opt("--interval", type=int, default=30)],
                cmd_vm_wait),
    "vm run-command invoke": ([Opt("--command-id", required=True), *_ref_opts(),
                               Opt("--scripts", kind="list"), Opt("--parameters", kind="list")],
                              cmd_run_command),
    "network public-ip list": ([Opt("--resource-group", "-g")], lister("public_ips")),
    "network public-ip show": (_ref_opts(), shower("public_ips")),
    "network public-ip delete": (_ref_opts(), deleter("public_ips")),
    "network nic list": ([Opt("--resource-group", "-g")], lister("nics")),
    "network nic show": (_ref_opts(), shower("nics")),
    "network nic delete": (_ref_opts(), deleter("nics")),
    "disk list": ([Opt("--resource-group", "-g", required=True)], lister("disks")),
    "disk show": (_ref_opts(), shower("disks")),
    "disk delete": ([*_ref_opts(), Opt("--yes", "-y", kind="flag"), Opt("--no-wait", kind="bool")],
                    deleter("disks")),
    "group show": ([Opt("--name", "--resource-group", "-g", "-n", required=True)], cmd_group_show),
    "account show": ([], cmd_account_show),
    "version": ([], cmd_version),
}


# ================================================================ entry


def state_path() -> str:
    return os.environ.get("AZ_SIM_STATE") or os.path.expanduser("~/.az-sim/state.json")


def resolve_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split argv into a command of COMMANDS and its arguments; (None, group words) for help."""
    words: list[str] = []
    for token in argv:
        if token.startswith("-"):
            break
        candidate = " ".join([*words, token])
        if candidate in COMMANDS:
            return candidate, argv[len(words) + 1:]
        if not any(c.startswith(candidate + " ") for c in COMMANDS):
            raise UsageError(f"'{token}' is misspelled or not recognized by the system.")
        words.append(token)
    return None, words


def _count_call(store: StateStore, command: str, scn: Scenario, *, throttle: bool) -> bool:
    """Count the invocation; True if the scenario's throttle makes this one fail."""
    with store.transaction() as st:
        _bump(st["calls"], command)
        commands = scn.throttle.get("commands")
        if not throttle or not scn.throttle or (commands and command not in commands):
            return False
        st["throttle_seen"] += 1
        return st["throttle_seen"] <= scn.throttle.get("first_calls", 0)


def _help(command: str | None, words: list[str]) -> str:
    if command is None:
        prefix = " ".join(words)
        subs = sorted({c[len(prefix):].split()[0] for c in COMMANDS if c.startswith(prefix)})
        return f"Group\n    {f'az {prefix}'.strip()}\n\nSubgroups and commands:\n" + "".join(
            f"    {s}\n" for s in subs)
    opts = COMMANDS[command][0]
    return f"Command\n    az {command}\n\nArguments\n" + "".join(
        f"    {o.label}{' [Required]' if o.required else ''}\n" for o in opts)


def run_az(argv: list[str]) -> int:
    scn = load_scenario(os.environ.get("AZ_SIM_SCENARIO"))
    store = StateStore(state_path())
    command, rest = resolve_command(argv)
    if command is None:
        sys.stdout.write(_help(None, rest))
        return 0
    opts, handler = COMMANDS[command]
    try:
        args = parse_args(f"az {command}", opts, rest)
    except UsageError:
        _count_call(store, command, scn, throttle=False)
        raise
    if args["help"]:
        sys.stdout.write(_help(command, []))
        return 0
    throttled = _count_call(store, command, scn, throttle=scn.logged_in)
    if not scn.logged_in:
        raise AzError("ERROR: Please run 'az login' to setup account.")
    if throttled:
        raise throttle_error(command, scn.throttle)
    result = handler(Ctx(scn, store, args), args)
    if result is not None:
        add_resource_group(result)
        if args["query"] is not None:
            result = search(args["query"], result)
        sys.stdout.write(format_output(result, args["output"]))
    return 0


def sim_state(store: StateStore) -> dict:
    """The inspection view: raw records plus the states computed for now."""
    t = time.time()
    st = materialize(store.read(), t)
    vms = {name: {**vm, "provisioningState": provisioning_state(vm, t),
                  "powerState": power_state(vm, t)} for name, vm in st["vms"].items()}
    succeeded = {name: [x for x in times if x <= t] for name, times in st["succeeded_at"].items()}
    return {"vms": vms, "create_counts": st["create_counts"],
            "create_attempts": st["create_attempts"],
            "succeeded_at": {k: v for k, v in succeeded.items() if v}, "calls": st["calls"],
            "nics": st["nics"], "public_ips": st["public_ips"], "disks": st["disks"],
            "throttled_calls_seen": st["throttle_seen"], "now": t}


def run_sim(argv: list[str]) -> int:
    store = StateStore(state_path())
    if argv == ["state"]:
        sys.stdout.write(json.dumps(sim_state(store), indent=2, sort_keys=True) + "\n")
        return 0
    if argv == ["reset"]:
        with store.transaction() as st:
            st.clear()
            st.update(empty_state())
        return 0
    sys.stderr.write("usage: az-sim sim state | az-sim sim reset\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_sim(argv[1:]) if argv[:1] == ["sim"] else run_az(argv)
    except AzError as e:
        sys.stderr.write(e.text)
        return e.exit_code
    except ScenarioError as e:
        sys.stderr.write(f"ERROR: az-sim: bad AZ_SIM_SCENARIO {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
