"""How the lifecycle observes Azure: the `Observer` interface and its blocking implementation.

The lifecycle (machine.py) decides; an observer only reads and creates. `Blocking` is the
worker's and the manual launch's: `az vm show -d` reads, an awaited `az vm create`.
`SharedPoll` (sharedpoll.py) is polling mode's: one `az vm list -d` per interval for every
VM, creates as tracked child processes. Submit-then-track (`--no-wait` and a tracker's
listing) is a third observer, not a change to the lifecycle.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.look import Seen, look
from vmlaunch.azure.writebudget import LocalBudget, WriteBudget, note_throttle
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import AZURE_IN_FLIGHT, VmState

WAIT_PAUSE, WAIT_PAUSE_CAP = 1.0, 15.0  # between reads of a VM Azure is still working on


def settled(seen: Seen) -> bool:
    """Whether Azure has finished with the VM: absent, Succeeded or Failed (not in flight,
    not Deleting, not unknown)."""
    return not seen.unknown and seen.state not in (*AZURE_IN_FLIGHT, VmState.DELETING)


class Observer(Protocol):
    async def look(self, spec: VMSpec) -> Seen:
        """An authoritative read: absent, a state, or unknown (never a guess)."""

    async def create(self, spec: VMSpec, *, deployment_id: str,
                     deadline: float) -> Seen | AzError:
        """Create and follow the VM until Azure has settled it, until our client ended with
        Azure still at work (`how` says so), or until `deadline` (time.monotonic());
        an error when the create itself failed."""

    async def wait(self, spec: VMSpec, deadline: float) -> Seen:
        """Follow a VM Azure is working on until it is settled or `deadline` passes."""


class Blocking:
    """One process per read and per create, each awaited; creates within `budget` (by
    default this process's own, the PutVM budget)."""

    def __init__(self, az: AzCli, budget: WriteBudget | None = None) -> None:
        self.az, self.budget = az, budget or LocalBudget()

    async def look(self, spec: VMSpec) -> Seen:
        return await look(self.az, spec, time.monotonic() + spec.create_timeout)

    async def create(self, spec: VMSpec, *, deployment_id: str,
                     deadline: float) -> Seen | AzError:
        await self.budget.admit()
        created = await self.az.create_vm(spec, deployment_id=deployment_id,
                                          timeout=max(1.0, deadline - time.monotonic()))
        if created.ok and isinstance(created.data, dict):
            return Seen(VmState.SUCCEEDED, created.data)
        error = created.error or AzError("Unknown", "az vm create printed no JSON",
                                         FailureKind.TRANSIENT)
        note_throttle(self.budget, error)
        if created.timed_out or error.kind is FailureKind.LOOK:
            # Azure keeps creating after the client dies: look before deciding.
            seen = await look(self.az, spec, time.monotonic() + spec.create_timeout)
            if seen.state == VmState.SUCCEEDED:
                return seen
        return error

    async def wait(self, spec: VMSpec, deadline: float) -> Seen:
        pause = WAIT_PAUSE
        seen = Seen(VmState.CREATING)
        while time.monotonic() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, WAIT_PAUSE_CAP)
            seen = await look(self.az, spec, deadline)
            if settled(seen):
                return seen
        return seen
