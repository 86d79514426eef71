"""One VM's life, the only code that decides what to do with it: explicit states, and one
handler per state that does its work and names the next state.

The worker, the manual launch and polling mode all run this machine with the same
`Observer` (submit-then-track, tracked.py; polling mode lists at its poll interval); they
differ only in where the `Reporter`'s events go (NATS, a terminal, the reducer).

    ACCEPT   validate the request, resolve the location   -> LOOK | GIVE_UP
    LOOK     read the VM (unknown is never absent)        -> ADOPT | CREATE | GIVE_UP
    ADOPT    it exists: ours? Succeeded, in flight, Failed -> VERIFY | WAIT | REPLACE | GIVE_UP
    REPLACE  delete a Failed VM found before creating     -> CREATE | LOOK (after the fence)
    CREATE   the fence, then our create                   -> VERIFY | WAIT | CLEAN_UP | LOOK
    WAIT     Azure is at work: wait for it to settle      -> VERIFY | CREATE | CLEAN_UP
    VERIFY   `complete`, then the SSH and cloud-init checks -> READY | CLEAN_UP
    CLEAN_UP remove what a failed attempt left, if ours   -> RETRY | GIVE_UP
    RETRY    next zone or size, back off                  -> LOOK
    GIVE_UP  the failure was final                        -> FAILED

A failure is reported (final or not) on its way to CLEAN_UP; one that must leave the VM
alone (not ours, unreadable, a bad request) goes straight to GIVE_UP. Before a create or
a delete that the fence would make wait, the machine waits and then reads again: a read
from before the wait is stale (the poller's handover). `Fenced` ends the run at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from vmlaunch.azure.azcli import AzCli, AzError, FailureKind
from vmlaunch.azure.look import HANDS_OFF, Seen, backoff_delay, refusal, unknown_error
from vmlaunch.lifecycle.attempts import as_found, clean_up, next_spec, remove_vm
from vmlaunch.lifecycle.lease import OPEN, Fence
from vmlaunch.lifecycle.observe import Observer, settled
from vmlaunch.lifecycle.report import Reporter, report_created, verify_vm
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.schema.vmspec import VMSpec, spec_problems
from vmlaunch.schema.vocabulary import Phase, VmState

log = logging.getLogger("lifecycle")


class Step(StrEnum):
    ACCEPT = "accept"
    LOOK = "look"
    ADOPT = "adopt"
    REPLACE = "replace"
    CREATE = "create"
    WAIT = "wait"
    VERIFY = "verify"
    CLEAN_UP = "clean-up"
    RETRY = "retry"
    GIVE_UP = "give-up"
    READY = "ready"
    FAILED = "failed"


class Outcome(StrEnum):
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class LaunchResult:
    outcome: Outcome
    attempts: int
    error: AzError | None = None


def deadline_error(reason: str) -> AzError:
    """The final failure of a VM the deployment's deadline stopped, whoever notices it."""
    return AzError("DeadlineExceeded", reason, FailureKind.TRANSIENT)


