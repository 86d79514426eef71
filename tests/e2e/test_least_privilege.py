"""A whole deployment under scripts/nats/least-privilege.conf: a real nats-server started
with that file, the streams made by `admin` (orchestrator.py streams), real workers as
`worker` and the orchestrator as `orchestrator`, both with --no-manage-streams. Neither
user may do the other's job, and only the admin manages streams."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import PYTHON, REPO, AzSim
from natsauthkit import ConfiguredServer, configured_server, secret_file
from workerkit import RG, launch_env, running

from vmlaunch.bus.connection import EVENTS_STREAM, REQUESTS_STREAM, WORKER_CONSUMER
from vmlaunch.schema.messages import Complete, CreateRequest, Message, Subject, encode
from vmlaunch.schema.vmspec import VMSpec

pytestmark = pytest.mark.timeout(120)

CONFIG = REPO / "scripts" / "nats" / "least-privilege.conf"
USERS = ("admin", "orchestrator", "worker")
VMS = ["lp-1", "lp-2", "lp-3"]


class Cluster:
    """The server and each user's password file."""

    def __init__(self, server: ConfiguredServer, files: dict[str, str]) -> None:
        self.server, self.files = server, files
        self.url = server.url

    def login(self, user: str) -> list[str]:
        return ["--nats-url", self.url, "--nats-user", user,
                "--nats-password-file", self.files[user]]

    async def client(self, user: str, errors: list[str] | None = None) -> Any:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc).lower().removeprefix("nats: "))
        return await nats.connect(self.url, user=user, password=Path(
            self.files[user]).read_text().strip(), error_cb=on_error)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    passwords = {user: "p" + secrets.token_hex(24) for user in USERS}  # see the config
    env = {f"NATS_{user.upper()}_PASSWORD": pw for user, pw in passwords.items()}
    files = {user: secret_file(tmp_path / f"{user}.pw", pw) for user, pw in passwords.items()}
    async with configured_server(tmp_path / "nats", CONFIG, env=env) as server:
        yield Cluster(server, files)


def cli(cwd: Path, az_sim: AzSim, *argv: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([PYTHON, str(REPO / "orchestrator.py"), *argv], cwd=cwd,
                          env=launch_env(az_sim), capture_output=True, text=True, timeout=90)


def deploy_args(cluster: Cluster) -> list[str]:
    return ["deploy", *(a for vm in VMS for a in ("--vm", vm)), "--resource-group", RG,
            "--image", "Debian12", "--no-verify-ssh", "--no-verify-cloud-init",
            "--retry-backoff", "0.05", "-y", "--require-nats", "--no-manage-streams",
            *cluster.login("orchestrator")]


def request(name: str) -> bytes:
    spec = VMSpec.from_dict({"name": name, "resource_group": RG, "image": "Ubuntu2204",
                             "location": "westus2"})
    return encode(Message(deployment_id="intruder", vm_name=name,
                          payload=CreateRequest(spec=spec)))


async def messages_in(cluster: Cluster, stream: str) -> int:
    admin = await cluster.client("admin")
    try:
        return (await admin.jetstream().stream_info(stream)).state.messages
    finally:
        await admin.close()


async def denied(cluster: Cluster, user: str, subject: str, data: bytes) -> list[str]:
    """Publish through JetStream as `user`; the server's permission errors."""
    errors: list[str] = []
    nc = await cluster.client(user, errors)
    try:
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await nc.jetstream().publish(subject, data, timeout=1.0)
        await asyncio.sleep(0)
    finally:
        await nc.close()
    return errors


async def test_a_deployment_runs_under_least_privilege_users(tmp_path: Path, az_sim: AzSim,
                                                             cluster: Cluster):
    early = cli(tmp_path / "run", az_sim, *deploy_args(cluster))
    assert early.returncode == 3, early.stderr  # no streams yet, and it may not make them
    assert "do not exist" in early.stderr and "orchestrator.py streams" in early.stderr
    refused = cli(tmp_path, az_sim, "streams", *cluster.login("orchestrator"))
    assert refused.returncode == 3, refused.stderr  # only the admin manages streams
    made = cli(tmp_path, az_sim, "streams", *cluster.login("admin"))
    assert made.returncode == 0, made.stderr

    async with running(cluster.url, az_sim, tmp_path) as workers:
        login = cluster.login("worker")[2:]  # --nats-url comes from Workers
        for worker_id in ("w1", "w2"):
            workers.start(worker_id, *login, "--no-manage-streams")
        done = cli(tmp_path / "run", az_sim, *deploy_args(cluster), "-v")
        logs = workers.log("w1") + workers.log("w2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert az_sim.state()["create_counts"] == dict.fromkeys(VMS, 1)
    assert "permissions violation" not in (logs + done.stderr).lower()  # no grant missing
    assert "NATS at nats://127.0.0.1:" in done.stdout + (tmp_path / "run" / "state" /
                                                        "deployment-events.yaml").read_text()
    trail = cli(tmp_path / "run", az_sim, "events", "--no-manage-streams",
                *cluster.login("orchestrator"))  # the orchestrator may read the events
    assert trail.returncode == 0, trail.stderr
    assert all(f"/{name} complete" in trail.stdout for name in VMS), trail.stdout


async def test_a_worker_may_not_publish_a_request_nor_the_orchestrator_an_event(
        cluster: Cluster, tmp_path: Path, az_sim: AzSim):
    assert cli(tmp_path, az_sim, "streams", *cluster.login("admin")).returncode == 0
    errors = await denied(cluster, "worker", Subject.REQUEST.value, request("evil-1"))
    assert f'permissions violation for publish to "{Subject.REQUEST.value}"' in errors
    assert await messages_in(cluster, REQUESTS_STREAM) == 0  # nothing landed

    fake = encode(Message(deployment_id="d", vm_name="x", payload=Complete(
        public_ip="1.2.3.4", private_ip="10.0.0.4", vm_id="x", duration_seconds=1.0)))
    errors = await denied(cluster, "orchestrator", Subject.COMPLETE.value, fake)
    assert f'permissions violation for publish to "{Subject.COMPLETE.value}"' in errors
    assert await messages_in(cluster, EVENTS_STREAM) == 0

    orchestrator = await cluster.client("orchestrator")
    worker = await cluster.client("worker")
    try:
        with pytest.raises((nats.errors.Error, TimeoutError)):  # may not take requests
            sub = await orchestrator.jetstream().pull_subscribe_bind(
                durable=WORKER_CONSUMER, stream=REQUESTS_STREAM)
            await sub.fetch(1, timeout=1.0)
        with pytest.raises((nats.errors.Error, TimeoutError)):  # may not manage streams
            await worker.jetstream(timeout=1.0).delete_stream(EVENTS_STREAM)
    finally:
        await orchestrator.close()
        await worker.close()
    assert await messages_in(cluster, EVENTS_STREAM) == 0  # the stream is still there
