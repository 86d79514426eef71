"""A VM's events as its lifecycle reports them, and the checks whose results are events.

`Reporter` builds each event with a stable id (a re-sent event is a duplicate) and the
generation of the request it serves; where events go (NATS, a terminal, the reducer of
polling mode) is the `emit` coroutine it is given.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.verify import check_cloud_init, check_ssh
from vmlaunch.schema.messages import (
    CloudInitComplete,
    Complete,
    Failed,
    Message,
    Payload,
    SshVerified,
    Status,
    StatusState,
    stable_event_id,
)
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import Phase

Emit = Callable[[Message], Awaitable[None]]
# Base pause between SSH tries; a request with a shorter retry_backoff uses that instead.
SSH_BACKOFF = 2.0


class Reporter:
    """Builds this VM's events with stable ids, so a re-sent event is a duplicate; each
    carries the generation of the request it serves."""

    def __init__(self, emit: Emit, *, deployment_id: str, vm_name: str, source: str,
                 id_seed: str, generation: int = 0) -> None:
        self._emit = emit
        self.generation = generation
        self.deployment_id = deployment_id
        self.vm_name = vm_name
        self.source = source
        self._id_seed = id_seed
        self._seq = itertools.count(1)

    async def send(self, payload: Payload, *, attempt: int) -> None:
        await self._emit(Message(
            deployment_id=self.deployment_id, vm_name=self.vm_name, payload=payload,
            attempt=attempt, generation=self.generation, source=self.source,
            event_id=stable_event_id(self._id_seed, next(self._seq)),
        ))

    async def status(self, state: Phase | StatusState, detail: str, *, attempt: int,
                     spec: VMSpec | None = None) -> None:
        await self.send(Status(state=Phase(state).value, detail=detail,
                               zone=spec.zone if spec else None,
                               size=spec.size if spec else None), attempt=attempt)

    async def failed(self, error: AzError, *, attempt: int, final: bool, spec: VMSpec) -> None:
        await self.send(Failed(
            error_code=error.code, message=error.message,
            retryable=error.kind is not FailureKind.PERMANENT, attempts=attempt, final=final,
            zone=spec.zone, size=spec.size,
        ), attempt=attempt)


async def verify_vm(spec: VMSpec, *, ip: str, az: AzCli, report: Reporter, attempt: int,
                    private_key: str | None) -> AzError | None:
    """Run the requested checks, emitting their events; the error of the first failure."""
    if spec.verify_ssh or spec.verify_cloud_init:
        await report.status(Phase.VERIFYING, f"checking {ip}", attempt=attempt, spec=spec)
    backoff = min(SSH_BACKOFF, spec.retry_backoff)
    if spec.verify_ssh:
        ssh = await check_ssh(spec, ip=ip, private_key=private_key, backoff=backoff)
        if not ssh.ok:
            return AzError("SshFailed", ssh.detail, FailureKind.TRANSIENT)
        await report.send(SshVerified(ip=ip, port=spec.ssh_port, user=spec.effective_ssh_user),
                          attempt=attempt)
    if spec.verify_cloud_init:
        cloud = await check_cloud_init(spec, az=az, ip=ip, private_key=private_key,
                                       backoff=backoff)
        await report.send(CloudInitComplete(result=cloud.result or "error", detail=cloud.detail),
                          attempt=attempt)
        if not cloud.ok:
            return AzError("CloudInitFailed", cloud.detail, FailureKind.TRANSIENT)
    return None


async def report_created(report: Reporter, vm: dict, *, spec: VMSpec, attempt: int,
                         seconds: float) -> str:
    """Emit `complete` for a VM as az prints it (create output, show -d or list -d); its IP."""
    ip = vm.get("publicIps") or vm.get("publicIpAddress") or ""
    await report.send(Complete(
        public_ip=ip, private_ip=vm.get("privateIps") or vm.get("privateIpAddress") or "",
        vm_id=vm.get("id", ""), duration_seconds=round(seconds, 3), zone=spec.zone,
        size=spec.size,
    ), attempt=attempt)
    return ip