class Lifecycle:
    """One VM from `start` (ACCEPT for a request; LOOK in polling mode) to READY or FAILED.

    `used`: attempts already started elsewhere (after NATS loss): an adopted create keeps
    that number, a new create takes the next. `adopt_untagged` (a launcher option, never a
    request field) adopts a VM that carries no deployment tag; it never deletes one."""

    def __init__(self, spec: VMSpec, *, az: AzCli, report: Reporter,
                 observer: Observer | None = None, private_key: str | None = None,
                 adopt_untagged: bool = False, fence: Fence = OPEN, used: int = 0,
                 start: Step = Step.ACCEPT) -> None:
        self.original = self.spec = spec
        self.az, self.report, self.fence = az, report, fence
        self.observer = observer or Tracked(az)
        self.private_key, self.adopt_untagged = private_key, adopt_untagged
        self.step, self.started = start, time.monotonic()
        # The current attempt's number, and whether it has started a create.
        self.attempt, self.spent = max(used, 1), used >= 1
        self.seen, self.until, self.error, self.final = Seen(), 0.0, None, False
        self.kept: str | None = None  # why a failed attempt's VM was left in place
        self.relook = False  # waiting for a deletion: what follows is looked at again
        self.reported_final = False  # a final failure was reported: nothing may follow it
        self.handlers: dict[Step, Callable[[], Awaitable[Step]]] = {
            Step.ACCEPT: self._accept, Step.LOOK: self._look, Step.ADOPT: self._adopt,
            Step.REPLACE: self._replace, Step.CREATE: self._create, Step.WAIT: self._wait,
            Step.VERIFY: self._verify, Step.CLEAN_UP: self._clean_up,
            Step.RETRY: self._retry, Step.GIVE_UP: self._give_up}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def finished(self) -> bool:
        return self.step in (Step.READY, Step.FAILED)

    async def run(self) -> LaunchResult:
        """Raises Fenced, having neither created nor deleted, once the fence says no."""
        while not self.finished:
            step = await self.handlers[self.step]()
            log.debug("%s: %s -> %s", self.name, self.step.value, step.value)
            self.step = step
        if self.step is Step.READY:
            return LaunchResult(Outcome.READY, self.attempt)
        return LaunchResult(Outcome.FAILED, self.attempt, self.error)

    async def abandon(self, error: AzError) -> None:
        """End it from outside (the deadline, a bug): a final failure, nothing touched. One
        already reported (ended during its clean-up) stands: a VM fails for good once."""
        if not self.reported_final:
            await self.report.failed(error, attempt=self.attempt, final=True, spec=self.spec)
            self.error = error
        self.step = Step.FAILED

    async def _status(self, phase: Phase, detail: str, *, attempt: int | None = None) -> None:
        await self.report.status(phase, detail, attempt=attempt or self.attempt, spec=self.spec)

    async def _fail(self, error: AzError, *, hands_off: bool = False) -> Step:
        """Report a failed attempt; whether it is final decides CLEAN_UP's way on."""
        hands_off = hands_off or error.code in HANDS_OFF
        self.final = (hands_off or error.kind is FailureKind.PERMANENT
                      or self.attempt >= self.spec.max_attempts)
        self.error = error
        await self.report.failed(error, attempt=self.attempt, final=self.final, spec=self.spec)
        self.reported_final = self.final
        return Step.GIVE_UP if hands_off else Step.CLEAN_UP

    async def _fenced(self, action: str) -> bool:
        """Whether the fence made us wait (or raises Fenced): then the last read is stale."""
        if self.fence.open_now():
            return False
        await self.fence.allow(action, self.name)
        return True

    # --- the states -------------------------------------------------------------------------

    async def _accept(self) -> Step:
        await self._status(Phase.ACCEPTED, f"request for {self.name} accepted")
        problems = spec_problems(self.spec, files_are_paths=False)
        if problems:
            return await self._fail(AzError("InvalidRequest", "; ".join(problems),
                                            FailureKind.PERMANENT), hands_off=True)
        located = await self._located()
        if isinstance(located, AzError):
            return await self._fail(located, hands_off=True)
        self.original = self.spec = located
        return Step.LOOK

    async def _located(self) -> VMSpec | AzError:
        """A spec without a location takes its resource group's (one `az group show`):
        az would otherwise look it up on every create."""
        spec = self.spec
        if spec.location is not None:
            return spec
        shown = await self.az.group_show(spec.resource_group)
        location = shown.data.get("location") if isinstance(shown.data, dict) else None
        if shown.ok and location:
            return spec.replace(location=location)
        return shown.error or AzError("Unknown", f"az group show {spec.resource_group} gave "
                                      "no location", FailureKind.TRANSIENT)

    async def _look(self) -> Step:
        """Never start a second create of a VM that exists or is in flight, and act only on
        what a read said (azure-cli.md §6)."""
        self.seen = await self.observer.look(self.spec)
        if self.seen.unknown:
            return await self._fail(unknown_error(self.spec, self.seen))
        return Step.CREATE if self.seen.absent else Step.ADOPT

    async def _adopt(self) -> Step:
        state = self.seen.state
        if state == VmState.DELETING:  # someone else's clean-up: decide once it is gone
            self.until = time.monotonic() + self.spec.create_timeout
            self.relook = True
            return Step.WAIT
        refused = refusal(self.seen.data, deployment_id=self.report.deployment_id,
                          adopt_untagged=self.adopt_untagged, delete=state == VmState.FAILED)
        if refused is not None:
            return await self._fail(refused)
        if state == VmState.FAILED:
            return Step.REPLACE
        self.spec = as_found(self.spec, self.seen.data)
        if state == VmState.SUCCEEDED:
            return Step.VERIFY
        # Creating, Updating, or a state we do not know: never destructive.
        await self._status(Phase.PROVISIONING, f"found {self.name} {state} in Azure; "
                           "waiting for it instead of creating it")
        self.until = time.monotonic() + self.spec.create_timeout
        return Step.WAIT

    async def _replace(self) -> Step:
        if await self._fenced("delete"):
            return Step.LOOK
        await self._status(Phase.DELETING, f"found {self.name} {self.seen.state}; removing "
                           "it before creating")
        removed = await remove_vm(self.az, self.spec, fence=self.fence)
        return Step.CREATE if removed.ok else await self._fail(removed.error)

    async def _create(self) -> Step:
        if await self._fenced("create"):
            return Step.LOOK
        if self.spent:  # this attempt's create was made: a new one is the next attempt
            if self.attempt >= self.spec.max_attempts:
                return await self._fail(AzError(
                    "RetriesExhausted", f"{self.attempt} attempts already made and "
                    f"{self.name} is not in Azure", FailureKind.PERMANENT), hands_off=True)
            self.attempt += 1
        self.spent = True
        async with self.observer.slot():
            where = f"zone {self.spec.zone}" if self.spec.zone else "no zone"
            await self._status(Phase.CREATING, f"az vm create {self.name} "
                               f"({self.spec.size}, {where})")
            admission = await self.observer.admit()  # the write budget may hold it back
            self.until = time.monotonic() + self.spec.create_timeout
            created = await self.observer.create(
                self.spec, deployment_id=self.report.deployment_id, deadline=self.until,
                fence=self.fence, admission=admission)
        if isinstance(created, AzError):
            return await self._fail(created)
        if not created.how:
            return await self._settled(created)
        await self._status(Phase.PROVISIONING, f"az vm create for {self.name} ended"
                           f"{created.how} while Azure is still creating it; waiting for it")
        return Step.WAIT

    async def _wait(self) -> Step:
        seen = await self.observer.wait(self.spec, self.until)
        if self.relook and settled(seen):  # the deletion we waited for has ended: a VM
            self.relook = False  # there now may be someone else's, so look at it afresh
            return Step.CREATE if seen.absent else Step.LOOK
        if seen.absent and time.monotonic() < self.until:  # it was in Azure: say so
            return await self._fail(AzError("VmMissing", f"{self.name} was in Azure and is "
                                            "gone while it was waited for", FailureKind.TRANSIENT))
        return await self._settled(seen)

    async def _settled(self, seen: Seen) -> Step:
        """Where a VM followed until `until` goes: what Azure decided, or a timeout."""
        self.seen = seen
        if seen.state == VmState.SUCCEEDED:
            return Step.VERIFY
        if seen.state == VmState.FAILED:  # why, when the observer could read it
            return await self._fail(seen.failure or AzError(
                "ProvisioningFailed", f"{self.name} ended in state Failed",
                FailureKind.TRANSIENT))
        return await self._fail(AzError("Timeout", f"{self.name} still not provisioned after "
                                        f"{self.spec.create_timeout:g} s",
                                        FailureKind.TRANSIENT))

    async def _verify(self) -> Step:
        ip = await report_created(self.report, self.seen.data, spec=self.spec,
                                  attempt=self.attempt, seconds=time.monotonic() - self.started)
        error = await verify_vm(self.spec, ip=ip, az=self.az, report=self.report,
                                attempt=self.attempt, private_key=self.private_key)
        return Step.READY if error is None else await self._fail(error)

    async def _clean_up(self) -> Step:
        self.kept = await clean_up(self.az, self.report, self.spec, attempt=self.attempt,
                                   fence=self.fence)
        if self.kept is not None:
            log.warning("%s", self.kept)
        return Step.GIVE_UP if self.final else Step.RETRY

    async def _retry(self) -> Step:
        assert self.error is not None
        self.spec = next_spec(self.spec, self.original, self.error)
        delay = backoff_delay(self.spec, self.attempt, self.error)
        kept = f"; {self.kept}" if self.kept else ""
        await self._status(Phase.RETRYING, f"{self.error.code}: attempt {self.attempt + 1} of "
                           f"{self.spec.max_attempts} in {delay:.1f} s{kept}",
                           attempt=self.attempt + 1)
        self.attempt, self.spent = self.attempt + 1, False
        await asyncio.sleep(delay)
        return Step.LOOK

    async def _give_up(self) -> Step:
        return Step.FAILED
