"""The pieces of an attempt's end the lifecycle (machine.py) uses: the next zone or size, and
removing what a failed attempt left.

Removal follows "never destroy on doubt": a VM is deleted only when a read says it exists
and carries this deployment's tag.
"""

from __future__ import annotations

import time
from typing import Any

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli, AzError, AzResult, FailureKind
from vmlaunch.azure.look import look, owner
from vmlaunch.lifecycle.lease import OPEN, Fence
from vmlaunch.lifecycle.report import Reporter
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import Phase


def next_spec(spec: VMSpec, original: VMSpec, error: AzError) -> VMSpec:
    """After a capacity failure, move to the next fallback zone, then the next size."""
    if error.kind is not FailureKind.CAPACITY:
        return spec
    zones = [z for z in [original.zone, *original.fallback_zones] if z is not None]
    if spec.zone in zones and zones.index(spec.zone) + 1 < len(zones):
        return spec.replace(zone=zones[zones.index(spec.zone) + 1])
    sizes = [original.size, *original.fallback_sizes]
    if spec.size in sizes and sizes.index(spec.size) + 1 < len(sizes):
        # A new size starts again from the first zone.
        return spec.replace(size=sizes[sizes.index(spec.size) + 1], zone=original.zone)
    return spec


async def remove_vm(az: AzCli, spec: VMSpec, *, fence: Fence = OPEN) -> AzResult:
    """Delete the VM (its NIC and OS disk go with it) and then its public IP, if `fence`
    allows (else Fenced).

    `az vm create` gives the public IP no delete option, so it is removed separately:
    no orphan, no cost leak, and a retry in another zone gets a fresh zonal IP.
    """
    await fence.allow("delete", spec.name)
    deleted = await az.delete_vm(spec.resource_group, spec.name)
    if not deleted.ok:
        return deleted
    return await az.delete_public_ip(spec.resource_group, spec.name)


async def clean_up(az: AzCli, report: Reporter, spec: VMSpec, *, attempt: int,
                   fence: Fence = OPEN) -> str | None:
    """Delete a failed attempt's VM and public IP (waits until gone) only when a read says the
    VM exists and carries this deployment's tag. Otherwise: why it was left in place, or
    None when there is nothing to delete."""
    # The fence first: a read taken before a wait for it (the poller's handover) is stale.
    await fence.allow("delete", spec.name)
    seen = await look(az, spec, time.monotonic() + spec.create_timeout)
    if seen.absent:
        return None
    if seen.error is not None:
        return (f"{spec.name} left in place, not deleted: its state could not be read "
                f"({seen.error.code}: {seen.error.message})")
    if owner(seen.data) != report.deployment_id:
        return (f"{spec.name} left in place, not deleted: it does not carry "
                f"{TAG_DEPLOYMENT}={report.deployment_id}")
    await report.status(Phase.DELETING, f"deleting {spec.name} and its public IP",
                        attempt=attempt, spec=spec)
    await remove_vm(az, spec, fence=fence)
    return None



def as_found(spec: VMSpec, seen: dict[str, Any]) -> VMSpec:
    """The spec with the zone and size a found VM really has (an earlier owner may have
    moved them)."""
    zones = seen.get("zones") or []
    size = (seen.get("hardwareProfile") or {}).get("vmSize")
    return spec.replace(zone=zones[0] if zones else spec.zone, size=size or spec.size)
