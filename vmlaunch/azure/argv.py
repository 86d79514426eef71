"""The az argv builders: pure functions from a spec or names to the words after `az`.

Only `vm_create_command` touches the disk: it writes the custom data to the private file
that `az vm create --custom-data` reads, for as long as the command runs.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

from vmlaunch.host.customdata import custom_data_file
from vmlaunch.schema.vmspec import VMSpec

TAG_DEPLOYMENT = "vmlaunch-deployment"
TAG_MANAGED_BY = "managed-by"
MANAGED_BY = "azure-vm-launch-manager"
_COMMON = ["--output", "json", "--only-show-errors"]
_SECRET_FLAGS = frozenset({"--ssh-key-values", "--admin-password"})


def command_key(args: list[str]) -> str:
    """The first two non-flag words: "vm create", "network public-ip", "group show"."""
    return " ".join(list(itertools.takewhile(lambda arg: not arg.startswith("-"), args))[:2])


def redact(argv: list[str]) -> list[str]:
    """The argv with secret flag values elided (custom data is a path already)."""
    return [f"<{len(arg)} chars elided>" if i and argv[i - 1] in _SECRET_FLAGS else arg
            for i, arg in enumerate(argv)]


def vm_create_args(spec: VMSpec, *, deployment_id: str, custom_data_path: str | None,
                   no_wait: bool = False) -> list[str]:
    """`az vm create` for a spec; `spec.custom_data` (content) must be written to a file first.
    `no_wait`: az exits once ARM accepted the PUT, printing nothing (azure-cli.md §7)."""
    if spec.location is None:
        raise ValueError(f"VM {spec.name!r}: location is required (az would look it up per call)")
    if spec.custom_data is not None and custom_data_path is None:
        raise ValueError(f"VM {spec.name!r}: custom data must be passed as a file path")
    tags = {**spec.tags, TAG_DEPLOYMENT: deployment_id, TAG_MANAGED_BY: MANAGED_BY}
    return [
        "vm", "create", "--resource-group", spec.resource_group, "--name", spec.name,
        "--location", spec.location, "--image", spec.image, "--size", spec.size,
        "--priority", spec.priority, "--admin-username", spec.admin_username,
        "--public-ip-sku", spec.public_ip_sku,
        *_optional_create_flags(spec, custom_data_path),
        "--tags", *(f"{key}={value}" for key, value in tags.items()),
        "--nic-delete-option", "Delete", "--os-disk-delete-option", "Delete",
        *(["--no-wait"] if no_wait else []), *_COMMON, *spec.extra_args,
    ]


# The optional `vm create` flags in argv order: spec field -> flag, given when not None.
_OPTIONAL_FLAGS = (
    ("zone", "--zone"), ("eviction_policy", "--eviction-policy"),
    ("ssh_key_name", "--ssh-key-name"), ("ssh_public_key", "--ssh-key-values"),
    ("vnet_name", "--vnet-name"), ("subnet", "--subnet"), ("nsg", "--nsg"),
    ("custom_data", "--custom-data"), ("os_disk_size_gb", "--os-disk-size-gb"),
)


def _optional_create_flags(spec: VMSpec, custom_data_path: str | None) -> list[str]:
    values = {**{name: getattr(spec, name) for name, _ in _OPTIONAL_FLAGS},
              "custom_data": custom_data_path}  # the file, not the content
    return [word for name, flag in _OPTIONAL_FLAGS if values[name] is not None
            for word in (flag, str(values[name]))]


@contextlib.contextmanager
def vm_create_command(spec: VMSpec, *, deployment_id: str,
                      no_wait: bool = False) -> Iterator[list[str]]:
    """`az vm create` for a spec whose `custom_data` is content: written to a private file
    (`customdata`) that exists while the block runs, so the argv is valid only inside it."""
    with custom_data_file(spec.custom_data) as path:
        yield vm_create_args(spec, deployment_id=deployment_id, custom_data_path=path,
                             no_wait=no_wait)


def vm_show_args(resource_group: str, name: str) -> list[str]:
    return ["vm", "show", "-g", resource_group, "-n", name, "-d", *_COMMON]


# What a tracker reads of each listed VM (its state, ownership, zone and size): az prints
# nothing else, which spares it (and us) formatting and parsing the rest of every VM.
TRACKED_FIELDS = ("[].{name: name, id: id, provisioningState: provisioningState, tags: tags, "
                  "zones: zones, hardwareProfile: {vmSize: hardwareProfile.vmSize}}")


def vm_list_args(resource_group: str, *, details: bool = True,
                 tracked_fields: bool = False) -> list[str]:
    """`details` (-d) adds IPs and power state at 3 more GETs per VM (azure-cli.md §6);
    without it one GET per page still gives provisioningState and tags. `tracked_fields`:
    only TRACKED_FIELDS are printed."""
    return ["vm", "list", "-g", resource_group, *(["-d"] if details else []),
            *(["--query", TRACKED_FIELDS] if tracked_fields else []), *_COMMON]


# What a tracker reads of each VM's IPs, flat (look.addresses reads it): the VM's name, its
# private and its public addresses. A sixth of the text of the whole listing, and flat
# because az evaluates the query in Python: each nested projection costs it per VM.
IP_FIELDS = ("[].{name: virtualMachine.name, private: virtualMachine.network.privateIpAddresses, "
             "public: virtualMachine.network.publicIpAddresses[].ipAddress}")


def vm_ip_addresses_args(resource_group: str) -> list[str]:
    """Every VM's IPs in the group in one call: its NICs and public IPs, a GET a page each."""
    return ["vm", "list-ip-addresses", "-g", resource_group, "--query", IP_FIELDS, *_COMMON]


def vm_instance_view_args(resource_group: str, name: str) -> list[str]:
    return ["vm", "get-instance-view", "-g", resource_group, "-n", name, *_COMMON]


def vm_delete_args(resource_group: str, name: str, *, no_wait: bool = False) -> list[str]:
    return ["vm", "delete", "-g", resource_group, "-n", name, "--yes",
            *(["--no-wait"] if no_wait else []), *_COMMON]


def vm_wait_args(resource_group: str, name: str, *, condition: str, timeout: int,
                 interval: int) -> list[str]:
    if condition not in ("created", "deleted"):
        raise ValueError(f"wait condition must be 'created' or 'deleted', not {condition!r}")
    return ["vm", "wait", "-g", resource_group, "-n", name, f"--{condition}",
            "--timeout", str(timeout), "--interval", str(interval), *_COMMON]


def run_shell_args(resource_group: str, name: str, script: str) -> list[str]:
    return ["vm", "run-command", "invoke", "-g", resource_group, "-n", name,
            "--command-id", "RunShellScript", "--scripts", script, *_COMMON]


def public_ip_delete_args(resource_group: str, name: str) -> list[str]:
    return ["network", "public-ip", "delete", "-g", resource_group, "-n", name, *_COMMON]


def group_show_args(resource_group: str) -> list[str]:
    return ["group", "show", "--name", resource_group, *_COMMON]
