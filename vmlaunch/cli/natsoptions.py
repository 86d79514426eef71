"""The NATS connection's options and the settings they make, defined once for every command.

Secrets come from files or the environment, never from an option's value (argv is visible
to every local user).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from vmlaunch.bus.auth import Credentials, read_secret
from vmlaunch.bus.connection import NatsSettings
from vmlaunch.cli.options import apply_options

F = TypeVar("F", bound=Callable[..., Any])
_FILE = click.Path(exists=True, dir_okay=False)
# The options naming a file: flag, the variable it has always read, help.
_FILE_OPTIONS = [
    ("--nats-password-file", "NATS_PASSWORD_FILE",
     "File holding the NATS password (or the password itself in NATS_PASSWORD)."),
    ("--nats-token-file", "NATS_TOKEN_FILE",
     "File holding a NATS token (or the token itself in NATS_TOKEN)."),
    ("--nats-nkey", "NATS_NKEY", "NKey seed file (SU...)."),
    ("--nats-creds", "NATS_CREDS", "NATS credentials (.creds: user JWT and seed) file."),
    ("--tls-ca", "NATS_CA", "CA certificate to verify the NATS server with."),
    ("--tls-cert", "NATS_CERT", "Client certificate for NATS (mutual TLS)."),
    ("--tls-key", "NATS_KEY", "Private key of --tls-cert."),
]
_CONNECTION_OPTIONS = [
    click.option("--nats-user", envvar="NATS_USER",
                 help="NATS user (with --nats-password-file or NATS_PASSWORD)."),
    *(click.option(flag, type=_FILE, envvar=env, help=text) for flag, env, text in _FILE_OPTIONS),
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
