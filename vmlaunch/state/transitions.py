"""What one event does to one VM: `step(vm, message, spec) -> (vm, Change)`, pure.

The reducer (`reducer.reduce`) decides which events count and in which order they are
folded; this module only says what each kind of event means for the VM, for the state file
(`fields`) and for the events file (the log lines of its `Change`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vmlaunch.schema.messages import (
    Cancel,
    CloudInitComplete,
    Complete,
    CreateRequest,
    DeadLetter,
    Failed,
    Message,
    SshVerified,
    Status,
)
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import Phase, VmState


@dataclass(frozen=True, slots=True)
class VMProgress:
    """What is known of one VM; `phase` is finer than the legacy `state`."""

    name: str
    state: str = ""
    phase: str = Phase.PENDING
    attempt: int = 0
    public_ip: str = ""
    private_ip: str = ""
    zone: str | None = None
    size: str | None = None
    detail: str = ""
    last_error: str = ""
    ssh_verified: bool = False
    cloud_init: str = ""
    ready: bool = False
    failed: bool = False
    worker: str = ""
    generation: int = 0  # of the current request; 0: any (no request made by this view)
    owner: str = ""  # set by a cancel that hands the VM over (e.g. to the legacy poller)
    closed: bool = False  # finished by an earlier run: deaf to every event

    @property
    def finished(self) -> bool:
        return self.ready or self.failed


@dataclass(frozen=True)
class Change:
    """What one event means for the files: VM fields to merge, events to append."""

    vm_fields: dict[str, object] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)


Step = tuple[VMProgress, Change]


def step(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    """The VM after this event of its own, and what it means for the files."""
    vm = replace(vm, worker=message.source or vm.worker, attempt=max(vm.attempt, message.attempt))
    if vm.ready and isinstance(message.payload, _READY_AGAIN):
        # A redelivered request re-adopts a ready VM and says so again: no transition.
        return vm, Change()
    return _STEPS[type(message.payload)](vm, message, spec)


Log = list[tuple[str, str]]


def _written(vm: VMProgress, log: Log) -> Step:
    """A transition: the VM's fields are written with its log lines."""
    return vm, Change(fields(vm), log)


