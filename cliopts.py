"""Command-line options shared by `vm_launcher.py` and `orchestrator.py`.

The VM spec's fields become options, so the CLI cannot drift from the spec:
`spec_options()` adds one option per `VMSpec` field (`os_disk_size_gb` becomes
`--os-disk-size-gb`, lists and the tags mapping become repeatable singular options,
booleans become `--verify-ssh/--no-verify-ssh`). Every option defaults to None, meaning
"not given", so a spec file or `VMSpec`'s own default applies; `spec_values()` turns the
parsed values back into a dict of VMSpec fields holding only what was given.
Values are checked later, all at once, by `vmspec.spec_problems`.
`nats_options()` and `nats_settings()` are the NATS connection's options, defined once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from natsconn import NatsSettings
from vmspec import (
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
    "name": "VM name (Azure's rules for a Linux VM name).",
    "resource_group": "Resource group of the VM.",
    "image": "Image URN or alias, e.g. Debian:debian-12:12-gen2:latest.",
    "location": "Region, e.g. westus2; default: the resource group's (one az group show).",
    "size": "VM size.",
    "zone": "Availability zone.",
    "priority": "VM priority.",
    "eviction_policy": "Eviction policy; only with priority Spot or Low.",
    "admin_username": "Admin user created on the VM.",
    "ssh_key_name": "Azure SSH public key resource to install on the VM.",
    "ssh_public_key": "Public key file to install (instead of --ssh-key-name).",
    "vnet_name": "Virtual network.",
    "subnet": "Subnet.",
    "nsg": "Network security group.",
    "public_ip_sku": "Public IP SKU.",
    "custom_data": "cloud-init file; its content never appears in events or logs.",
    "os_disk_size_gb": "OS disk size in GiB.",
    "tags": "Tag KEY=VALUE (repeatable).",
    "extra_args": "Argument passed through to az vm create (repeatable; "
                  "--extra-arg=--flag for flags).",
    "fallback_zones": "Zone to move to after a capacity failure (repeatable, in order).",
    "fallback_sizes": "Size to move to once the zones are exhausted (repeatable, in order).",
    "max_attempts": "Create attempts before giving up.",
    "create_timeout": "Seconds one az vm create may take before it is killed.",
    "retry_backoff": "Base seconds of the exponential backoff between attempts.",
    "verify_ssh": "Check that SSH answers once the VM is up.",
    "verify_cloud_init": "Check that cloud-init finished.",
    "cloud_init_check": "How to check cloud-init.",
    "cloud_init_timeout": "Seconds the cloud-init check may take.",
    "ssh_user": "User for the SSH checks; default: the admin username.",
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


def load_spec_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """A YAML mapping of VMSpec fields, with custom_data/ssh_public_key paths made relative
    to the file's directory; the problems when it cannot be used."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"spec file {path!r} cannot be read ({exc.strerror})"]
    except yaml.YAMLError as exc:
        return {}, [f"spec file {path!r} is not valid YAML ({exc})"]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [f"spec file {path!r} must hold a mapping of VM spec fields"]
    for name in FILES:
        if isinstance(data.get(name), str):
            data[name] = str(file.parent / Path(data[name]).expanduser())
    return data, []


def apply_options(command: F, options: list[Callable[[F], F]]) -> F:
    """Decorate `command` with `options`, in the order they are listed in --help."""
    for option in reversed(options):
        command = option(command)
    return command


def nats_options(*, default_url: str | None, url_help: str,
                 replicas: bool = False) -> Callable[[F], F]:
    """--nats-url (env NATS_URL), --nats-creds, --tls-*, --nats-connect-timeout[, --replicas]."""
    existing_file = click.Path(exists=True, dir_okay=False)
    options = [
        click.option("--nats-url", envvar="NATS_URL", default=default_url,
                     show_default=default_url is not None, help=url_help),
        click.option("--nats-creds", type=existing_file, help="NATS credentials (.creds) file."),
        click.option("--tls-ca", type=existing_file,
                     help="CA certificate to verify the NATS server with."),
        click.option("--tls-cert", type=existing_file,
                     help="Client certificate for NATS (mutual TLS)."),
        click.option("--tls-key", type=existing_file, help="Private key of --tls-cert."),
        click.option("--nats-connect-timeout", type=click.FloatRange(min=0.1), default=2.0,
                     show_default=True, help="Seconds to wait for NATS to answer."),
    ]
    if replicas:
        options.append(click.option(
            "--replicas", type=click.IntRange(1, 5), default=None,
            help="Replicas of the streams (3 on a 3-node cluster): of new ones, and of "
                 "existing ones, which are otherwise left as they are. [default: 1 for "
                 "new streams]"))
    return lambda command: apply_options(command, options)


def nats_settings(params: Mapping[str, Any], *, name: str) -> NatsSettings | None:
    """The settings from `nats_options()` values; None when no server URL was given."""
    servers = NatsSettings.split_urls(params.get("nats_url") or "")
    if not servers:
        return None
    return NatsSettings(servers=servers, creds=params["nats_creds"], tls_ca=params["tls_ca"],
                        tls_cert=params["tls_cert"], tls_key=params["tls_key"],
                        connect_timeout=params["nats_connect_timeout"], name=name,
                        replicas=params.get("replicas"))
