"""What the launcher may believe about a VM before it acts on it: authoritative reads only.

azure-cli.md §6: a read that fails (429, 5xx, a timeout, output that is not a VM) says
nothing about the VM; only exit 3 (`ResourceNotFound`) means absent. `look` retries such
reads with backoff within a deadline and never turns them into "absent" or "failed".
Ownership is the deployment tag: a VM without this deployment's tag is never deleted, and
adopted only when the launcher was started with `--adopt-untagged` and it has no such tag.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from vmlaunch.azure.azcli import TAG_DEPLOYMENT, AzCli, AzError, AzResult, FailureKind
from vmlaunch.schema.vmspec import VMSpec

log = logging.getLogger("vmlook")

BACKOFF_CAP = 120.0
READ_TIMEOUT = 120.0  # one `az vm show` at most; az itself retries inside that
# Read failures that waiting does not cure: our own argv, or no login.
HOPELESS = frozenset({"ArgumentError", "NotLoggedIn"})
# Failures that end a launch with hands off the VM: no clean-up, no retry.
HANDS_OFF = frozenset({"NotOurs", "VmStateUnknown"})


@dataclass(frozen=True)
class Seen:
    """One authoritative answer (absent, or a provisioning state), or `error` if none came."""

    state: str | None = None  # provisioningState; None when absent or unknown
    data: dict[str, Any] = field(default_factory=dict)  # the VM as `az vm show -d` prints it
    error: AzError | None = None  # the last failed read, when the state is unknown
    how: str = ""  # how the observer came by it, when that matters to a status text
    failure: AzError | None = None  # why a Failed VM failed, when the observer read it

    @property
    def absent(self) -> bool:
        return self.state is None and self.error is None

    @property
    def unknown(self) -> bool:
        return self.error is not None


def backoff_delay(spec: VMSpec, attempt: int, error: AzError) -> float:
    """Exponential with jitter, never shorter than the service's retry-after hint."""
    delay = min(BACKOFF_CAP, spec.retry_backoff * 2 ** (attempt - 1))
    delay *= random.uniform(0.5, 1.0)
    return max(delay, error.retry_after or 0.0)


def _seen(result: AzResult) -> Seen:
    if result.not_found:
        return Seen()
    state = result.data.get("provisioningState") if isinstance(result.data, dict) else None
    if result.ok and isinstance(state, str) and state:
        return Seen(state, result.data)
    return Seen(error=result.error or AzError(
        "Unknown", f"{result.command} printed no VM with a provisioning state",
        FailureKind.TRANSIENT))


def listed(item: dict[str, Any] | None) -> Seen:
    """A VM as one line of a successful `az vm list` shows it: absent only when not
    listed; listed without a provisioning state, it is unknown (never absent)."""
    if item is None:
        return Seen()
    state = item.get("provisioningState")
    if isinstance(state, str) and state:
        return Seen(state, item)
    return Seen(error=AzError("Unknown", f"{item.get('name', 'a VM')} is listed without a "
                              "provisioning state", FailureKind.TRANSIENT))


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def addresses(entry: dict[str, Any]) -> dict[str, str] | None:
    """One `az vm list-ip-addresses --query IP_FIELDS` entry's IPs as `az vm show -d` gives
    them ("privateIps"/"publicIps", comma-joined); None when it holds no private IP yet."""
    private, public = _strings(entry.get("private")), _strings(entry.get("public"))
    return {"privateIps": ",".join(private), "publicIps": ",".join(public)} if private else None


async def look(az: AzCli, spec: VMSpec, deadline: float) -> Seen:
    """`az vm show -d` until an authoritative answer, or the deadline (time.monotonic())."""
    tries = 0
    while True:
        tries += 1
        remaining = deadline - time.monotonic()
        seen = _seen(await az.show_vm(spec.resource_group, spec.name,
                                      timeout=max(1.0, min(READ_TIMEOUT, remaining))))
        error = seen.error
        if error is None or error.code in HOPELESS or time.monotonic() >= deadline:
            return seen
        delay = min(backoff_delay(spec, tries, error), max(0.0, deadline - time.monotonic()))
        log.warning("reading %s failed (%s: %s); the VM is left as it is, reading again in "
                    "%.1f s", spec.name, error.code, error.message, delay)
        await asyncio.sleep(delay)


def unknown_error(spec: VMSpec, seen: Seen) -> AzError:
    """The launch's failure when no read answered before the deadline."""
    assert seen.error is not None
    return AzError("VmStateUnknown", f"the state of {spec.name} could not be read before the "
                   f"deadline (last: {seen.error.code}: {seen.error.message}); nothing was "
                   "created or deleted", FailureKind.TRANSIENT, seen.error.retry_after)


def owner(vm: dict[str, Any]) -> str | None:
    """The deployment whose tag the VM (as az prints it) carries, if any."""
    tags = vm.get("tags")
    value = tags.get(TAG_DEPLOYMENT) if isinstance(tags, dict) else None
    return value if isinstance(value, str) else None


def refusal(vm: dict[str, Any], *, deployment_id: str, adopt_untagged: bool,
            delete: bool) -> AzError | None:
    """Why this deployment must not adopt (or, with `delete`, delete) the VM; None if it may."""
    tagged = owner(vm)
    if tagged == deployment_id or (tagged is None and adopt_untagged and not delete):
        return None
    found = (f"tagged {TAG_DEPLOYMENT}={tagged}" if tagged is not None
             else f"without a {TAG_DEPLOYMENT} tag")
    hint = "" if tagged is not None or delete else " (--adopt-untagged would adopt it)"
    return AzError("NotOurs", f"a VM named {vm.get('name', '?')} already exists {found}, not "
                   f"{TAG_DEPLOYMENT}={deployment_id}: it is not this deployment's, so it was "
                   f"neither adopted nor deleted{hint}", FailureKind.PERMANENT)
