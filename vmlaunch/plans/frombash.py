"""Plans from what the bash deployment scripts already have: a k0rdent config or their variables.

Both follow /work/shared/reference/legacy-vm-launch.md. The cluster id `k0rdent-XXXXXXXX`
(from `--cluster-id`, else the file `./.clusterid`) names everything: resource group
`<id>-resgrp`, vnet `<id>-vnet`, subnet `<id>-subnet`, NSG `<id>-nsg`, Azure SSH key
`<id>-admin`, local private key `./azure-resources/<id>-ssh-key`. Hosts are
`k0s-controller-1..N` then `k0s-worker-1..M`; the i-th host of a role (counting from 0,
so `k0s-controller-1` is host 0) gets zone `zones[i mod len(zones)]` and the role's size.
Every VM gets `./cloud-init-yaml/<host>-cloud-init.yaml` as custom data, a 64 GB OS disk and
a Standard public IP, and cloud-init is checked over SSH as the bash loop does. The eviction
policy is passed for Spot VMs only. `vm_creation_minutes` is both the per-attempt create
timeout and the overall deadline (as in the bash loop); `vm_wait_check_interval` is the
poll interval of the legacy mode.

`--from-env` reads the variables a bash caller exports (every name below is exact):

| variable | meaning |
|---|---|
| `RG` | resource group (required) |
| `VM_HOSTS` | host names, separated by spaces or commas (required) |
| `VM_ZONE_<HOST>`, `VM_SIZE_<HOST>` | per host; `<HOST>` is the host name upper-cased, |
| | anything but a letter or digit made `_` (`k0s-worker-1` -> `K0S_WORKER_1`) |
| `AZURE_CONTROLLER_VM_SIZE` | size of hosts named `*controller*` without `VM_SIZE_<HOST>` |
| `AZURE_WORKER_VM_SIZE` | size of hosts named `*worker*` without `VM_SIZE_<HOST>` |
| `AZURE_VM_SIZE` | size of every other host |
| `AZURE_VM_IMAGE` | image URN (required) |
| `AZURE_VM_PRIORITY` | `Regular` (default) or `Spot` |
| `AZURE_EVICTION_POLICY` | `Deallocate` or `Delete`; used for Spot only |
| `AZURE_LOCATION` | region (else the resource group's) |
| `SSH_USERNAME`, `SSH_KEY_NAME` | admin user; Azure SSH key resource |
| `SSH_PRIVATE_KEY` | local private key for the SSH checks |
| `SSH_CONNECT_TIMEOUT` | seconds |
| `VNET_NAME`, `SUBNET_NAME`, `NSG_NAME` | network names |
| `CLOUD_INIT_DIR` | custom data is `<dir>/<host>-cloud-init.yaml` (none when unset) |
| `VM_CREATION_TIMEOUT_MINUTES` | create timeout and deadline, as in the bash loop |
| `VM_WAIT_CHECK_INTERVAL` | poll interval (legacy mode), seconds |
| `DEPLOYMENT_ID`, else `K0RDENT_CLUSTERID` | deployment id; else `./.clusterid`; else `RG` |
| `NATS_URL` | read by the `--nats-url` option itself |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmlaunch.plans.plan import DEFAULT_DEADLINE, PlanDraft, PlanError
from vmlaunch.plans.planfile import read_yaml

ROLES = (("controller", "controllers"), ("worker", "workers"))
K0RDENT_SEARCH = ("config/k0rdent.yaml", "config/k0rdent-default.yaml")
LEGACY_FIXED = {"os_disk_size_gb": 64, "public_ip_sku": "Standard", "cloud_init_check": "ssh"}


def read_cluster_id(cluster_id: str | None, cwd: Path, problems: list[str]) -> str:
    if cluster_id:
        return cluster_id
    path = cwd / ".clusterid"
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError:
        found = ""
    if not found:
        problems.append(f"no cluster id: give --cluster-id or write it to {path}")
    return found


def cloud_init_path(directory: Path, host: str, cwd: Path) -> str:
    """`./cloud-init-yaml/<host>-cloud-init.yaml` as the bash scripts write it."""
    path = directory / f"{host}-cloud-init.yaml"
    if not path.is_absolute() and cwd.resolve() != Path.cwd().resolve():
        path = cwd / path
    return str(path) if path.is_absolute() or str(path).startswith(".") else f"./{path}"


def find_k0rdent_config(cwd: Path) -> Path:
    """The bash loader's search; a PlanError naming every place looked at when none is found."""
    for candidate in K0RDENT_SEARCH:
        if (cwd / candidate).is_file():
            return cwd / candidate
    looked = " and ".join(f"./{c}" for c in K0RDENT_SEARCH)
    raise PlanError([
        f"no plan given and no k0rdent config found: looked for {looked} in {cwd}; "
        "give --plan FILE, --vm NAME --resource-group RG, --k0rdent-config FILE or --from-env"
    ])


