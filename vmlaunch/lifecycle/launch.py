"""One VM from request to ready: validate, adopt or create, verify, retry.

The pipeline does not know where its events go (NATS, a terminal, the legacy
poller's reducer): it is given an `emit` coroutine. Verification is public, and the end
of a failed attempt lives in attempts.py, so the legacy poller reuses them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.look import look, refusal, unknown_error
from vmlaunch.azure.verify import check_cloud_init, check_ssh
from vmlaunch.lifecycle.attempts import after_failure, remove_vm
from vmlaunch.lifecycle.lease import OPEN, Fence
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
from vmlaunch.schema.vmspec import VMSpec, spec_problems

Emit = Callable[[Message], Awaitable[None]]
# Base pause between SSH tries; a request with a shorter retry_backoff uses that instead.
SSH_BACKOFF = 2.0


class Outcome(StrEnum):
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class LaunchResult:
    outcome: Outcome
    attempts: int
    error: AzError | None = None


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

    async def status(self, state: StatusState, detail: str, *, attempt: int,
                     spec: VMSpec | None = None) -> None:
        await self.send(Status(state=state, detail=detail, zone=spec.zone if spec else None,
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
        await report.status("verifying", f"checking {ip}", attempt=attempt, spec=spec)
    if spec.verify_ssh:
        ssh = await check_ssh(spec, ip=ip, private_key=private_key,
                              backoff=min(SSH_BACKOFF, spec.retry_backoff))
        if not ssh.ok:
            return AzError("SshFailed", ssh.detail, FailureKind.TRANSIENT)
        await report.send(SshVerified(ip=ip, port=spec.ssh_port, user=spec.effective_ssh_user),
                          attempt=attempt)
    if spec.verify_cloud_init:
        cloud = await check_cloud_init(spec, az=az, ip=ip, private_key=private_key)
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


class Launch:
    """Creates and verifies one VM, retrying on its own up to `max_attempts`; raises
    Fenced, having neither created nor deleted, once `fence` says it lost the VM.

    `adopt_untagged` (a launcher option, never a request field) lets it adopt a VM of that
    name that carries no deployment tag; it never deletes one."""

    def __init__(self, spec: VMSpec, *, az: AzCli, report: Reporter,
                 private_key: str | None = None, adopt_untagged: bool = False,
                 fence: Fence = OPEN) -> None:
        self.original = spec
        self.fence = fence
        self.az = az
        self.report = report
        self.private_key = private_key
        self.adopt_untagged = adopt_untagged
        self.started = time.monotonic()

    async def run(self) -> LaunchResult:
        spec = self.original
        await self.report.status("accepted", f"request for {spec.name} accepted", attempt=1,
                                 spec=spec)
        problems = spec_problems(spec, files_are_paths=False)
        if problems:
            error = AzError("InvalidRequest", "; ".join(problems), FailureKind.PERMANENT)
            await self.report.failed(error, attempt=1, final=True, spec=spec)
            return LaunchResult(Outcome.FAILED, 1, error)
        located = await self._located(spec)
        if isinstance(located, AzError):
            await self.report.failed(located, attempt=1, final=True, spec=spec)
            return LaunchResult(Outcome.FAILED, 1, located)
        spec = located
        for attempt in range(1, spec.max_attempts + 1):
            error = await self._attempt(spec, attempt)
            if error is None:
                return LaunchResult(Outcome.READY, attempt)
            retry = await after_failure(error, az=self.az, report=self.report, spec=spec,
                                        original=self.original, attempt=attempt,
                                        fence=self.fence)
            if retry is None:
                return LaunchResult(Outcome.FAILED, attempt, error)
            spec = retry.spec
            await asyncio.sleep(retry.delay)
        raise AssertionError("unreachable: the last attempt is final")

    async def _located(self, spec: VMSpec) -> VMSpec | AzError:
        """A spec without a location takes its resource group's (one `az group show`):
        az would otherwise look it up on every create."""
        if spec.location is not None:
            return spec
        shown = await self.az.group_show(spec.resource_group)
        location = shown.data.get("location") if isinstance(shown.data, dict) else None
        if shown.ok and location:
            return spec.replace(location=location)
        return shown.error or AzError("Unknown", f"az group show {spec.resource_group} gave "
                                      "no location", FailureKind.TRANSIENT)

    async def _attempt(self, spec: VMSpec, attempt: int) -> AzError | None:
        vm = await self._create_or_adopt(spec, attempt)
        if isinstance(vm, AzError):
            return vm
        ip = await report_created(self.report, vm, spec=spec, attempt=attempt,
                                  seconds=time.monotonic() - self.started)
        return await verify_vm(spec, ip=ip, az=self.az, report=self.report, attempt=attempt,
                               private_key=self.private_key)

    async def _create_or_adopt(self, spec: VMSpec, attempt: int) -> dict | AzError:
        """Look first: never start a second create of a VM that exists or is in flight, and
        act only on what a read said (azure-cli.md §6)."""
        seen = await look(self.az, spec, time.monotonic() + spec.create_timeout)
        if seen.unknown:
            return unknown_error(spec, seen)
        if seen.absent:
            return await self._create(spec, attempt)
        broken = seen.state in ("Failed", "Deleting")
        refused = refusal(seen.data, deployment_id=self.report.deployment_id,
                          adopt_untagged=self.adopt_untagged, delete=broken)
        if refused is not None:
            return refused
        if seen.state == "Succeeded":
            return seen.data
        if not broken:  # Creating, Updating, or a state we do not know: never destructive
            return await self._wait_in_flight(spec, attempt)
        await self.report.status("deleting", f"found {spec.name} {seen.state}; removing it "
                                 "before creating", attempt=attempt, spec=spec)
        removed = await remove_vm(self.az, spec, fence=self.fence)
        if not removed.ok:
            return removed.error
        return await self._create(spec, attempt)

    async def _create(self, spec: VMSpec, attempt: int) -> dict | AzError:
        where = f"zone {spec.zone}" if spec.zone else "no zone"
        await self.report.status("creating", f"az vm create {spec.name} ({spec.size}, {where})",
                                 attempt=attempt, spec=spec)
        # Checked last: reporting may have waited long for NATS, and the lease with it.
        await self.fence.allow("create", spec.name)
        created = await self.az.create_vm(spec, deployment_id=self.report.deployment_id,
                                          timeout=spec.create_timeout)
        if created.ok and isinstance(created.data, dict):
            return created.data
        error = created.error or AzError("Unknown", "az vm create printed no JSON",
                                         FailureKind.TRANSIENT)
        if created.timed_out or error.kind is FailureKind.LOOK:
            # Azure keeps creating after the client dies: look before deciding.
            seen = await look(self.az, spec, time.monotonic() + spec.create_timeout)
            if seen.state == "Succeeded":
                return seen.data
        return error

    async def _wait_in_flight(self, spec: VMSpec, attempt: int) -> dict | AzError:
        await self.report.status("provisioning", f"{spec.name} is already being created; "
                                 "waiting for it", attempt=attempt, spec=spec)
        deadline = time.monotonic() + spec.create_timeout
        pause = 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 15.0)
            seen = await look(self.az, spec, deadline)
            if seen.state == "Succeeded":
                return seen.data
            if seen.state == "Failed":
                return AzError("ProvisioningFailed", f"{spec.name} ended in state Failed",
                               FailureKind.TRANSIENT)
            if seen.absent:
                return await self._create(spec, attempt)
        return AzError("Timeout", f"{spec.name} still not provisioned after "
                       f"{spec.create_timeout:g} s", FailureKind.TRANSIENT)
