"""Helpers for the worker and manual-launch tests: a test-side NATS client that publishes
requests and collects events, and real `vm_launcher.py` processes under the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import nats
from conftest import PYTHON, REPO, AzSim, async_wait_until, wait_until
from nats.aio.msg import Msg

from vmlaunch.bus.connection import EVENTS_STREAM, REQUESTS_STREAM, nats_server_binary
from vmlaunch.bus.streams import ensure_streams
from vmlaunch.schema.messages import Cancel, CreateRequest, Message, Subject, decode, encode
from vmlaunch.schema.vmspec import VMSpec

RG = "rg-test"
FAST = {"max_attempts": 3, "retry_backoff": 0.05, "create_timeout": 30.0,
        "verify_ssh": False, "verify_cloud_init": False}


def spec(name: str, **fields: Any) -> VMSpec:
    """A request spec with quick retries and no verification unless asked."""
    return VMSpec.from_dict({"name": name, "resource_group": RG, "image": "Ubuntu2204",
                             "location": "westus2", "zone": "1", **FAST, **fields})


def secret_request(name: str) -> Message:
    """A request whose custom data holds a secret that must never show anywhere."""
    return Message(deployment_id="dep-1", vm_name=name,
                   payload=CreateRequest(spec=spec(name, custom_data="#cloud-config\nsecret")))


class Bus:
    """The test's own NATS connection: publishes requests and cancels, collects events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[Message] = []
        self._seen: set[str] = set()
        self.nc: Any = None

    async def __aenter__(self) -> Bus:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js)
        await self.nc.subscribe("vm.>", cb=self._collect)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def _collect(self, msg: Msg) -> None:
        if msg.subject == Subject.REQUEST.value:
            return
        message = decode(msg.data)
        if message.event_id not in self._seen:  # at-least-once: drop duplicates
            self._seen.add(message.event_id)
            self.events.append(message)

    async def request(self, vm: VMSpec, *, deployment_id: str = "dep-1") -> Message:
        message = Message(deployment_id=deployment_id, vm_name=vm.name,
                          payload=CreateRequest(spec=vm), source="test")
        await self.publish_raw(encode(message))
        return message

    async def publish_raw(self, data: bytes) -> None:
        await self.js.publish(Subject.REQUEST.value, data)

    async def cancel(self, deployment_id: str, vm_name: str = "") -> Message:
        message = Message(deployment_id=deployment_id, vm_name=vm_name,
                          payload=Cancel(reason="test cancel"), source="test")
        await self.nc.publish(Subject.CANCEL.value, encode(message))
        await self.nc.flush()
        return message

    def of(self, vm_name: str, kind: type | None = None) -> list[Message]:
        return [m for m in self.events if m.vm_name == vm_name
                and (kind is None or isinstance(m.payload, kind))]

    def states(self, vm_name: str) -> list[str]:
        """The status states and event types of one VM, in order."""
        return [getattr(m.payload, "state", m.type.value) for m in self.of(vm_name)]

    async def wait_for(self, predicate: Any, *, timeout: float = 20.0,
                       message: str = "an event") -> Any:
        return await async_wait_until(predicate, timeout=timeout, message=message)

    async def wait_for_event(self, vm_name: str, state_or_type: str, *,
                             timeout: float = 20.0) -> Message:
        def found() -> Message | None:
            return next((m for m in self.of(vm_name) if state_or_type in
                         (getattr(m.payload, "state", None), m.type.value)), None)
        return await self.wait_for(found, timeout=timeout,
                                   message=f"{state_or_type} of {vm_name}")

    async def services(self, *, wait: float = 0.3) -> list[dict[str, Any]]:
        """Every vm-launcher's STATS answer (micro services reply one each)."""
        inbox = self.nc.new_inbox()
        answers: list[dict[str, Any]] = []

        async def collect(msg: Msg) -> None:
            if msg.data:  # an empty one is the server's "no responders" status
                answers.append(json.loads(msg.data))

        sub = await self.nc.subscribe(inbox, cb=collect)
        await self.nc.publish("$SRV.STATS.vm-launcher", b"", reply=inbox)
        await asyncio.sleep(wait)
        await sub.unsubscribe()
        return answers

    async def wait_for_workers(self, count: int, *, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(await self.services(wait=0.2)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {count} worker(s)")

    async def stored_events(self) -> list[Message]:
        """Every event in the events stream, in order (what survives any outage)."""
        info = await self.js.stream_info(EVENTS_STREAM)
        sub = await self.js.pull_subscribe("vm.>", stream=EVENTS_STREAM)
        found: list[Message] = []
        while len(found) < info.state.messages:
            found += [decode(m.data) for m in await sub.fetch(100, timeout=5)]
        await sub.unsubscribe()
        return found

    async def pending_requests(self) -> int:
        return (await self.js.stream_info(REQUESTS_STREAM)).state.messages

    async def wait_no_pending_requests(self, *, timeout: float = 30.0) -> None:
        """Acked or terminated requests leave the work queue (a request whose ack was lost
        under load is settled by its next delivery, an AckWait and an adoption later)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.pending_requests():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the requests to be settled")
            await asyncio.sleep(0.05)


class Workers:
    """Real `vm_launcher.py serve` processes against one simulator and one NATS server."""

    def __init__(self, url: str, az_sim: AzSim, logs: Path) -> None:
        self.url, self.az_sim, self.logs = url, az_sim, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, worker_id: str, *args: str, ack_wait: float = 2.0,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{worker_id}.log").open("ab")
        proc = subprocess.Popen(
            [PYTHON, str(REPO / "vm_launcher.py"), "serve", "--nats-url", self.url,
             "--worker-id", worker_id, "--ack-wait", str(ack_wait), *args],
            env={**self.az_sim.env, **(env or {})}, stdout=log, stderr=log, cwd=REPO)
        log.close()
        self.procs[worker_id] = proc
        return proc

    def log(self, worker_id: str) -> str:
        return (self.logs / f"{worker_id}.log").read_text(errors="replace")

    def signal(self, worker_id: str, sig: int) -> None:
        self.procs[worker_id].send_signal(sig)

    async def wait_exit(self, worker_id: str, *, timeout: float = 20.0) -> int:
        proc = self.procs[worker_id]
        await async_wait_until(lambda: proc.poll() is not None, timeout=timeout,
                               message=f"worker {worker_id} to exit")
        return proc.returncode

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for worker_id, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    await self.wait_exit(worker_id, timeout=15)
                except AssertionError:
                    proc.kill()
                    proc.wait()


@contextlib.asynccontextmanager
async def running(url: str, az_sim: AzSim, logs: Path):
    workers = Workers(url, az_sim, logs)
    try:
        yield workers
    finally:
        await workers.stop_all()


def no_orphans(az_sim: AzSim) -> bool:
    return not az_sim.az_processes()


def launch_env(az_sim: AzSim) -> dict[str, str]:
    """The simulator's environment without NATS_URL: a test never reaches a real server."""
    env = {k: v for k, v in az_sim.env.items() if k != "NATS_URL"}
    return {**env, "PYTHONUNBUFFERED": "1"}


SSHD = Path("/usr/sbin/sshd")


class _LoopbackDaemon:
    """A server process of a test on a free loopback port; `stop()` is safe twice."""

    log_name = "server.log"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{type(self).__name__} exited: "
                                 f"{(self.root / self.log_name).read_text()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Sshd(_LoopbackDaemon):
    """A private sshd on a free loopback port, accepting one generated key."""

    log_name = "sshd.log"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.user = getpass.getuser()
        self.key = root / "client_key"
        self.wrong_key = root / "wrong_key"

    def start(self) -> Sshd:
        for key in (self.root / "host_key", self.key, self.wrong_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True, timeout=30)
        (self.root / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "StrictModes no", "UsePAM no", f"PidFile {self.root / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", ""]))
        log = (self.root / "sshd.log").open("wb")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                     stderr=log)
        log.close()
        wait_until(self._listening, timeout=10, message="sshd to listen")
        return self


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RestartableNats(_LoopbackDaemon):
    """A nats-server on a fixed port with a persistent store, so it can go away and return."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(nats_server_binary()), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.root / "jetstream"), "-l", str(self.root / "server.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, timeout=10, message="nats-server to listen")
