"""Helpers for the credential and TLS tests: real nats-servers started with a config file
(users, tokens, nkeys, operator JWTs, TLS), test certificates made by trustme, and
`.creds` files made with nkeys (the JWTs signed here, as `nsc` would)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys
import trustme
from conftest import async_wait_until

from vmlaunch.bus.connection import nats_server_binary


class ConfiguredServer:
    """A real nats-server (JetStream, loopback, a free port) started with a config file;
    started by the test itself so that these tests also run against older product code."""

    def __init__(self, root: Path, config: Path, env: Mapping[str, str] | None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config), "-js", "-a", "127.0.0.1", "-p",
             str(self.port), "-sd", str(root / "jetstream"), "-l", str(root / "server.log")],
            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited with {self.proc.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            await async_wait_until(lambda: self.proc.poll() is not None, timeout=10,
                                   message="nats-server to stop")


@contextlib.asynccontextmanager
async def configured_server(root: Path, config: str | Path, *,
                            env: Mapping[str, str] | None = None
                            ) -> AsyncIterator[ConfiguredServer]:
    """A server started with `config`: a file's path, or the text of one."""
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(config, str):
        (root / "server.conf").write_text(config)
        config = root / "server.conf"
    server = ConfiguredServer(root, config, env)
    try:
        await async_wait_until(server.listening, timeout=10, message="nats-server to listen")
        yield server
    finally:
        await server.stop()


def secret_file(path: Path, secret: str) -> str:
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


def user_nkey(path: Path) -> str:
    """A new user NKey: its seed is written to `path`; returns the public key (U...)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for `nats.test` (not for 127.0.0.1), and another CA."""

    ca: str
    other_ca: str
    cert: str
    key: str

    def server_tls(self) -> str:
        return f'tls {{\n  cert_file: "{self.cert}"\n  key_file: "{self.key}"\n}}\n'


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("nats.test")
    paths = {name: root / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    return Pki(**{name: str(path) for name, path in paths.items()})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _jwt(issuer: nkeys.KeyPair, subject: str, nats: dict[str, object]) -> str:
    claims: dict[str, object] = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
                                 "name": subject[:8], "sub": subject,
                                 "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()
                                     ).decode().rstrip("=")
    signed = (_b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." +
              _b64(json.dumps(claims).encode()))
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def _creds(path: Path, account: nkeys.KeyPair) -> str:
    user = _key(nkeys.PREFIX_BYTE_USER)
    token = _jwt(account, user.public_key.decode(), {
        "type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
    path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n"
                    f"\n-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
                    "------END USER NKEY SEED------\n")
    path.chmod(0o600)
    return str(path)


def operator_setup(root: Path) -> tuple[str, str, str]:
    """A server config trusting one operator and its account, a `.creds` file of a user
    of that account, and one of a user of an account the server does not know."""
    root.mkdir(parents=True, exist_ok=True)
    operator = _key(nkeys.PREFIX_BYTE_OPERATOR)
    account, system, stranger = (_key(nkeys.PREFIX_BYTE_ACCOUNT) for _ in range(3))
    limits = {"type": "account", "limits": {"subs": -1, "data": -1, "payload": -1,
                                            "imports": -1, "exports": -1, "wildcards": True,
                                            "conn": -1, "leaf": -1}}
    preload = "".join(f'  {key.public_key.decode()}: '
                      f'"{_jwt(operator, key.public_key.decode(), limits)}"\n'
                      for key in (account, system))  # JetStream needs a system account
    config = (f'operator: "{_jwt(operator, operator.public_key.decode(), {"type": "operator"})}"'
              f'\nsystem_account: {system.public_key.decode()}\nresolver: MEMORY\n'
              f'resolver_preload: {{\n{preload}}}\n')
    return (config, _creds(root / "user.creds", account),
            _creds(root / "stranger.creds", stranger))
