"""One VM of legacy polling mode: its phase, and the tasks that end one of its attempts.

A poll hands each decision about a VM to one task, so a slow VM never delays another's
update: verification once Azure says Succeeded, collecting a failed create's error and
cleaning up for the retry, removing a Failed VM found before we created it. Each task ends
with the VM's next phase set; the poller only watches the phases.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmlaunch.azure.azcli import AzCli, AzError
from vmlaunch.azure.createproc import CreateProcess
from vmlaunch.lifecycle.attempts import after_failure, remove_vm
from vmlaunch.lifecycle.lease import Fence
from vmlaunch.lifecycle.report import Reporter, report_created, verify_vm
from vmlaunch.schema.vmspec import VMSpec

EXIT_GRACE = 5.0  # a create client whose VM Azure has already decided gets this long to exit


class Phase(StrEnum):
    NEW = "new"  # not yet seen by a poll: the first one decides between adopt and launch
    QUEUED = "queued"  # waiting for a free slot or for its backoff
    CREATING = "creating"  # our `az vm create` runs, or Azure's in-flight create was adopted
    BUSY = "busy"  # a task (verification or clean-up) owns the VM until it ends
    READY = "ready"
    FAILED = "failed"


@dataclass
class PolledVm:
    original: VMSpec  # with file contents, as a request carries them
    spec: VMSpec  # the current attempt's (a capacity failure moves its zone or size)
    report: Reporter
    attempt: int  # the current attempt's number; attempts already used before this run
    phase: Phase = Phase.NEW
    create: CreateProcess | None = None
    since: float = 0.0  # loop time the current create (ours or adopted) began
    not_before: float = 0.0  # loop time before which it is not relaunched (backoff)
    started: float = 0.0  # loop time this run first launched or adopted it

    @property
    def name(self) -> str:
        return self.spec.name


class VmTasks:
    """The work of the per-VM tasks, with what they share: the az layer, the SSH key and
    the fence every delete passes."""

    def __init__(self, az: AzCli, private_key: str | None, fence: Fence) -> None:
        self.az, self.private_key, self.fence = az, private_key, fence
        self.loop = asyncio.get_running_loop()

    async def succeeded(self, vm: PolledVm, seen: dict[str, Any]) -> None:
        vm.spec = as_found(vm.spec, seen)
        ip = await report_created(vm.report, seen, spec=vm.spec, attempt=vm.attempt,
                                  seconds=self.loop.time() - vm.started)
        if vm.create is not None:  # Succeeded: its client is about to exit by itself
            await vm.create.finish(grace=EXIT_GRACE)
            vm.create = None
        error = await verify_vm(vm.spec, ip=ip, az=self.az, report=vm.report, attempt=vm.attempt,
                                private_key=self.private_key)
        if error is None:
            vm.phase = Phase.READY
        else:
            await self.retry(vm, error)

    async def failed(self, vm: PolledVm, fallback: AzError, *, grace: float = 0.0,
                     decided: bool = False) -> None:
        """The attempt failed: the create's own error (from its stderr) unless `decided`."""
        reported = await vm.create.finish(grace=grace) if vm.create is not None else None
        vm.create = None
        await self.retry(vm, fallback if decided or reported is None else reported)

    async def retry(self, vm: PolledVm, error: AzError) -> None:
        retry = await after_failure(error, az=self.az, report=vm.report, spec=vm.spec,
                                    original=vm.original, attempt=vm.attempt, fence=self.fence)
        if retry is None:
            vm.phase = Phase.FAILED
            return
        vm.spec, vm.phase = retry.spec, Phase.QUEUED
        vm.not_before = self.loop.time() + retry.delay

    async def replace_failed(self, vm: PolledVm) -> None:
        """Found Failed before we created it: remove it (waits until gone), then create."""
        await vm.report.status("deleting", f"found {vm.name} Failed; removing it before "
                               "creating", attempt=max(vm.attempt, 1), spec=vm.spec)
        removed = await remove_vm(self.az, vm.spec, fence=self.fence)
        vm.phase = Phase.QUEUED if removed.ok else Phase.NEW  # not removed: look again


def as_found(spec: VMSpec, seen: dict[str, Any]) -> VMSpec:
    """The spec with the zone and size the VM really has (the worker may have moved them)."""
    zones = seen.get("zones") or []
    size = (seen.get("hardwareProfile") or {}).get("vmSize")
    return spec.replace(zone=zones[0] if zones else spec.zone, size=size or spec.size)
