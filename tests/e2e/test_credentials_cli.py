"""Credentials end to end: real orchestrator, worker and launch processes against real
nats-servers that require a password or TLS, the simulator as Azure.

A secret never shows in output, logs or the files the tool writes; a wrong secret or CA is
exit 3 with its own message and never a fallback to polling."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nats
import pytest
from conftest import PYTHON, REPO, AzSim
from natsauthkit import configured_server, make_pki, secret_file, user_nkey
from workerkit import RG, launch_env, running

from vmlaunch.bus.connection import EVENTS_STREAM

pytestmark = pytest.mark.timeout(120)

PASSWORD = "pw-Zq81-very-secret"
USERS = f'authorization {{\n  users: [ {{ user: alice, password: "{PASSWORD}" }} ]\n}}\n'
FAST = ["--vm", "vm-1", "--resource-group", RG, "--image", "Debian12", "--no-verify-ssh",
        "--no-verify-cloud-init", "--retry-backoff", "0.05", "-y"]
LAUNCH = ["launch", "-n", "vm-1", "-g", RG, "--image", "Ubuntu2204", "--location", "westus2",
          "--no-verify-ssh", "--no-verify-cloud-init"]


def run(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([PYTHON, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=90)


def deploy(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(cwd, env, str(REPO / "orchestrator.py"), "deploy", *FAST, *args)


def written(cwd: Path) -> str:
    return "".join(path.read_text() for path in (cwd / "state").glob("*.yaml"))


async def test_a_password_in_nats_url_works_and_shows_nowhere(tmp_path: Path, az_sim: AzSim):
    async with configured_server(tmp_path / "srv", USERS) as server:
        env = {**launch_env(az_sim), "NATS_URL": server.url.replace(
            "nats://", f"nats://alice:{PASSWORD}@")}
        async with running(server.url, az_sim, tmp_path) as workers:
            workers.start("w1", "--nats-user", "alice", env={"NATS_PASSWORD": PASSWORD})
            done = deploy(tmp_path / "run", env, "--require-nats", "-v")
            logs = workers.log("w1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert az_sim.state()["create_counts"] == {"vm-1": 1}
    files = written(tmp_path / "run")
    assert "NATS at nats://alice:***@127.0.0.1:" in files  # the mode line, redacted
    for where in (done.stdout, done.stderr, files, logs):
        assert PASSWORD not in where
    assert "serving vm.create.request" in logs


async def test_a_wrong_password_exits_3_with_an_authorization_message_and_no_polling(
        tmp_path: Path, az_sim: AzSim):
    wrong = secret_file(tmp_path / "pw", "not-the-password")
    async with configured_server(tmp_path / "srv", USERS) as server:
        done = deploy(tmp_path / "run", launch_env(az_sim), "--nats-url", server.url,
                      "--nats-user", "alice", "--nats-password-file", wrong,
                      "--nats-connect-timeout", "20")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refused the credentials (authorization violation)" in done.stderr
    assert "error: NATS at" in done.stderr  # fatal, so not shown as a mere warning
    assert "polling" not in done.stdout + done.stderr
    assert az_sim.state().get("create_counts", {}) == {}
    assert not (tmp_path / "run" / "state").exists()  # nothing written, nothing launched


async def test_a_server_certificate_from_another_ca_exits_3_with_a_tls_message(
        tmp_path: Path, az_sim: AzSim):
    pki = make_pki(tmp_path / "pki")
    async with configured_server(tmp_path / "srv", pki.server_tls()) as server:
        done = deploy(tmp_path / "run", launch_env(az_sim), "--nats-url",
                      server.url.replace("nats://", "tls://"), "--tls-ca", pki.other_ca,
                      "--tls-hostname", "nats.test")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "TLS failed" in done.stderr and "certificate verify failed" in done.stderr
    assert "polling" not in done.stdout + done.stderr
    assert az_sim.state().get("create_counts", {}) == {}


async def test_tls_hostname_lets_a_worker_and_the_orchestrator_use_a_server_reached_by_ip(
        tmp_path: Path, az_sim: AzSim):
    pki = make_pki(tmp_path / "pki")
    async with configured_server(tmp_path / "srv", pki.server_tls()) as server:
        url = server.url.replace("nats://", "tls://")
        tls = ["--tls-ca", pki.ca, "--tls-hostname", "nats.test"]
        async with running(url, az_sim, tmp_path) as workers:
            workers.start("w1", *tls)
            done = deploy(tmp_path / "run", launch_env(az_sim), "--nats-url", url,
                          "--require-nats", *tls)
    assert done.returncode == 0, done.stdout + done.stderr
    assert az_sim.state()["create_counts"] == {"vm-1": 1}


async def test_serve_and_launch_exit_3_on_a_wrong_password(tmp_path: Path, az_sim: AzSim):
    env = {**launch_env(az_sim), "NATS_USER": "alice", "NATS_PASSWORD": "wrong-one"}
    async with configured_server(tmp_path / "srv", USERS) as server:
        served = run(tmp_path, env, str(REPO / "vm_launcher.py"), "serve", "--nats-url",
                     server.url, "--nats-connect-timeout", "20")
        launched = run(tmp_path, env, str(REPO / "vm_launcher.py"), *LAUNCH, "--nats-url",
                       server.url, "--nats-connect-timeout", "20")
    assert served.returncode == 3, served.stderr
    assert "authorization violation" in served.stderr
    assert launched.returncode == 3, launched.stderr
    assert "authorization violation" in launched.stderr
    assert az_sim.state().get("create_counts", {}) == {}  # launch created nothing
    assert "wrong-one" not in served.stderr + launched.stderr + launched.stdout


async def test_launch_publishes_its_events_with_an_nkey_seed_file(tmp_path: Path,
                                                                  az_sim: AzSim):
    seed = tmp_path / "user.nk"
    config = f'authorization {{\n  users: [ {{ nkey: "{user_nkey(seed)}" }} ]\n}}\n'
    async with configured_server(tmp_path / "srv", config) as server:
        done = run(tmp_path, launch_env(az_sim), str(REPO / "vm_launcher.py"), *LAUNCH,
                   "--nats-url", server.url, "--nats-nkey", str(seed))
        nc = await nats.connect(server.url, nkeys_seed=str(seed))
        try:
            events = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.messages
        finally:
            await nc.close()
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr  # NATS answered and took the events
    assert events >= 3  # accepted, creating, complete, ...


def test_contradictory_credential_options_are_exit_2_listing_every_problem(
        tmp_path: Path, az_sim: AzSim):
    pw, token = secret_file(tmp_path / "pw", "x"), secret_file(tmp_path / "tok", "y")
    done = deploy(tmp_path / "run", launch_env(az_sim), "--nats-url", "nats://127.0.0.1:9",
                  "--nats-password-file", pw, "--nats-token-file", token, "--tls-key", pw)
    assert done.returncode == 2, done.stderr
    for problem in ("give one way to authenticate to NATS, not a password and a token",
                    "a NATS password needs --nats-user", "--tls-key needs --tls-cert"):
        assert problem in done.stderr
    assert az_sim.state().get("create_counts", {}) == {}


def test_no_option_takes_a_secret_as_its_value():
    helps = [run(REPO, {}, str(REPO / script), *command, "--help").stdout
             for script, command in (("orchestrator.py", ["deploy"]),
                                     ("vm_launcher.py", ["serve"]))]
    for text in helps:
        assert "--nats-password-file" in text and "--nats-token-file" in text
        assert "--nats-password " not in text and "--nats-token " not in text
