"""The one vocabulary of a VM's progress, shared by messages, reducer, state file and display.

`VmState` is what `vm_states.<vm>.state` holds: the strings the bash scripts read (and,
but for `Deleted`, Azure's provisioningState, as `az vm show` prints it). `Phase` is the
finer progress the tool itself reports: the `state` of a `vm.create.status` event is one
of `STATUS_PHASES`, and the reducer adds the phases only it knows.
"""

from __future__ import annotations

from enum import StrEnum


class VmState(StrEnum):
    CREATING = "Creating"
    UPDATING = "Updating"  # Azure only: a VM being changed
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DELETING = "Deleting"
    DELETED = "Deleted"  # ours only: removed by `reset` or after a final failure


class Phase(StrEnum):
    PENDING = "pending"  # planned, no request yet
    ACCEPTED = "accepted"
    CREATING = "creating"
    PROVISIONING = "provisioning"
    VERIFYING = "verifying"
    RETRYING = "retrying"
    DELETING = "deleting"
    CANCELLED = "cancelled"
    CREATED = "created"  # Azure says Succeeded; checks still to come
    READY = "ready"
    FAILED = "failed"


# The phases a worker reports in a status event (the schema's `Status.state`).
STATUS_PHASES = (Phase.ACCEPTED, Phase.CREATING, Phase.PROVISIONING, Phase.VERIFYING,
                 Phase.RETRYING, Phase.DELETING, Phase.CANCELLED)
# Azure is still working on the VM: wait, never delete or recreate.
AZURE_IN_FLIGHT = (VmState.CREATING, VmState.UPDATING)
# What the tool writes to `vm_states.<vm>.state` (never Azure's Updating).
FILE_STATES = (VmState.CREATING, VmState.SUCCEEDED, VmState.FAILED, VmState.DELETING,
               VmState.DELETED)
