"""The reducer: events in, VM progress and state-file changes out.

One place decides what an event means for a VM, for the state file and for the events
file, whichever path produced it (NATS worker, manual launch, legacy poller). It is
pure: `apply` returns what to write, the caller writes it. Duplicates (same event_id)
and events of other deployments change nothing, so replaying the events stream
rebuilds the same state. Once a VM has a generation (the request being served), events of
another generation change nothing either, whatever their clock says; once a cancel named a
new owner, only that owner's (and the orchestrator's) events count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

ORCHESTRATOR = "orchestrator"  # the source of the orchestrator's own events
# Values of `vm_states.<vm>.state`, as the bash scripts know them.
CREATING, SUCCEEDED, FAILED, DELETING, DELETED = (
    "Creating", "Succeeded", "Failed", "Deleting", "Deleted")


@dataclass
class VMProgress:
    """What is known of one VM; `phase` is finer than the legacy `state`."""

    name: str
    state: str = ""
    phase: str = "pending"
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

    @property
    def finished(self) -> bool:
        return self.ready or self.failed


@dataclass(frozen=True)
class Change:
    """What one event means for the files: VM fields to merge, events to append."""

    vm_fields: dict[str, object] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)


class DeploymentView:
    """Folds this deployment's events into per-VM progress."""

    def __init__(self, deployment_id: str, specs: list[VMSpec]) -> None:
        self.deployment_id = deployment_id
        self.specs = {s.name: s for s in specs}
        self.vms = {s.name: VMProgress(s.name) for s in specs}
        self.seen: set[str] = set()

    @property
    def finished(self) -> bool:
        return all(vm.finished for vm in self.vms.values())

    def apply(self, message: Message) -> Change | None:
        """The change this event makes, or None for a duplicate or someone else's event."""
        if message.deployment_id != self.deployment_id or message.event_id in self.seen:
            return None
        self.seen.add(message.event_id)
        if not message.vm_name:
            return self._deployment_wide(message)
        vm = self.vms.get(message.vm_name)
        if vm is None or not self._current(vm, message):
            return None
        if message.source:
            vm.worker = message.source
        vm.attempt = max(vm.attempt, message.attempt)
        if vm.ready and isinstance(message.payload, _READY_AGAIN):
            # A redelivered request re-adopts a ready VM and says so again: no transition.
            return Change()
        return _REDUCERS[type(message.payload)](self, vm, message)

    @staticmethod
    def _current(vm: VMProgress, message: Message) -> bool:
        """Of the VM's generation (0 on either side: a 1.0 writer, or no request known) and,
        after a handover, from its new owner."""
        if vm.generation and message.generation and message.generation != vm.generation:
            return False
        return not vm.owner or message.source in (vm.owner, ORCHESTRATOR)

    def _deployment_wide(self, message: Message) -> Change | None:
        payload = message.payload
        if isinstance(payload, Cancel):
            return Change(log=[("deployment_cancel_requested", payload.reason)])
        if isinstance(payload, DeadLetter):
            return Change(log=[("vm_request_deadlettered", payload.reason)])
        return None

    def _status(self, vm: VMProgress, message: Message) -> Change:
        status: Status = message.payload  # type: ignore[assignment]
        if vm.finished:  # e.g. the clean-up after a final failure: logged, state kept
            vm.detail = status.detail
            if status.state == "deleting":
                return Change(log=[("vm_deletion_started",
                                    f"Deleting VM: {vm.name} ({status.detail})")])
            return Change()
        vm.phase, vm.detail = status.state, status.detail
        vm.zone, vm.size = status.zone or vm.zone, status.size or vm.size
        where = _where(vm)
        if status.state == "creating":
            vm.state = CREATING
            return Change(self._fields(vm), [("vm_creation_started", (
                f"Started creating VM: {vm.name} ({where}, attempt {message.attempt}, "
                f"by {message.source or 'unknown'})"))])
        if status.state == "provisioning":
            vm.state = CREATING
            return Change(self._fields(vm), [("vm_creation_adopted", (
                f"VM {vm.name} is already being created; waiting for it "
                f"(attempt {message.attempt})"))])
        if status.state == "deleting":
            vm.state = DELETING
            return Change(self._fields(vm), [("vm_deletion_started",
                                              f"Deleting VM: {vm.name} ({status.detail})")])
        if status.state == "retrying":
            vm.state, vm.public_ip, vm.private_ip = CREATING, "", ""
            return Change(self._fields(vm), [("vm_creation_retry",
                                              f"Retrying VM {vm.name}: {status.detail}")])
        if status.state == "cancelled":
            detail = status.detail.removeprefix("cancelled: ")
            vm.state, vm.failed, vm.last_error = FAILED, True, f"cancelled: {detail}"
            return Change(self._fields(vm), [("vm_creation_cancelled",
                                              f"VM {vm.name} cancelled: {detail}")])
        return Change()

    def _complete(self, vm: VMProgress, message: Message) -> Change:
        done: Complete = message.payload  # type: ignore[assignment]
        vm.state, vm.phase = SUCCEEDED, "created"
        vm.public_ip, vm.private_ip = done.public_ip, done.private_ip
        vm.zone, vm.size = done.zone or vm.zone, done.size or vm.size
        log = [("vm_creation_succeeded", (
            f"VM {vm.name} created: public IP {done.public_ip or 'none'}, private IP "
            f"{done.private_ip or 'none'} ({where_and_time(vm, done.duration_seconds)})"))]
        log += self._ready_log(vm)  # first: it may make the VM ready (and `verified`)
        return Change(self._fields(vm), log)

    def _ssh(self, vm: VMProgress, message: Message) -> Change:
        ssh: SshVerified = message.payload  # type: ignore[assignment]
        vm.ssh_verified = True
        log = [("vm_ssh_verified", f"SSH to {vm.name} verified ({ssh.user}@{ssh.ip}:{ssh.port})")]
        log += self._ready_log(vm)  # first: it may make the VM ready (and `verified`)
        return Change(self._fields(vm), log)

    def _cloud_init(self, vm: VMProgress, message: Message) -> Change:
        cloud: CloudInitComplete = message.payload  # type: ignore[assignment]
        vm.cloud_init = cloud.result
        action = "vm_cloudinit_failed" if cloud.result == "error" else "vm_cloudinit_complete"
        log = [(action, f"cloud-init on {vm.name}: {cloud.result} ({cloud.detail})")]
        log += self._ready_log(vm)  # first: it may make the VM ready (and `verified`)
        return Change(self._fields(vm), log)

    def _failed(self, vm: VMProgress, message: Message) -> Change:
        failed: Failed = message.payload  # type: ignore[assignment]
        vm.last_error = f"{failed.error_code}: {failed.message}"
        if not failed.final:
            return Change(self._fields(vm), [("vm_attempt_failed", (
                f"VM {vm.name} attempt {failed.attempts} failed: {vm.last_error}"))])
        vm.state, vm.phase, vm.failed, vm.ready = FAILED, "failed", True, False
        return Change(self._fields(vm), [("vm_creation_failed", (
            f"VM {vm.name} failed after {failed.attempts} attempt(s): {vm.last_error}"))])

    def _dead_letter(self, vm: VMProgress, message: Message) -> Change:
        # No worker will take this request again: the VM will not come without a rerun.
        dead: DeadLetter = message.payload  # type: ignore[assignment]
        vm.state, vm.phase, vm.failed, vm.ready = FAILED, "failed", True, False
        vm.last_error = f"DeadLettered: {dead.reason}"
        message_text = f"Request for VM {vm.name} dead-lettered: {dead.reason}"
        return Change(self._fields(vm), [("vm_request_deadlettered", message_text)])

    def _ignore(self, vm: VMProgress, message: Message) -> Change:
        return Change()

    def _cancel(self, vm: VMProgress, message: Message) -> Change:
        cancel: Cancel = message.payload  # type: ignore[assignment]
        if not cancel.owner:
            return Change()  # the worker's `cancelled` status follows
        vm.owner = cancel.owner
        return Change(log=[("vm_owner_changed",
                            f"VM {vm.name} is driven by {cancel.owner} now: {cancel.reason}")])

    def _ready_log(self, vm: VMProgress) -> list[tuple[str, str]]:
        spec = self.specs[vm.name]
        if vm.ready or vm.failed or vm.state != SUCCEEDED:
            return []
        if spec.verify_ssh and not vm.ssh_verified:
            return []
        if spec.verify_cloud_init and vm.cloud_init not in ("done", "degraded"):
            return []
        vm.ready, vm.phase = True, "ready"
        return [("vm_ready", f"VM {vm.name} is ready ({vm.public_ip or 'no public IP'})")]

    @staticmethod
    def _fields(vm: VMProgress) -> dict[str, object]:
        fields: dict[str, object] = {
            "public_ip": vm.public_ip, "private_ip": vm.private_ip, "state": vm.state,
            "attempt": vm.attempt,
        }
        if vm.zone:
            fields["zone"] = vm.zone
        if vm.size:
            fields["size"] = vm.size
        if vm.last_error:
            fields["last_error"] = vm.last_error
        if vm.ready:
            fields["verified"] = True
        return fields


def _where(vm: VMProgress) -> str:
    return ", ".join(x for x in (vm.size, f"zone {vm.zone}" if vm.zone else "") if x)


def where_and_time(vm: VMProgress, seconds: float) -> str:
    return f"{_where(vm) or 'default size'}, {seconds:.1f} s"


_READY_AGAIN = (Complete, SshVerified, CloudInitComplete)
_REDUCERS = {
    Status: DeploymentView._status,
    Complete: DeploymentView._complete,
    SshVerified: DeploymentView._ssh,
    CloudInitComplete: DeploymentView._cloud_init,
    Failed: DeploymentView._failed,
    CreateRequest: DeploymentView._ignore,
    DeadLetter: DeploymentView._dead_letter,
    Cancel: DeploymentView._cancel,
}
