"""One VM from request to ready: validate, adopt or create, verify, retry.

The pipeline does not know where its events go (NATS, a terminal, the legacy
poller's reducer): it is given an `emit` coroutine. Verification is public, and the end
of a failed attempt lives in attempts.py, so the legacy poller reuses them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.look import look, refusal, unknown_error
from vmlaunch.lifecycle.attempts import after_failure, remove_vm
from vmlaunch.lifecycle.lease import OPEN, Fence
from vmlaunch.lifecycle.report import Reporter, report_created, verify_vm
from vmlaunch.schema.vmspec import VMSpec, spec_problems


class Outcome(StrEnum):
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class LaunchResult:
    outcome: Outcome
    attempts: int
    error: AzError | None = None


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
