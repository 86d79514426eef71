"""How the lifecycle observes Azure: the `Observer` interface.

The lifecycle (machine.py) decides; an observer only reads and creates. There is one
implementation, submit-then-track (`Tracked`, tracked.py): `az vm create --no-wait` and one
`az vm list -g RG` per interval for every VM followed. An observer is what a test or a new
mode would replace, never the lifecycle.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from vmlaunch.azure.azcli import AzError
from vmlaunch.azure.look import Seen
from vmlaunch.azure.writebudget import Admission
from vmlaunch.lifecycle.lease import OPEN, Fence
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import AZURE_IN_FLIGHT, VmState


def settled(seen: Seen) -> bool:
    """Whether Azure has finished with the VM: absent, Succeeded or Failed (not in flight,
    not Deleting, not unknown)."""
    return not seen.unknown and seen.state not in (*AZURE_IN_FLIGHT, VmState.DELETING)


class Observer(Protocol):
    def slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a whole create: a bound on creates followed at once, taken before
        the create's clock starts."""

    async def admit(self) -> Admission:
        """Wait for the write budget's go for one create (before the fence is checked)."""

    async def look(self, spec: VMSpec) -> Seen:
        """An authoritative read: absent, a state, or unknown (never a guess)."""

    async def create(self, spec: VMSpec, *, deployment_id: str, deadline: float,
                     fence: Fence = OPEN, admission: Admission | None = None
                     ) -> Seen | AzError:
        """Create and follow the VM until Azure has settled it, until our client ended with
        Azure still at work (`how` says so), or until `deadline` (time.monotonic()); an
        error when the create itself failed. A Failed VM's `failure` says why, when the
        observer could read it. `fence` is checked first (Fenced if it is closed), and the
        create's process ends if it closes before the process has (then Fenced:
        `lease.while_held`). Its `admission` is counted again when the submit has ended,
        or was refused (`WriteBudget.wrote`)."""

    async def wait(self, spec: VMSpec, deadline: float) -> Seen:
        """Follow a VM Azure is working on until it is settled or `deadline` passes."""
