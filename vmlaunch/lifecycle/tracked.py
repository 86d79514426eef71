"""Submit, then track: the observer every lifecycle uses (worker, manual launch, polling mode).

A create is `az vm create --no-wait`: its process lives for validation and the PUT only
(azure-cli.md §7). Every VM followed in one resource group is read from ONE `az vm list -g
RG` (no `-d`: one GET per page, §6) per interval, whatever their number, and only while
some VM waits for a listing. The IPs of the VMs that reach Succeeded come from ONE `az vm
list-ip-addresses -g RG` (its NICs and public IPs: a GET a page each) started with each
listing of the group, so that a VM listed Succeeded has its IPs from the same moment instead
of one listing later; `az vm show -d` only if the IP listings do not say. A VM that reaches
Failed gets one `az vm get-instance-view`, whose `ProvisioningState/failed/<Code>` goes
through the one failure table. A listing that fails
is unknown for every VM of the group, never absent: readers wait for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vmlaunch.azure.azcli import AzCli, AzError, AzResult, FailureKind
from vmlaunch.azure.failures import provisioning_failure
from vmlaunch.azure.look import HOPELESS, Seen, addresses, listed, look
from vmlaunch.azure.writebudget import (
    LONGEST_WRITE,
    Admission,
    LocalBudget,
    WriteBudget,
    note_throttle,
)
from vmlaunch.lifecycle.lease import OPEN, Fence, while_held
from vmlaunch.lifecycle.observe import settled
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import AZURE_IN_FLIGHT, VmState

log = logging.getLogger("tracker")

TRACK_INTERVAL = 2.0  # seconds between two listings of a group (`--track-interval`)
# VMs one worker (or the poller) follows at once by default. A followed VM holds no process
# (processes are bounded per machine, writes by the budget), so this bounds memory only.
FOLLOWED_AT_ONCE = 256
LIST_TIMEOUT = 300.0
# At close, how long a listing in flight may finish: a read killed half way gains nothing,
# and Azure would count a call we never saw the end of.
CLOSE_WAIT = 2.0
# Real ARM may list a just-submitted VM only once its deployment reaches it: absent this
# long after the submit is "not yet", not "gone".
ABSENT_GRACE = 30.0
IP_LISTING_TRIES = 3  # IP listings read (one per interval) before one `show -d` instead
Listing = dict[str, dict[str, Any]] | AzError
Fetch = Callable[[], Awaitable[AzResult]]


class GroupTracker:
    """One kind of listing of one resource group (`fetch`; `key` names a VM's entry). A
    read is answered by the first listing *started* after it was asked for, so it is
    never older than the question."""

    def __init__(self, fetch: Fetch, key: Callable[[dict[str, Any]], Any], *, what: str,
                 interval: float) -> None:
        self.fetch, self.key, self.what, self.interval = fetch, key, what, interval
        self.waiting, self.next_at = 0, 0.0
        self.last: tuple[float, Listing] = (-math.inf, {})  # when it started, what it gave
        self.fresh = asyncio.Condition()
        self.running = asyncio.Lock()  # one listing at a time, whoever starts it
        self.task: asyncio.Task[None] | None = None

    async def read(self, name: str, since: float | None = None) -> dict[str, Any] | AzError | None:
        """The VM's entry in the first listing started at or after `since` (default: now;
        None: not listed), or that listing's error."""
        asked = time.monotonic() if since is None else since
        self.waiting += 1
        try:
            if self.task is None or self.task.done():
                self.task = asyncio.create_task(self._poll(), name=f"track {self.what}")
            async with self.fresh:
                await self.fresh.wait_for(lambda: self.last[0] >= asked)
                result = self.last[1]
        finally:
            self.waiting -= 1
        return result if isinstance(result, AzError) else result.get(name)

    async def _poll(self) -> None:
        """Lists while anyone waits (then ends), at most once per interval."""
        while self.waiting:
            await asyncio.sleep(max(0.0, self.next_at - time.monotonic()))  # others ask too
            if not self.waiting:
                break  # its readers left during the sleep: no listing nobody reads
            await self.listing()

    async def listing(self) -> None:
        """One listing now; if one is running already, its end instead (its readers are
        served by it, and the interval counts from its start)."""
        if self.running.locked():
            async with self.running:
                return
        async with self.running:
            started = time.monotonic()
            self.next_at = started + self.interval
            result = await self._list()
            async with self.fresh:
                self.last = (started, result)
                self.fresh.notify_all()

    async def _list(self) -> Listing:
        try:
            result = await self.fetch()
        except OSError as exc:  # az missing or not executable
            return AzError("AzNotRunnable", str(exc), FailureKind.PERMANENT)
        except Exception as exc:  # a bug must not leave every reader of the group waiting
            log.exception("%s failed", self.what)
            return AzError("InternalError", f"{type(exc).__name__}: {exc}", FailureKind.TRANSIENT)
        if result.ok and isinstance(result.data, list):
            entries = [item for item in result.data if isinstance(item, dict)]
            return {name: item for item in entries if isinstance(name := self.key(item), str)}
        error = result.error or AzError("Unknown", f"{self.what} printed no JSON list",
                                        FailureKind.TRANSIENT)
        log.warning("%s failed (%s: %s): every VM of the group is unknown until the next "
                    "listing", self.what, error.code, error.message)
        return error

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Tracked:
    """The `Observer` (observe.py) of submit-then-track. `creates`: at most this many creates
    (submit and follow) at once, for polling mode's --concurrency; None: no bound here."""

    def __init__(self, az: AzCli, *, interval: float = TRACK_INTERVAL,
                 creates: int | None = None, budget: WriteBudget | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"the track interval must be positive, not {interval}")
        self.az, self.interval = az, interval
        self.groups: dict[str, GroupTracker] = {}  # provisioning states, by group
        self.addresses: dict[str, GroupTracker] = {}  # IPs, by group
        self.paired: set[asyncio.Task[None]] = set()  # IP listings started with a listing
        self.creates = asyncio.Semaphore(creates) if creates else None
        self.budget: WriteBudget = budget or LocalBudget()  # the worker's is the fleet's

    def slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One of the `creates` followed at once, held from before the create's clock
        starts (a wait for a slot is not the create's time) until it is settled."""
        return self.creates or contextlib.nullcontext()

    async def admit(self) -> Admission:
        """The write budget's go for one create (awaited before the fence is checked)."""
        return await self.budget.admit()

    async def _listed(self, spec: VMSpec) -> Seen:
        """The VM as the next listing of its group shows it; unknown if that one failed."""
        group = spec.resource_group
        if group not in self.groups:
            self.groups[group] = GroupTracker(
                lambda: self._with_ips(group), lambda item: item.get("name"),
                what=f"az vm list -g {group}", interval=self.interval)
        entry = await self.groups[group].read(spec.name)
        return Seen(error=entry) if isinstance(entry, AzError) else listed(entry)

    def _ips_of(self, group: str) -> GroupTracker:
        if group not in self.addresses:
            self.addresses[group] = GroupTracker(
                lambda: self.az.ip_addresses(group, timeout=LIST_TIMEOUT),
                lambda item: item.get("name"),
                what=f"az vm list-ip-addresses -g {group}", interval=self.interval)
        return self.addresses[group]

    async def _with_ips(self, group: str) -> AzResult:
        """The group's listing, with its IP listing started alongside (in the background:
        the listing's readers do not wait for it)."""
        paired = asyncio.create_task(self._ips_of(group).listing(), name=f"IPs of {group}")
        self.paired.add(paired)
        paired.add_done_callback(self.paired.discard)
        return await self.az.list_vms(group, timeout=LIST_TIMEOUT, details=False,
                                      tracked_fields=True)

    async def _addresses(self, spec: VMSpec, since: float) -> dict[str, str] | None:
        """The VM's IPs as `show -d` gives them: from the IP listing started with the one
        that showed it Succeeded (`since`: before that one started), else from the next
        ones; None if they did not say."""
        ips = self._ips_of(spec.resource_group)
        entry = await ips.read(spec.name, since)
        if isinstance(entry, dict) and (found := addresses(entry)) is not None:
            return found
        for _ in range(IP_LISTING_TRIES):  # a failed one is not worth a show -d per VM
            entry = await ips.read(spec.name)
            if not isinstance(entry, AzError):
                return None if entry is None else addresses(entry)
        return None

    async def look(self, spec: VMSpec) -> Seen:
        asked = time.monotonic()
        seen = await self._read(spec)
        return await self._shown(spec, seen, asked) if seen.state == VmState.SUCCEEDED else seen

    async def _read(self, spec: VMSpec) -> Seen:
        """The next listing's answer; after a failed one, the next, until `create_timeout`."""
        deadline = time.monotonic() + spec.create_timeout
        while True:
            seen = await self._listed(spec)
            error = seen.error
            if error is None or error.code in HOPELESS or time.monotonic() >= deadline:
                return seen

    async def wait(self, spec: VMSpec, deadline: float) -> Seen:
        seen = Seen(VmState.CREATING)
        while (asked := time.monotonic()) < deadline:
            seen = await self._listed(spec)
            if settled(seen):
                return await self._settled(spec, seen, asked)
        return seen

    async def create(self, spec: VMSpec, *, deployment_id: str, deadline: float,
                     fence: Fence = OPEN, admission: Admission | None = None
                     ) -> Seen | AzError:
        timeout = max(1.0, min(LONGEST_WRITE, deadline - time.monotonic()))
        try:
            await fence.allow("create", spec.name)  # last: the budget may have waited long
            submitted = await while_held(fence, "create", spec.name, self.az.create_vm(
                spec, deployment_id=deployment_id, timeout=timeout, no_wait=True))
        finally:  # its PUT, if any, was made by now (refused here: none, counted as now)
            if admission is not None:
                self.budget.wrote(admission)
        error = submitted.error
        if error is not None:
            note_throttle(self.budget, error)
        if error is None:
            return await self._follow(spec, deadline)
        died = submitted.timed_out or submitted.exit_code < 0  # timed out, or killed
        if not died and error.kind is not FailureKind.LOOK:
            return error  # refused before or at the PUT: nothing to follow
        # The PUT may have been accepted before our client ended: Azure decides.
        asked = time.monotonic()
        seen = await self._read(spec)
        if seen.state in AZURE_IN_FLIGHT and submitted.timed_out:
            return await self._follow(spec, deadline)  # a Timeout once it has passed
        if seen.state in AZURE_IN_FLIGHT:  # killed: say so, then wait for it
            return dataclasses.replace(seen, how=f" (exit {submitted.exit_code})")
        settled_seen = seen.state in (VmState.SUCCEEDED, VmState.FAILED)
        return await self._settled(spec, seen, asked) if settled_seen else error

    async def _follow(self, spec: VMSpec, deadline: float) -> Seen | AzError:
        """Until settled or `deadline`; absent is "not listed yet" for ABSENT_GRACE."""
        listed_by = time.monotonic() + ABSENT_GRACE
        seen = Seen(VmState.CREATING)
        while (asked := time.monotonic()) < deadline:
            seen = await self._listed(spec)
            if seen.absent and time.monotonic() >= listed_by:
                return AzError("VmMissing", f"{spec.name} was submitted but is not listed in "
                               f"Azure after {ABSENT_GRACE:g} s", FailureKind.TRANSIENT)
            if settled(seen) and not seen.absent:
                return await self._settled(spec, seen, asked)
        return seen

    async def _settled(self, spec: VMSpec, seen: Seen, asked: float) -> Seen:
        """A settled VM (`seen` by a listing started after `asked`) with what the lifecycle
        needs next: IPs, or why it failed."""
        if seen.state == VmState.SUCCEEDED:
            return await self._shown(spec, seen, asked)
        if seen.state == VmState.FAILED:
            view = await self.az.instance_view(spec.resource_group, spec.name)
            failure = provisioning_failure(view.data) if view.ok else None
            if failure is None:
                log.warning("%s failed and why could not be read (%s)", spec.name,
                            view.error.code if view.error else "no failed status")
            return dataclasses.replace(seen, failure=failure)
        return seen

    async def _shown(self, spec: VMSpec, seen: Seen, asked: float) -> Seen:
        """The listed VM with its IPs (which a listing without -d lacks): from the group's
        IP listings, else one `az vm show -d`; if that read fails too, the listing's
        answer stands (it was authoritative)."""
        if (ips := await self._addresses(spec, asked)) is not None:
            return dataclasses.replace(seen, data={**seen.data, **ips})
        shown = await look(self.az, spec, time.monotonic() + spec.create_timeout)
        return seen if shown.unknown else shown

    async def close(self) -> None:
        """End the listings: they end on their own once nobody waits, so one in flight is
        let finish for up to CLOSE_WAIT, then cancelled."""
        trackers = (*self.groups.values(), *self.addresses.values())
        running = [*self.paired, *(t.task for t in trackers
                                   if t.task is not None and t.running.locked())]
        try:
            if running:
                await asyncio.wait(running, timeout=CLOSE_WAIT)
        finally:  # cancelled meanwhile too: nothing is left running
            for paired in list(self.paired):
                paired.cancel()
            await asyncio.gather(*self.paired, return_exceptions=True)
            for tracker in trackers:
                await tracker.close()
