"""The VM spec's fields as command-line options, so the CLI cannot drift from the spec.

`spec_options()` adds one option per `VMSpec` field (`os_disk_size_gb` becomes
`--os-disk-size-gb`, lists and the tags mapping become repeatable singular options,
booleans become `--verify-ssh/--no-verify-ssh`). Every option defaults to None, meaning
"not given", so a spec file or `VMSpec`'s own default applies; `spec_values()` turns the
parsed values back into a dict of VMSpec fields holding only what was given.
Values are checked later, all at once, by `vmspec.spec_problems` (formats: speccheck.py;
no value may start with '-' or hold a control character).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from vmlaunch.schema.vmspec import (
    CLOUD_INIT_CHECKS,
    EVICTION_POLICIES,
    PRIORITIES,
    PUBLIC_IP_SKUS,
    SPEC_FIELDS,
    ZONES,
    VMSpec,
)

F = TypeVar("F", bound=Callable[..., Any])

HELP: dict[str, str] = {
    "name": "VM name: 1-64 letters, digits, '-' or '.' (no '_'), starting and ending with "
            "a letter or digit (Azure's Linux host-name rules).",
    "resource_group": "Resource group of the VM.",
    "image": "Image alias (Ubuntu2204), URN (Debian:debian-12:12-gen2:latest) or image id.",
    "location": "Region, e.g. westus2; default: the resource group's (one az group show).",
    "size": "VM size, e.g. Standard_D2s_v5.",
    "zone": "Availability zone.",
    "priority": "VM priority.",
    "eviction_policy": "Eviction policy; only with priority Spot or Low.",
    "admin_username": "Admin user created on the VM (POSIX name: [a-z_][a-z0-9_-]{0,31}).",
    "ssh_key_name": "Azure SSH public key resource to install on the VM.",
    "ssh_public_key": "Public key file to install (one OpenSSH key line; instead of "
                      "--ssh-key-name).",
    "vnet_name": "Virtual network.",
    "subnet": "Subnet.",
    "nsg": "Network security group.",
    "public_ip_sku": "Public IP SKU.",
    "custom_data": "cloud-init file; its content never appears in events or logs.",
    "os_disk_size_gb": "OS disk size in GiB.",
    "tags": "Tag KEY=VALUE (repeatable; no '=' in KEY).",
    "extra_args": "Argument passed through to az vm create (repeatable; "
                  "--extra-arg=--flag for flags): long flags, each followed by its values, "
                  "never a flag the tool sets itself (--tags, --name...). NATS workers "
                  "must allow each flag (serve --allow-extra-arg).",
    "fallback_zones": "Zone to move to after a capacity failure (repeatable, in order).",
    "fallback_sizes": "Size to move to once the zones are exhausted (repeatable, in order).",
    "max_attempts": "Create attempts before giving up.",
    "create_timeout": "Seconds one az vm create may take before it is killed.",
    "retry_backoff": "Base seconds of the exponential backoff between attempts.",
    "verify_ssh": "Check that SSH answers once the VM is up.",
    "verify_cloud_init": "Check that cloud-init finished.",
    "cloud_init_check": "How to check cloud-init: run-command (one az process of ~100 MB "
                        "for 20 s or more per VM, in the --run-command-concurrency pool; no "
                        "SSH needed) or ssh (cloud-init status --wait over SSH, no az at "
                        "all: the choice for large fleets).",
    "cloud_init_timeout": "Seconds the cloud-init check may take.",
    "ssh_user": "User for the SSH checks (POSIX name); default: the admin username.",
    "ssh_port": "Port for the SSH checks.",
    "ssh_connect_timeout": "SSH connect timeout in seconds.",
}
SHORT = {"name": "-n", "resource_group": "-g", "location": "-l"}
REPEATED = {"tags": "tag", "extra_args": "extra-arg", "fallback_zones": "fallback-zone",
            "fallback_sizes": "fallback-size"}
CHOICES = {"zone": ZONES, "priority": PRIORITIES, "eviction_policy": EVICTION_POLICIES,
           "public_ip_sku": PUBLIC_IP_SKUS, "cloud_init_check": CLOUD_INIT_CHECKS}
FILES = ("custom_data", "ssh_public_key")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(VMSpec)}
_SCALARS = {int: click.INT, float: click.FLOAT}


def _parse_tags(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    tags = {}
    for value in values:
        key, eq, tag = value.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx, param)
        tags[key] = tag
    return tags or None


def _help(name: str) -> str:
    text = HELP[name]
    default = _DEFAULTS[name]
    if default not in (None, dataclasses.MISSING) and not isinstance(default, bool):
        text += f" [default: {default}]"
    return text


def _option(name: str) -> Callable[[F], F]:
    flag = name.replace("_", "-")
    hint = SPEC_FIELDS[name]
    if hint is bool:
        return click.option(f"--{flag}/--no-{flag}", name, default=None,
                            help=_help(name) + f" [default: {'yes' if _DEFAULTS[name] else 'no'}]")
    if name in REPEATED:
        return click.option(f"--{REPEATED[name]}", name, multiple=True, help=_help(name),
                            callback=_parse_tags if name == "tags" else None,
                            metavar="KEY=VALUE" if name == "tags" else "TEXT")
    scalar = next((t for t in (int, float) if hint in (t, t | None)), str)
    metavar = ("FILE" if name in FILES else "[" + "|".join(CHOICES[name]) + "]"
               if name in CHOICES else None)
    return click.option(f"--{flag}", *([SHORT[name]] if name in SHORT else []), name,
                        type=_SCALARS.get(scalar, click.STRING), default=None,
                        metavar=metavar, help=_help(name))


def spec_options(*, exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """A decorator adding one option per VMSpec field (help in field order)."""
    names = [name for name in SPEC_FIELDS if name not in exclude]

    def decorate(command: F) -> F:
        for name in reversed(names):
            command = _option(name)(command)
        return command
    return decorate


def spec_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The VMSpec fields given on the command line, as spec-file-style values."""
    values = {}
    for name in SPEC_FIELDS:
        value = params.get(name)
        if value is None or value == ():
            continue
        values[name] = list(value) if isinstance(value, tuple) else value
    return values