# --- k0rdent config ---------------------------------------------------------------------------

def _lookup(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


class _Reader:
    """Typed lookups in a config mapping that collect problems instead of raising."""

    def __init__(self, config: Any, problems: list[str]) -> None:
        self.config, self.problems = config, problems

    def text(self, key: str, default: str | None = None) -> str | None:
        value = _lookup(self.config, key)
        if value is None:
            if default is None:
                self.problems.append(f"k0rdent config: {key} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.problems.append(f"k0rdent config: {key} must be a string, got {value!r}")
            return default
        return str(value)

    def number(self, key: str, default: float) -> float:
        value = _lookup(self.config, key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.problems.append(f"k0rdent config: {key} must be a positive number, "
                                 f"got {value!r}")
            return default
        return float(value)

    def count(self, key: str) -> int:
        value = _lookup(self.config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problems.append(f"k0rdent config: {key} must be a whole number, got {value!r}")
            return 0
        return value

    def zones(self, key: str) -> list[str]:
        value = _lookup(self.config, key)
        if not isinstance(value, list) or not value:
            self.problems.append(f"k0rdent config: {key} must be a non-empty list of zones")
            return []
        return [str(z) for z in value]


def draft_from_k0rdent(path: Path, *, cluster_id: str | None, cwd: Path) -> PlanDraft:
    """The plan `create-azure-vms.sh deploy` would run for this config."""
    config, problems = read_yaml(path, "k0rdent config")
    if not problems and not isinstance(config, dict):
        problems.append(f"k0rdent config {str(path)!r} must be a mapping")
    cid = read_cluster_id(cluster_id, cwd, problems)
    draft = PlanDraft(deployment_id=cid, resource_group=f"{cid}-resgrp",
                      origin=f"k0rdent config {path}", problems=problems)
    if not isinstance(config, dict):
        return draft
    read = _Reader(config, problems)
    minutes = read.number("timeouts.vm_creation_minutes", 15)
    priority = read.text("azure.vm_priority", "Regular")
    location = read.text("azure.location")
    poll_interval = read.number("timeouts.vm_wait_check_interval", 30)
    defaults = {
        **LEGACY_FIXED, "image": read.text("azure.vm_image"), "priority": priority,
        "admin_username": read.text("ssh.username", "azureuser"),
        "ssh_key_name": f"{cid}-admin", "vnet_name": f"{cid}-vnet",
        "subnet": f"{cid}-subnet", "nsg": f"{cid}-nsg", "create_timeout": minutes * 60,
        "ssh_connect_timeout": read.number("timeouts.ssh_connect", 30),
    }
    if priority == "Spot" and (policy := read.text("azure.eviction_policy", "")):
        defaults["eviction_policy"] = policy
    return replace(draft, location=location, deadline=minutes * 60,
                   poll_interval=poll_interval, defaults=defaults,
                   ssh_private_key=str(cwd / "azure-resources" / f"{cid}-ssh-key"),
                   entries=_k0rdent_entries(read, cwd))


def _k0rdent_entries(read: _Reader, cwd: Path) -> list[dict[str, Any]]:
    """The controllers then the workers, each role's zones taken in turn."""
    entries = []
    for role, section in ROLES:
        count = read.count(f"cluster.{section}.count")
        if count == 0:
            continue
        zones = read.zones(f"cluster.{section}.zones") or [None]
        size = read.text(f"vm_sizing.{role}.size")
        for i in range(count):
            host = f"k0s-{role}-{i + 1}"
            entries.append({
                "name": host, "zone": zones[i % len(zones)], "size": size,
                "custom_data": cloud_init_path(Path("cloud-init-yaml"), host, cwd),
            })
    return entries


# --- environment ------------------------------------------------------------------------------

def host_key(host: str) -> str:
    """`k0s-worker-1` -> `K0S_WORKER_1`, the suffix of VM_ZONE_* and VM_SIZE_*."""
    return re.sub(r"[^A-Za-z0-9]", "_", host).upper()


def _env_number(env: Mapping[str, str], name: str, problems: list[str]) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number <= 0:
        problems.append(f"environment: {name}={value!r} must be a positive number")
        return None
    return number


def _host_size(env: Mapping[str, str], host: str) -> str | None:
    for role, _ in ROLES:
        if role in host and env.get(f"AZURE_{role.upper()}_VM_SIZE"):
            return env[f"AZURE_{role.upper()}_VM_SIZE"]
    return env.get("AZURE_VM_SIZE") or None


def draft_from_env(env: Mapping[str, str] | None = None, *, cwd: Path) -> PlanDraft:
    """The plan a bash caller describes with its exported variables (see the table above)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    group = env.get("RG", "").strip()
    hosts = env.get("VM_HOSTS", "").replace(",", " ").split()
    for name, value in (("RG", group), ("VM_HOSTS", hosts), ("AZURE_VM_IMAGE",
                                                             env.get("AZURE_VM_IMAGE"))):
        if not value:
            problems.append(f"environment: {name} is required with --from-env")
    deployment = env.get("DEPLOYMENT_ID") or env.get("K0RDENT_CLUSTERID") or ""
    if not deployment and (cwd / ".clusterid").is_file():
        deployment = read_cluster_id(None, cwd, problems)
    minutes = _env_number(env, "VM_CREATION_TIMEOUT_MINUTES", problems)
    poll_interval = _env_number(env, "VM_WAIT_CHECK_INTERVAL", problems)
    priority = env.get("AZURE_VM_PRIORITY") or "Regular"
    optional = {
        "image": env.get("AZURE_VM_IMAGE"), "priority": priority,
        "admin_username": env.get("SSH_USERNAME"), "ssh_key_name": env.get("SSH_KEY_NAME"),
        "vnet_name": env.get("VNET_NAME"), "subnet": env.get("SUBNET_NAME"),
        "nsg": env.get("NSG_NAME"),
        "eviction_policy": env.get("AZURE_EVICTION_POLICY") if priority == "Spot" else None,
        "ssh_connect_timeout": _env_number(env, "SSH_CONNECT_TIMEOUT", problems),
        "create_timeout": minutes * 60 if minutes else None,
    }
    return PlanDraft(deployment_id=deployment or group, resource_group=group,
                     origin="environment (--from-env)", problems=problems,
                     location=env.get("AZURE_LOCATION") or None, poll_interval=poll_interval,
                     ssh_private_key=env.get("SSH_PRIVATE_KEY") or None,
                     defaults={**LEGACY_FIXED, **{k: v for k, v in optional.items() if v}},
                     entries=[_env_entry(env, host, cwd) for host in hosts],
                     deadline=minutes * 60 if minutes else DEFAULT_DEADLINE)


def _env_entry(env: Mapping[str, str], host: str, cwd: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": host}
    if zone := env.get(f"VM_ZONE_{host_key(host)}"):
        entry["zone"] = zone
    if size := env.get(f"VM_SIZE_{host_key(host)}") or _host_size(env, host):
        entry["size"] = size
    if cloud_init_dir := env.get("CLOUD_INIT_DIR"):
        entry["custom_data"] = cloud_init_path(Path(cloud_init_dir), host, cwd)
    return entry
