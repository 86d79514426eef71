"""One VM from request to ready: validate, adopt or create, verify, retry.

The pipeline does not know where its events go (NATS, a terminal, the legacy
poller's reducer): it is given an `emit` coroutine. Retry decisions, clean-up and
verification are public functions so the legacy poller reuses them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from azcli import AzCli, AzError, AzResult, FailureKind
from lease import OPEN, Fence
from messages import (
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
from verify import check_cloud_init, check_ssh
from vmspec import VMSpec, spec_problems

Emit = Callable[[Message], Awaitable[None]]
BACKOFF_CAP = 120.0
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


def next_spec(spec: VMSpec, original: VMSpec, error: AzError) -> VMSpec:
    """After a capacity failure, move to the next fallback zone, then the next size."""
    if error.kind is not FailureKind.CAPACITY:
        return spec
    zones = [z for z in [original.zone, *original.fallback_zones] if z is not None]
    if spec.zone in zones and zones.index(spec.zone) + 1 < len(zones):
        return spec.replace(zone=zones[zones.index(spec.zone) + 1])
    sizes = [original.size, *original.fallback_sizes]
    if spec.size in sizes and sizes.index(spec.size) + 1 < len(sizes):
        # A new size starts again from the first zone.
        return spec.replace(size=sizes[sizes.index(spec.size) + 1], zone=original.zone)
    return spec


def backoff_delay(spec: VMSpec, attempt: int, error: AzError) -> float:
    """Exponential with jitter, never shorter than the service's retry-after hint."""
    delay = min(BACKOFF_CAP, spec.retry_backoff * 2 ** (attempt - 1))
    delay *= random.uniform(0.5, 1.0)
    return max(delay, error.retry_after or 0.0)


async def remove_vm(az: AzCli, spec: VMSpec, *, fence: Fence = OPEN) -> AzResult:
    """Delete the VM (its NIC and OS disk go with it) and then its public IP, if `fence`
    allows (else Fenced).

    `az vm create` gives the public IP no delete option, so it is removed separately:
    no orphan, no cost leak, and a retry in another zone gets a fresh zonal IP.
    """
    await fence.allow("delete", spec.name)
    deleted = await az.delete_vm(spec.resource_group, spec.name)
    if not deleted.ok:
        return deleted
    return await az.delete_public_ip(spec.resource_group, spec.name)


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


@dataclass(frozen=True)
class Retry:
    spec: VMSpec  # for the next attempt: the zone or size may have moved
    delay: float  # seconds to wait before it


async def after_failure(error: AzError, *, az: AzCli, report: Reporter, spec: VMSpec,
                        original: VMSpec, attempt: int, fence: Fence = OPEN) -> Retry | None:
    """Report a failed attempt, remove what it left, plan the next one; None when final."""
    final = error.kind is FailureKind.PERMANENT or attempt >= spec.max_attempts
    await report.failed(error, attempt=attempt, final=final, spec=spec)
    await clean_up(az, report, spec, attempt=attempt, fence=fence)
    if final:
        return None
    spec = next_spec(spec, original, error)
    delay = backoff_delay(spec, attempt, error)
    await report.status("retrying", f"{error.code}: attempt {attempt + 1} of "
                        f"{spec.max_attempts} in {delay:.1f} s", attempt=attempt + 1, spec=spec)
    return Retry(spec, delay)


async def clean_up(az: AzCli, report: Reporter, spec: VMSpec, *, attempt: int,
                   fence: Fence = OPEN) -> None:
    """Delete a failed attempt's VM and public IP, if the VM exists; waits until gone."""
    shown = await az.show_vm(spec.resource_group, spec.name)
    if shown.not_found:
        return
    await report.status("deleting", f"deleting {spec.name} and its public IP",
                        attempt=attempt, spec=spec)
    await remove_vm(az, spec, fence=fence)


def _state(result: AzResult) -> str:
    return result.data.get("provisioningState", "") if isinstance(result.data, dict) else ""


class Launch:
    """Creates and verifies one VM, retrying on its own up to `max_attempts`; raises
    Fenced, having neither created nor deleted, once `fence` says it lost the VM."""

    def __init__(self, spec: VMSpec, *, az: AzCli, report: Reporter,
                 private_key: str | None = None, fence: Fence = OPEN) -> None:
        self.original = spec
        self.fence = fence
        self.az = az
        self.report = report
        self.private_key = private_key
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
        """Look first: never start a second create of a VM that exists or is in flight."""
        shown = await self.az.show_vm(spec.resource_group, spec.name)
        state = _state(shown)
        if shown.ok and state == "Succeeded":
            return shown.data
        if shown.ok and state in ("Creating", "Updating"):
            return await self._wait_in_flight(spec, attempt)
        if shown.ok and state in ("Failed", "Deleting"):
            await self.report.status("deleting", f"found {spec.name} {state}; removing it "
                                     "before creating", attempt=attempt, spec=spec)
            removed = await remove_vm(self.az, spec, fence=self.fence)
            if not removed.ok:
                return removed.error
        elif not shown.ok and not shown.not_found:
            return shown.error
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
            shown = await self.az.show_vm(spec.resource_group, spec.name)
            if shown.ok and _state(shown) == "Succeeded":
                return shown.data
        return error

    async def _wait_in_flight(self, spec: VMSpec, attempt: int) -> dict | AzError:
        await self.report.status("provisioning", f"{spec.name} is already being created; "
                                 "waiting for it", attempt=attempt, spec=spec)
        deadline = time.monotonic() + spec.create_timeout
        pause = 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 15.0)
            shown = await self.az.show_vm(spec.resource_group, spec.name)
            state = _state(shown)
            if state == "Succeeded":
                return shown.data
            if state == "Failed":
                return AzError("ProvisioningFailed", f"{spec.name} ended in state Failed",
                               FailureKind.TRANSIENT)
            if shown.not_found:
                return await self._create(spec, attempt)
        return AzError("Timeout", f"{spec.name} still not provisioned after "
                       f"{spec.create_timeout:g} s", FailureKind.TRANSIENT)
