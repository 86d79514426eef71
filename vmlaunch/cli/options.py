"""Command-line options shared by `vm_launcher.py` and `orchestrator.py`.

The VM spec's fields become options, so the CLI cannot drift from the spec:
`spec_options()` adds one option per `VMSpec` field (`os_disk_size_gb` becomes
`--os-disk-size-gb`, lists and the tags mapping become repeatable singular options,
booleans become `--verify-ssh/--no-verify-ssh`). Every option defaults to None, meaning
"not given", so a spec file or `VMSpec`'s own default applies; `spec_values()` turns the
parsed values back into a dict of VMSpec fields holding only what was given.
Values are checked later, all at once, by `vmspec.spec_problems` (formats: speccheck.py;
no value may start with '-' or hold a control character).
`nats_options()` and `nats_settings()` are the NATS connection's options, defined once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from vmlaunch.bus.auth import Credentials, read_secret
from vmlaunch.bus.connection import NatsSettings
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
    "cloud_init_check": "How to check cloud-init.",
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


_FILE = click.Path(exists=True, dir_okay=False)
# Secrets come from files or the environment, never from an option's value (argv is
# visible to every local user).
_CONNECTION_OPTIONS = [
    click.option("--nats-user", envvar="NATS_USER",
                 help="NATS user (with --nats-password-file or NATS_PASSWORD). "
                      "[env: NATS_USER]"),
    click.option("--nats-password-file", type=_FILE, envvar="NATS_PASSWORD_FILE",
                 help="File holding the NATS password. [env: NATS_PASSWORD_FILE, or "
                      "the password itself in NATS_PASSWORD]"),
    click.option("--nats-token-file", type=_FILE, envvar="NATS_TOKEN_FILE",
                 help="File holding a NATS token. [env: NATS_TOKEN_FILE, or the token "
                      "itself in NATS_TOKEN]"),
    click.option("--nats-nkey", type=_FILE, envvar="NATS_NKEY",
                 help="NKey seed file (SU...). [env: NATS_NKEY]"),
    click.option("--nats-creds", type=_FILE, envvar="NATS_CREDS",
                 help="NATS credentials (.creds: user JWT and seed) file. [env: NATS_CREDS]"),
    click.option("--tls-ca", type=_FILE, envvar="NATS_CA",
                 help="CA certificate to verify the NATS server with. [env: NATS_CA]"),
    click.option("--tls-cert", type=_FILE, envvar="NATS_CERT",
                 help="Client certificate for NATS (mutual TLS). [env: NATS_CERT]"),
    click.option("--tls-key", type=_FILE, envvar="NATS_KEY",
                 help="Private key of --tls-cert. [env: NATS_KEY]"),
    click.option("--tls-hostname", help="Name the NATS server's certificate must carry "
                 "(when the URL names it by IP address or another name)."),
    click.option("--nats-connect-timeout", type=click.FloatRange(min=0.1), default=2.0,
                 show_default=True, help="Seconds to wait for NATS to answer."),
]
_REPLICAS_OPTION = click.option(
    "--replicas", type=click.IntRange(1, 5), default=None,
    help="Replicas of the streams (3 on a 3-node cluster): of new ones, and of existing "
         "ones, which are otherwise left as they are. [default: 1 for new streams]")
_NO_MANAGE_STREAMS_OPTION = click.option(
    "--no-manage-streams", is_flag=True,
    help="Never create or change the streams (an admin made them: orchestrator.py "
         "streams); a missing stream is exit 3.")


def nats_options(*, default_url: str | None, url_help: str, replicas: bool = False,
                 manage_streams: bool = False) -> Callable[[F], F]:
    """--nats-url (env NATS_URL), the credential and --tls-* options, --nats-connect-timeout
    [, --replicas][, --no-manage-streams]."""
    options = [
        click.option("--nats-url", envvar="NATS_URL", default=default_url,
                     show_default=default_url is not None, help=url_help),
        *_CONNECTION_OPTIONS,
        *([_REPLICAS_OPTION] if replicas else []),
        *([_NO_MANAGE_STREAMS_OPTION] if manage_streams else []),
    ]
    return lambda command: apply_options(command, options)


def _secret(params: Mapping[str, Any], option: str, env: str, problems: list[str]) -> str | None:
    """The secret in the file `option` names, else in the environment variable `env`."""
    path = params.get(option)
    if path is None:
        return os.environ.get(env) or None
    try:
        value = read_secret(path)
    except (OSError, UnicodeError) as exc:
        problems.append(f"--{option.replace('_', '-')} {path!r} cannot be read ({exc})")
        return None
    if not value:
        problems.append(f"--{option.replace('_', '-')} {path!r} is empty")
    return value or None


def _credentials(params: Mapping[str, Any]) -> Credentials:
    """The credential and TLS options; click.UsageError (exit 2) listing every problem."""
    problems: list[str] = []
    password = _secret(params, "nats_password_file", "NATS_PASSWORD", problems)
    token = _secret(params, "nats_token_file", "NATS_TOKEN", problems)
    given = [name for name, value in (
        ("a password", password), ("a token", token), ("--nats-nkey", params.get("nats_nkey")),
        ("--nats-creds", params.get("nats_creds"))) if value]
    if len(given) > 1:
        problems.append(f"give one way to authenticate to NATS, not {' and '.join(given)}")
    if password and not params.get("nats_user"):
        problems.append("a NATS password needs --nats-user (or NATS_USER)")
    if params.get("tls_key") and not params.get("tls_cert"):
        problems.append("--tls-key needs --tls-cert")
    if problems:
        raise click.UsageError("\n".join(problems))
    return Credentials(
        user=params.get("nats_user"), password=password, token=token,
        nkey_file=params.get("nats_nkey"), creds_file=params.get("nats_creds"),
        tls_ca=params.get("tls_ca"), tls_cert=params.get("tls_cert"),
        tls_key=params.get("tls_key"), tls_hostname=params.get("tls_hostname"))


def nats_settings(params: Mapping[str, Any], *, name: str) -> NatsSettings | None:
    """The settings from `nats_options()` values; None when no server URL was given."""
    servers = NatsSettings.split_urls(params.get("nats_url") or "")
    if not servers:
        return None
    return NatsSettings(servers=servers, auth=_credentials(params),
                        connect_timeout=params["nats_connect_timeout"], name=name,
                        replicas=params.get("replicas"),
                        manage_streams=not params.get("no_manage_streams", False))
