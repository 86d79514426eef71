"""Credentials and TLS against real nats-servers: each way to authenticate works, and a
refused connection, rejected credentials and a TLS failure are three different errors."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import psutil
import pytest
from natsauthkit import configured_server, make_pki, operator_setup, secret_file, user_nkey

from vmlaunch.bus.auth import Credentials
from vmlaunch.bus.connection import (
    NatsAuthError,
    NatsSettings,
    NatsTLSError,
    NatsUnreachable,
    connect,
    redact_url,
)
from vmlaunch.bus.embedded import EmbeddedRuntime, WorkerOptions, worker_argv, worker_env

pytestmark = pytest.mark.timeout(60)

USERS = 'authorization {\n  users: [ { user: alice, password: "s3cret-pw" } ]\n}\n'


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://alice:s3cret@host:4222", "nats://alice:***@host:4222"),
    ("tls://alice:s3cret@10.0.0.1", "tls://alice:***@10.0.0.1"),
    ("nats://tok3n@host:4222", "nats://***@host:4222"),
    ("nats://alice:p%40ss@host", "nats://alice:***@host"),
    ("nats://host:4222", "nats://host:4222"),
    # nats-py connects to a URL without a scheme; a password holding '#', '/' or '?'
    # (base64 makes them) ends the URL's authority early for urlsplit.
    ("alice:s3cret@host:4222", "alice:***@host:4222"),
    ("nats://alice:s3#cret@host:4222", "nats://alice:***@host:4222"),
    ("nats://alice:s3/cr?et@host:4222", "nats://alice:***@host:4222"),
    ("nats://alice:s3@cret@host:4222", "nats://alice:***@host:4222"),
    ("nats://alice:s3cret@[::1]:4222", "nats://alice:***@[::1]:4222"),
])
def test_a_url_is_shown_without_its_password_or_token(url, shown):
    assert redact_url(url) == shown


async def connects(settings: NatsSettings) -> bool:
    nc = await connect(settings)
    try:
        return nc.is_connected
    finally:
        await nc.close()


async def test_a_user_and_password_connect_and_a_wrong_password_is_an_authorization_error(
        tmp_path: Path):
    async with configured_server(tmp_path / "srv", USERS) as server:
        right = Credentials(user="alice", password="s3cret-pw")
        assert await connects(NatsSettings(servers=[server.url], auth=right))
        wrong = NatsSettings(servers=[server.url], connect_timeout=30,
                             auth=Credentials(user="alice", password="wrong"))
        started = time.monotonic()
        with pytest.raises(NatsAuthError, match="authorization") as caught:
            await connect(wrong)
        assert time.monotonic() - started < 10  # at once, not after the connect timeout
        assert "wrong" not in str(caught.value)


async def test_a_password_in_the_url_never_appears_in_the_error(tmp_path: Path):
    async with configured_server(tmp_path / "srv", USERS) as server:
        url = server.url.replace("nats://", "nats://alice:not-the-pw@")
        with pytest.raises(NatsAuthError) as caught:
            await connect(NatsSettings(servers=[url]))
        assert "not-the-pw" not in str(caught.value)
        assert "alice:***@" in str(caught.value)


async def test_a_token_authenticates(tmp_path: Path):
    config = 'authorization {\n  token: "t0ken-xyz"\n}\n'
    async with configured_server(tmp_path / "srv", config) as server:
        assert await connects(NatsSettings(servers=[server.url],
                                           auth=Credentials(token="t0ken-xyz")))
        with pytest.raises(NatsAuthError):
            await connect(NatsSettings(servers=[server.url], auth=Credentials(token="nope")))


async def test_an_nkey_seed_file_authenticates(tmp_path: Path):
    seed = tmp_path / "user.nk"
    public = user_nkey(seed)
    other_seed = tmp_path / "other.nk"
    user_nkey(other_seed)
    config = f'authorization {{\n  users: [ {{ nkey: "{public}" }} ]\n}}\n'
    async with configured_server(tmp_path / "srv", config) as server:
        assert await connects(NatsSettings(servers=[server.url],
                                           auth=Credentials(nkey_file=str(seed))))
        with pytest.raises(NatsAuthError):
            await connect(NatsSettings(servers=[server.url],
                                       auth=Credentials(nkey_file=str(other_seed))))


async def test_a_creds_file_authenticates_and_one_of_an_unknown_account_is_refused(
        tmp_path: Path):
    config, creds, stranger = operator_setup(tmp_path / "jwt")
    async with configured_server(tmp_path / "srv", config) as server:
        assert await connects(NatsSettings(servers=[server.url],
                                           auth=Credentials(creds_file=creds)))
        with pytest.raises(NatsAuthError, match="authorization"):
            await connect(NatsSettings(servers=[server.url], connect_timeout=30,
                                       auth=Credentials(creds_file=stranger)))


async def test_an_unusable_seed_file_is_a_credentials_error_not_a_silent_server(
        tmp_path: Path):
    bad = Path(secret_file(tmp_path / "bad.nk", "SUNOTASEED"))
    async with configured_server(tmp_path / "srv", USERS) as server:
        with pytest.raises(NatsAuthError, match="credentials could not be used"):
            await connect(NatsSettings(servers=[server.url], connect_timeout=30,
                                       auth=Credentials(nkey_file=str(bad))))


async def test_tls_with_the_right_ca_and_hostname_connects_to_a_server_reached_by_ip(
        tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    async with configured_server(tmp_path / "srv", pki.server_tls()) as server:
        url = server.url.replace("nats://", "tls://")  # 127.0.0.1: not in the certificate
        trusted = Credentials(tls_ca=pki.ca, tls_hostname="nats.test")
        assert await connects(NatsSettings(servers=[url], auth=trusted))
        with pytest.raises(NatsTLSError, match="TLS failed"):  # the IP is not the name
            await connect(NatsSettings(servers=[url], auth=Credentials(tls_ca=pki.ca)))


async def test_a_server_certificate_from_another_ca_is_a_tls_error(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    async with configured_server(tmp_path / "srv", pki.server_tls()) as server:
        url = server.url.replace("nats://", "tls://")
        wrong_ca = Credentials(tls_ca=pki.other_ca, tls_hostname="nats.test")
        started = time.monotonic()
        with pytest.raises(NatsTLSError, match="certificate verify failed"):
            await connect(NatsSettings(servers=[url], auth=wrong_ca, connect_timeout=30))
        assert time.monotonic() - started < 10


async def test_refused_unauthorised_and_tls_failures_are_three_different_errors(
        tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    async with (configured_server(tmp_path / "users", USERS) as users,
                configured_server(tmp_path / "tls", pki.server_tls()) as tls):
        await users.stop()  # its port now refuses
        with pytest.raises(NatsUnreachable, match="refused the connection"):
            await connect(NatsSettings(servers=[users.url]))
    async with configured_server(tmp_path / "users2", USERS) as users:
        with pytest.raises(NatsAuthError):
            await connect(NatsSettings(servers=[users.url]))  # no credentials at all
    async with configured_server(tmp_path / "tls2", pki.server_tls()) as tls:
        with pytest.raises(NatsTLSError):
            await connect(NatsSettings(servers=[tls.url.replace("nats://", "tls://")],
                                       auth=Credentials(tls_ca=pki.other_ca)))
    for error in (NatsAuthError, NatsTLSError):
        assert not issubclass(error, NatsUnreachable)  # only unreachable may fall back


async def test_the_embedded_server_admits_only_holders_of_the_per_run_secret(tmp_path: Path):
    store = tmp_path / "nats"
    async with EmbeddedRuntime(store, WorkerOptions(count=0)) as runtime:
        with pytest.raises(NatsAuthError):
            await connect(NatsSettings(servers=[runtime.url]))
        settings = runtime.client("test")
        assert await connects(settings)
        assert runtime.url.startswith("nats://127.0.0.1:")
        secret = settings.auth.password
        assert secret and len(secret) >= 32
        server_argv = " ".join(psutil.Process(runtime.nats.pid).cmdline())
        assert secret not in server_argv
        for name in ("password", "server.conf"):
            assert stat.S_IMODE((store / "auth" / name).stat().st_mode) == 0o600
        assert stat.S_IMODE((store / "auth").stat().st_mode) == 0o700
        assert secret not in repr(settings)
    async with EmbeddedRuntime(store, WorkerOptions(count=0)) as again:
        assert again.client("test").auth.password != secret  # a new secret per run


def test_embedded_workers_get_the_secrets_path_in_their_environment_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NATS_TOKEN", "meant-for-another-server")
    monkeypatch.setenv("NATS_URL", "nats://elsewhere:4222")
    env = worker_env(tmp_path, WorkerOptions())
    assert env["NATS_USER"] == "vm-launch"
    assert env["NATS_PASSWORD_FILE"] == str(tmp_path / "auth" / "password")
    assert {k for k in env if k.startswith("NATS_")} == {"NATS_USER", "NATS_PASSWORD_FILE"}
    argv = worker_argv("nats://127.0.0.1:4222", 1, WorkerOptions())
    assert not any("password" in arg or "token" in arg for arg in argv)
