"""Helpers for the credential and TLS tests: real nats-servers started with a config file
(users, tokens, nkeys, TLS) and test certificates made by trustme."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys
import trustme

from embedded import EmbeddedNats


@contextlib.asynccontextmanager
async def configured_server(root: Path, config: str, *,
                            env: Mapping[str, str] | None = None) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server (JetStream, loopback, free port) started with `config`."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "server.conf"
    path.write_text(config)
    async with EmbeddedNats(root / "store", config=path,
                            env={**os.environ, **(env or {})}) as server:
        yield server


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