def _status(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    status: Status = message.payload  # type: ignore[assignment]
    if vm.finished:  # e.g. the clean-up after a final failure: logged, state kept
        vm = replace(vm, detail=status.detail)
        deleting = status.state == Phase.DELETING
        return vm, Change(log=[_STATUS_STEPS[Phase.DELETING](vm, message, status)[1:]]
                          if deleting else [])
    vm = replace(vm, phase=status.state, detail=status.detail, zone=status.zone or vm.zone,
                 size=status.size or vm.size)
    if status.state not in _STATUS_STEPS:
        return vm, Change()
    state, action, text = _STATUS_STEPS[status.state](vm, message, status)
    vm = replace(vm, state=state)
    if status.state == Phase.RETRYING:
        vm = replace(vm, public_ip="", private_ip="")
    elif status.state == Phase.CANCELLED:
        vm = replace(vm, failed=True, last_error=f"cancelled: {_cancelled(status)}")
    return _written(vm, [(action, text)])


def _cancelled(status: Status) -> str:
    return status.detail.removeprefix("cancelled: ")


StatusText = Callable[[VMProgress, Message, Status], tuple[str, str, str]]
_STATUS_STEPS: dict[str, StatusText] = {
    Phase.CREATING: lambda vm, m, s: (VmState.CREATING, "vm_creation_started", (
        f"Started creating VM: {vm.name} ({where(vm)}, attempt {m.attempt}, "
        f"by {m.source or 'unknown'})")),
    Phase.PROVISIONING: lambda vm, m, s: (VmState.CREATING, "vm_creation_adopted", (
        f"VM {vm.name} is already being created; waiting for it (attempt {m.attempt})")),
    Phase.DELETING: lambda vm, m, s: (VmState.DELETING, "vm_deletion_started",
                                      f"Deleting VM: {vm.name} ({s.detail})"),
    Phase.RETRYING: lambda vm, m, s: (VmState.CREATING, "vm_creation_retry",
                                      f"Retrying VM {vm.name}: {s.detail}"),
    Phase.CANCELLED: lambda vm, m, s: (VmState.FAILED, "vm_creation_cancelled",
                                       f"VM {vm.name} cancelled: {_cancelled(s)}"),
}


def _complete(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    done: Complete = message.payload  # type: ignore[assignment]
    vm = replace(vm, state=VmState.SUCCEEDED, phase=Phase.CREATED, public_ip=done.public_ip,
                 private_ip=done.private_ip, zone=done.zone or vm.zone,
                 size=done.size or vm.size)
    log = [("vm_creation_succeeded", (
        f"VM {vm.name} created: public IP {done.public_ip or 'none'}, private IP "
        f"{done.private_ip or 'none'} ({where_and_time(vm, done.duration_seconds)})"))]
    return _written(*_maybe_ready(vm, spec, log))


def _ssh(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    ssh: SshVerified = message.payload  # type: ignore[assignment]
    log = [("vm_ssh_verified", f"SSH to {vm.name} verified ({ssh.user}@{ssh.ip}:{ssh.port})")]
    return _written(*_maybe_ready(replace(vm, ssh_verified=True), spec, log))


def _cloud_init(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    cloud: CloudInitComplete = message.payload  # type: ignore[assignment]
    action = "vm_cloudinit_failed" if cloud.result == "error" else "vm_cloudinit_complete"
    log = [(action, f"cloud-init on {vm.name}: {cloud.result} ({cloud.detail})")]
    return _written(*_maybe_ready(replace(vm, cloud_init=cloud.result), spec, log))


def _failed(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    failed: Failed = message.payload  # type: ignore[assignment]
    vm = replace(vm, last_error=f"{failed.error_code}: {failed.message}")
    if not failed.final:
        return _written(vm, [("vm_attempt_failed",
                              f"VM {vm.name} attempt {failed.attempts} failed: {vm.last_error}")])
    vm = replace(vm, state=VmState.FAILED, phase=Phase.FAILED, failed=True, ready=False)
    return _written(vm, [("vm_creation_failed", f"VM {vm.name} failed after {failed.attempts} "
                          f"attempt(s): {vm.last_error}")])


def _dead_letter(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    # No worker will take this request again: the VM will not come without a rerun.
    dead: DeadLetter = message.payload  # type: ignore[assignment]
    vm = replace(vm, state=VmState.FAILED, phase=Phase.FAILED, failed=True, ready=False,
                 last_error=f"DeadLettered: {dead.reason}")
    return _written(vm, [("vm_request_deadlettered",
                          f"Request for VM {vm.name} dead-lettered: {dead.reason}")])


def _ignore(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    return vm, Change()


def _cancel(vm: VMProgress, message: Message, spec: VMSpec) -> Step:
    cancel: Cancel = message.payload  # type: ignore[assignment]
    if not cancel.owner:
        return vm, Change()  # the worker's `cancelled` status follows
    return replace(vm, owner=cancel.owner), Change(log=[(
        "vm_owner_changed", f"VM {vm.name} is driven by {cancel.owner} now: {cancel.reason}")])


def _maybe_ready(vm: VMProgress, spec: VMSpec, log: Log) -> tuple[VMProgress, Log]:
    """Ready once Azure says Succeeded and every requested check passed."""
    if vm.ready or vm.failed or vm.state != VmState.SUCCEEDED:
        return vm, log
    if spec.verify_ssh and not vm.ssh_verified:
        return vm, log
    if spec.verify_cloud_init and vm.cloud_init not in ("done", "degraded"):
        return vm, log
    vm = replace(vm, ready=True, phase=Phase.READY)
    return vm, [*log, ("vm_ready", f"VM {vm.name} is ready ({vm.public_ip or 'no public IP'})")]


def fields(vm: VMProgress) -> dict[str, object]:
    """The VM's entry in `vm_states`, as the reducer owns it: the state file's projection."""
    entry: dict[str, object] = {"public_ip": vm.public_ip, "private_ip": vm.private_ip,
                                "state": vm.state, "attempt": vm.attempt}
    if vm.zone:
        entry["zone"] = vm.zone
    if vm.size:
        entry["size"] = vm.size
    if vm.last_error:
        entry["last_error"] = vm.last_error
    if vm.ready:
        entry["verified"] = True
    return entry


def where(vm: VMProgress) -> str:
    return ", ".join(x for x in (vm.size, f"zone {vm.zone}" if vm.zone else "") if x)


def where_and_time(vm: VMProgress, seconds: float) -> str:
    return f"{where(vm) or 'default size'}, {seconds:.1f} s"


_READY_AGAIN = (Complete, SshVerified, CloudInitComplete)
_STEPS = {
    Status: _status, Complete: _complete, SshVerified: _ssh, CloudInitComplete: _cloud_init,
    Failed: _failed, CreateRequest: _ignore, DeadLetter: _dead_letter, Cancel: _cancel,
}
