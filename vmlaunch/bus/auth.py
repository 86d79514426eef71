"""Who a NATS client says it is and whom it trusts: credentials, TLS, and telling the
ways a first connection fails apart (refused, not authorised, TLS), plus the embedded
server's per-run secret.

Secrets live only in memory (fields kept out of `repr`) or in 0600 files; never in argv,
logs or the files the tool writes. `natsconn.connect` turns the verdicts into exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors

log = logging.getLogger("natsauth")

EMBEDDED_USER = "vm-launch"
REFUSED, AUTH, TLS = "refused", "authorization", "tls"


@dataclass(frozen=True)
class Credentials:
    """At most one of password (with `user`), token, NKey seed file or `.creds` file, and
    the TLS files. A URL may still carry `user:password@`; nats-py uses it then."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_file: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert or self.tls_hostname):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def connect_options(self) -> dict[str, Any]:
        """nats-py `connect()` keyword arguments for these credentials."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
        if self.password is not None:
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.nkey_file is not None:
            options["nkeys_seed"] = self.nkey_file
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        if (tls := self.tls_context()) is not None:
            options["tls"] = tls
        if self.tls_hostname is not None:
            options["tls_hostname"] = self.tls_hostname
        return options


def failure_kind(exc: BaseException) -> str | None:
    """REFUSED, AUTH or TLS for a first-connection error nats-py reports; None otherwise."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return TLS
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    text = str(exc).lower()
    if isinstance(exc, nats.errors.AuthorizationError) or (
            isinstance(exc, nats.errors.Error) and ("authoriz" in text or "authentic" in text)):
        return AUTH
    if isinstance(exc, nats.errors.Error) and "tls" in text:
        return TLS  # e.g. the server requires TLS and the client did not offer it
    return None


class FirstContact:
    """nats-py's error callback while connecting: quiet (one debug line per retry, never
    the URL), it knows when every server refused, and it remembers the first
    authorization or TLS failure so that `connect` can stop at once: retrying a wrong
    secret cannot help."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.refusals = 0
        self.verdict: tuple[str, BaseException] | None = None
        self.decided = asyncio.Event()
        self.connected = False  # set by `connect`; later failures are only logged

    async def on_error(self, exc: Exception) -> None:
        kind = failure_kind(exc)
        if "permissions violation" in str(exc).lower() or (
                self.connected and kind in (AUTH, TLS)):  # to fix; reconnecting cannot help
            log.warning("NATS: %s", exc)
            return
        log.debug("nats: %s", type(exc).__name__)
        if kind == REFUSED:
            self.refusals += 1
            if self.refusals >= self.servers and self.verdict is None:
                self.verdict = (REFUSED, exc)
                self.decided.set()
        elif kind is not None and (self.verdict is None or self.verdict[0] == REFUSED):
            self.verdict = (kind, exc)
            self.decided.set()

    def explain(self, where: str, timeout: float,
                setup_error: BaseException | None) -> tuple[str, str]:
        """The failure's kind and the message for the user (never a URL with a secret:
        `where` is already redacted)."""
        if setup_error is not None:  # e.g. an unreadable seed: nats-py gave up at once
            return AUTH, (f"{where}: the credentials could not be used "
                          f"({type(setup_error).__name__}: {setup_error})")
        kind, exc = self.verdict or ("", None)
        if kind == AUTH:
            return AUTH, (f"{where} refused the credentials (authorization violation); "
                          "check the user, password, token, nkey or .creds given")
        if kind == TLS:
            return TLS, (f"{where}: TLS failed ({exc}); check --tls-ca, --tls-cert/"
                         "--tls-key and --tls-hostname")
        if kind == REFUSED:
            return REFUSED, f"{where} refused the connection"
        return "", f"{where} did not answer within {timeout:g} s"


def write_private(path: Path, text: str) -> None:
    """Write `text` atomically to a file only its owner can read (0600 whatever the umask)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
    os.replace(temp, path)


def embedded_auth_dir(store: Path) -> Path:
    return Path(store) / "auth"


def write_embedded_auth(store: Path) -> tuple[Path, str]:
    """A fresh random password for one run of the embedded server: its config (for `-c`)
    and the clients' password file, both 0600 in a 0700 directory. Returns the config."""
    folder = embedded_auth_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    password = secrets.token_urlsafe(32)
    write_private(folder / "password", password + "\n")
    config = folder / "server.conf"
    write_private(config, f'authorization {{\n  user: "{EMBEDDED_USER}"\n'
                          f'  password: "{password}"\n}}\n')
    return config, password


def embedded_password_file(store: Path) -> Path:
    return embedded_auth_dir(store) / "password"


def read_secret(path: str | Path) -> str:
    """A secret file's content without the trailing newline (OSError when unreadable)."""
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
