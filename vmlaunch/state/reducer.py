"""The reducer: `reduce(state, event) -> state`, pure; events in, VM progress and the files'
changes out.

One place decides what an event means for a VM, for the state file and for the events
file, whichever path produced it (NATS worker, manual launch, legacy poller). `reduce` does
no I/O and never changes its input: the state it returns says what the event changed
(`state.change`), and one writer (`writer.Recorder`) writes that to the files and the
display. Duplicates (same event_id) and events of other deployments change nothing. Once
a VM has a generation (the request being served), events of another generation change
nothing either, whatever their clock says; once a cancel named a new owner, only that
owner's (and the orchestrator's) events count. A VM's progress is the fold of its current
request's events in the sender's order (time, attempt, the natural order of the steps), so a
delivery's events give the same VM whatever order, and however often, they arrive in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from vmlaunch.schema.messages import Cancel, DeadLetter, Message, Status, Subject
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import Phase, VmState
from vmlaunch.state.transitions import Change, VMProgress, fields, step, where_and_time

__all__ = ["ORCHESTRATOR", "Change", "DeploymentState", "DeploymentView", "Event", "Launched",
           "ReadyBefore", "ResetStep", "VMProgress", "initial", "reduce", "where_and_time"]

ORCHESTRATOR = "orchestrator"  # the source of the orchestrator's own events


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """The reducer's output: every VM's progress, the events it was folded from, and what
    the last event changed (None: nothing, a duplicate or someone else's event)."""

    deployment_id: str
    specs: Mapping[str, VMSpec]
    vms: Mapping[str, VMProgress]
    bases: Mapping[str, VMProgress]  # each VM before its current request's events
    folded: Mapping[str, tuple[Message, ...]]  # those events, in the order they are folded
    arrived: Mapping[str, tuple[Message, ...]]  # the same events, in the order they came
    seen: frozenset[str] = frozenset()  # ids of deployment-wide events
    change: Change | None = None

    @property
    def finished(self) -> bool:
        return all(vm.finished for vm in self.vms.values())


def initial(deployment_id: str, specs: list[VMSpec]) -> DeploymentState:
    vms = {s.name: VMProgress(s.name) for s in specs}
    return DeploymentState(deployment_id, {s.name: s for s in specs}, vms, vms,
                           dict.fromkeys(vms, ()), dict.fromkeys(vms, ()))


def reduce(state: DeploymentState, event: Event) -> DeploymentState:
    """The state after one event; `change` says what it means for the files."""
    if not isinstance(event, Message):
        return _LOCAL[type(event)](state, event)  # type: ignore[operator]
    return _message(state, event)


def _message(state: DeploymentState, message: Message) -> DeploymentState:
    if message.deployment_id != state.deployment_id:
        return replace(state, change=None)
    if not message.vm_name:
        return _deployment_wide(state, message)
    vm = state.vms.get(message.vm_name)
    events = state.folded.get(message.vm_name, ())
    if vm is None or vm.closed or not _current(vm, message) or any(
            e.event_id == message.event_id for e in events):
        return replace(state, change=None)
    spec = state.specs[vm.name]
    sources = tuple(dict.fromkeys(e.source for e in state.arrived.get(vm.name, ())))
    arrived = (*state.arrived.get(vm.name, ()), message)
    if not events or _order(message, sources) > _order(events[-1], sources):  # as usual
        events, (progress, change) = (*events, message), step(vm, message, spec)
    else:
        sources = tuple(dict.fromkeys(e.source for e in arrived))
        events = tuple(sorted((*events, message), key=lambda e: _order(e, sources)))
        progress, change = _fold(state.bases[vm.name], events, message, spec)
    if progress == vm:  # nothing new (e.g. a redelivery saying it again): no transition
        change = Change()
    return replace(state, vms={**state.vms, vm.name: progress},
                   folded={**state.folded, vm.name: events},
                   arrived={**state.arrived, vm.name: arrived}, change=change)


@dataclass(frozen=True, slots=True)
class Launched:
    """The orchestrator follows this generation of the VM's request only; a fresh one
    starts a clean VM (its entry reset in the state file, with `note` if given)."""

    vm_name: str
    generation: int
    requested_at: str = ""
    fresh: bool = False
    note: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ReadyBefore:
    """A VM finished by an earlier run: ready, and deaf to every event from now on."""

    vm_name: str
    public_ip: str
    private_ip: str


@dataclass(frozen=True, slots=True)
class ResetStep:
    """`reset` at work on one VM: now `Deleting` or `Deleted`, or (`state` None) left in
    place, `error` saying why."""

    vm_name: str
    state: VmState | None
    error: str = ""
    log: tuple[str, str] = ("", "")


Event = Message | Launched | ReadyBefore | ResetStep


def _launched(state: DeploymentState, event: Launched) -> DeploymentState:
    name = event.vm_name
    if not event.fresh:
        return _rebased(state, replace(state.vms[name], generation=event.generation),
                        state.folded[name])
    entry = {"public_ip": "", "private_ip": "", "state": VmState.CREATING,
             "generation": event.generation, "requested_at": event.requested_at,
             "verified": False, "last_error": ""}
    rebased = _rebased(state, VMProgress(name, generation=event.generation), ())
    return replace(rebased, change=Change(entry, [event.note] if event.note else []))


def _ready_before(state: DeploymentState, event: ReadyBefore) -> DeploymentState:
    vm = replace(state.vms[event.vm_name], state=VmState.SUCCEEDED, phase=Phase.READY,
                 ready=True, public_ip=event.public_ip, private_ip=event.private_ip,
                 detail="ready (earlier run)", closed=True)
    return _rebased(state, vm, ())


def _reset(state: DeploymentState, event: ResetStep) -> DeploymentState:
    """Only what reset knows is written: the rest of the VM's entry stays as it is."""
    entry: dict[str, object] = (
        {"last_error": f"reset: {event.error}"} if event.state is None else
        {"state": event.state, "public_ip": "", "private_ip": "", "verified": False}
        if event.state == VmState.DELETED else {"state": event.state})
    vm = state.vms.get(event.vm_name) or VMProgress(event.vm_name)
    vm = replace(vm, state=str(entry.get("state", vm.state)), ready=False, closed=True)
    return replace(_rebased(state, vm, ()), change=Change(entry, [event.log]))


def _rebased(state: DeploymentState, vm: VMProgress,
             events: tuple[Message, ...]) -> DeploymentState:
    return replace(state, vms={**state.vms, vm.name: vm}, bases={**state.bases, vm.name: vm},
                   folded={**state.folded, vm.name: events},
                   arrived={**state.arrived, vm.name: events}, change=None)


def _current(vm: VMProgress, message: Message) -> bool:
    """Of the VM's generation (0 on either side: a 1.0 writer, or no request known) and,
    after a handover, from its new owner. Decided when the event arrives."""
    if vm.generation and message.generation and message.generation != vm.generation:
        return False
    return not vm.owner or message.source in (vm.owner, ORCHESTRATOR)


def _fold(base: VMProgress, events: tuple[Message, ...], new: Message,
          spec: VMSpec) -> tuple[VMProgress, Change]:
    """The VM after all its events, and what the new one changed where it falls in order."""
    vm, change = base, Change()
    for message in events:
        vm, changed = step(vm, message, spec)
        if message is new:
            change = changed
    # The fields of the VM as it is now: a late event must not turn the file back.
    return vm, Change(fields(vm) if change.vm_fields else {}, change.log)


def _deployment_wide(state: DeploymentState, message: Message) -> DeploymentState:
    if message.event_id in state.seen:
        return replace(state, change=None)
    payload, change = message.payload, None
    if isinstance(payload, Cancel):
        change = Change(log=[("deployment_cancel_requested", payload.reason)])
    elif isinstance(payload, DeadLetter):
        change = Change(log=[("vm_request_deadlettered", payload.reason)])
    return replace(state, seen=state.seen | {message.event_id}, change=change)


def _order(message: Message, sources: tuple[str, ...]) -> tuple[int, str, int, int, str]:
    """The senders' order: each sender's events by its own clock (then, within one
    millisecond, the attempt and the steps' natural order in an attempt), and the senders
    in the order they were first heard of for this VM. Clocks of two hosts are never
    compared: a worker whose clock runs ahead cannot put its stale events after those of
    the one that took the VM over."""
    heard = sources.index(message.source) if message.source in sources else len(sources)
    return heard, message.time, message.attempt, _rank(message), message.event_id


def _rank(message: Message) -> int:
    payload = message.payload
    if isinstance(payload, Status):
        return _STATUS_RANK.get(payload.state, 0)
    return _PAYLOAD_RANK.get(message.type, 9)


# A failed attempt is reported, then cleaned up (deleting), then retried; a create is
# reported, then completed, then verified.
_STATUS_RANK = {Phase.ACCEPTED: 0, Phase.DELETING: 2, Phase.RETRYING: 3, Phase.CREATING: 4,
                Phase.PROVISIONING: 4, Phase.VERIFYING: 6, Phase.CANCELLED: 9}
_PAYLOAD_RANK = {Subject.FAILED: 1, Subject.COMPLETE: 5, Subject.SSH_VERIFIED: 7,
                 Subject.CLOUDINIT_COMPLETE: 8}


_LOCAL = {Launched: _launched, ReadyBefore: _ready_before, ResetStep: _reset}


class DeploymentView:
    """The reducer's latest output, for a caller that follows one deployment."""

    def __init__(self, deployment_id: str, specs: list[VMSpec]) -> None:
        self.state = initial(deployment_id, specs)

    @property
    def deployment_id(self) -> str:
        return self.state.deployment_id

    @property
    def vms(self) -> Mapping[str, VMProgress]:
        return self.state.vms

    @property
    def finished(self) -> bool:
        return self.state.finished

    def apply(self, event: Event) -> Change | None:
        """The change this event makes, or None for a duplicate or someone else's event."""
        self.state = reduce(self.state, event)
        return self.state.change

    def follow(self, name: str, generation: int) -> None:
        """Follow only the events of this generation of the VM's request."""
        self.apply(Launched(name, generation))
