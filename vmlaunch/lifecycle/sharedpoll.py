"""Polling mode's observer: one `az vm list -d -g RG` per interval feeds every VM's lifecycle.

The bash loop's way of watching Azure, done right. A read is the first listing *started*
after it was asked for, so it is never older than the question. Creates are `az vm create`
children started through `AzCli` (`CreateProcess`), at most `concurrency` at once; a
process is looked at before the listing that judges it, so an exited create shows its
effect. Listing happens only while some VM waits for one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.createproc import CreateProcess
from vmlaunch.azure.look import Seen, listed
from vmlaunch.azure.writebudget import LocalBudget, WriteBudget, note_throttle
from vmlaunch.lifecycle.observe import settled
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import AZURE_IN_FLIGHT, VmState

log = logging.getLogger("legacy")

EXIT_GRACE = 5.0  # a create client whose VM Azure has already decided gets this long to exit
LIST_TIMEOUT = 300.0


def done(seen: Seen) -> bool:
    """Settled, and a Succeeded VM listed with its public IP (`-d` fills it in late)."""
    return settled(seen) and (seen.state != VmState.SUCCEEDED or bool(seen.data.get("publicIps")))


class SharedPoll:
    """The observer of polling mode; `close()` ends its listing task."""

    def __init__(self, az: AzCli, *, interval: float, concurrency: int, deadline: float,
                 budget: WriteBudget | None = None) -> None:
        self.az, self.interval, self.deadline = az, interval, deadline
        self.budget = budget or LocalBudget()  # polling mode runs alone: its own budget
        self.slots = asyncio.Semaphore(concurrency)
        self.wanted: collections.Counter[str] = collections.Counter()  # groups waited for
        self.lists: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}  # started, VMs
        self.fresh = asyncio.Condition()
        self.asked = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _read(self, spec: VMSpec) -> Seen:
        """The VM as the first listing of its group started after this call shows it."""
        group, asked_at = spec.resource_group, time.monotonic()
        if self.task is None:
            self.task = asyncio.create_task(self._poll(), name="legacy-poll")
        self.wanted[group] += 1
        self.asked.set()
        try:
            async with self.fresh:
                await self.fresh.wait_for(
                    lambda: self.lists.get(group, (-1.0, {}))[0] >= asked_at)
                return listed(self.lists[group][1].get(spec.name))
        finally:
            self.wanted[group] -= 1

    async def _poll(self) -> None:
        next_at = 0.0
        while True:
            await self.asked.wait()
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # lets others ask too
            started = next_at = time.monotonic()
            next_at += self.interval
            for group in sorted(g for g, n in self.wanted.items() if n > 0):
                await self._list(group, started)
            async with self.fresh:
                self.fresh.notify_all()
            if not +self.wanted:
                self.asked.clear()

    async def _list(self, group: str, started: float) -> None:
        timeout = max(1.0, min(LIST_TIMEOUT, self.deadline - time.monotonic()))
        result = await self.az.list_vms(group, timeout=timeout)
        if not result.ok or not isinstance(result.data, list):
            error = result.error
            log.warning("az vm list -g %s failed (%s); deciding at the next poll", group,
                        f"{error.code}: {error.message}" if error else "no JSON list")
            return
        self.lists[group] = (started, {item["name"]: item for item in result.data
                                       if isinstance(item, dict) and "name" in item})

    async def look(self, spec: VMSpec) -> Seen:
        return await self._read(spec)

    async def wait(self, spec: VMSpec, deadline: float) -> Seen:
        seen = Seen(VmState.CREATING)
        while time.monotonic() < deadline:
            seen = await self._read(spec)
            if done(seen):
                return seen
        return seen

    async def create(self, spec: VMSpec, *, deployment_id: str,
                     deadline: float) -> Seen | AzError:
        async with self.slots:
            await self.budget.admit()
            try:
                create = await CreateProcess.start(self.az, spec, deployment_id=deployment_id)
            except (ValueError, OSError) as exc:  # no location; az missing or not executable
                code = "InvalidRequest" if isinstance(exc, ValueError) else "AzNotRunnable"
                return AzError(code, str(exc), FailureKind.PERMANENT)
            try:
                result = await self._follow(create, spec, deadline)
            finally:
                await create.stop()
            note_throttle(self.budget, result if isinstance(result, AzError) else None)
            return result

    async def _follow(self, create: CreateProcess, spec: VMSpec,
                      deadline: float) -> Seen | AzError:
        while True:
            gone = not create.alive  # before the listing, so that it shows the exit's effect
            seen = await self._read(spec)
            if done(seen) and seen.state == VmState.SUCCEEDED:
                await create.finish(grace=EXIT_GRACE)  # about to exit by itself
                return seen
            if seen.state == VmState.FAILED:  # the create's own error, from its stderr
                return await create.finish(grace=EXIT_GRACE) or seen
            if time.monotonic() >= deadline:
                return seen
            if gone and seen.state in AZURE_IN_FLIGHT:
                # The client died (killed, crashed) but Azure keeps creating: never re-create.
                return Seen(seen.state, seen.data,
                            how=f" (exit {create.proc.returncode})")
            if gone and seen.absent:
                return await create.finish(grace=0.0) or AzError(
                    "VmMissing", f"az vm create for {spec.name} ended and the VM is not in "
                    "Azure", FailureKind.TRANSIENT)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
