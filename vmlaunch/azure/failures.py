"""The one failure table: what a failed az call means and what to do about it.

`classify` reads az's exit code and stderr (azure-cli.md §6 in the shared reference) and
names the most specific Azure code with its own message, its `FailureKind` and any
Retry-After hint.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # retry in the same place
    CAPACITY = "capacity"  # retry in another zone or size
    LOOK = "look"  # the VM may still come up: show it before deciding
    PERMANENT = "permanent"  # stop


@dataclass(frozen=True)
class AzError:
    """A failed call as data: Azure's code (or one of ours, `_OWN_CODES`), that code's
    own message, what to do about it, and the longest Retry-After hint (seconds)."""

    code: str
    message: str
    kind: FailureKind
    retry_after: float | None = None


# Azure's "too many requests" codes (azure-cli.md §6): a write budget holds writes back.
THROTTLE_CODES = ("TooManyRequests", "SubscriptionRequestsThrottled",
                  "ResourceGroupRequestsThrottled", "TenantRequestsThrottled")
_T, _C, _L, _P = (FailureKind.TRANSIENT, FailureKind.CAPACITY, FailureKind.LOOK,
                  FailureKind.PERMANENT)
# The table: (kind, regex the code's message must match or None, codes). First match wins.
# A code Azure gives that is not here is PERMANENT; no code at all is "Unknown", TRANSIENT.
_TABLE: tuple[tuple[FailureKind, str | None, tuple[str, ...]], ...] = (
    # Throttling (ARM and Compute; azure-cli.md §6): azure-core has already retried these.
    (_T, None, THROTTLE_CODES),
    # Server side (5xx) and the service's own "try again".
    (_T, None, ("InternalServerError", "ServiceUnavailable", "GatewayTimeout", "ServerTimeout",
                "InternalExecutionError", "NetworkingInternalOperationError",
                "RetryableError")),
    (_T, None, ("Conflict", "AnotherOperationInProgress", "OperationPreempted",
                "NicReservedForAnotherVm", "TokenCacheLocked", "Timeout", "Unknown")),
    # Cleanup ordering races: they clear once the VM or NIC delete has finished.
    (_T, None, ("NicInUse", "PublicIPAddressCannotBeDeleted")),
    (_T, r"marked for deletion", ("OperationNotAllowed",)),
    (_C, None, ("ZonalAllocationFailed", "AllocationFailed", "OverconstrainedAllocationRequest",
                "OverconstrainedZonalAllocationRequest")),
    (_C, r"Capacity Restrictions", ("SkuNotAvailable",)),
    (_L, None, ("OSProvisioningTimedOut",)),
    (_P, None, ("SkuNotAvailable", "OperationNotAllowed", "QuotaExceeded", "InvalidParameter",
                "AuthorizationFailed", "ResourceGroupNotFound", "ResourceNotFound",
                "PropertyChangeNotAllowed", "ArgumentError", "NotLoggedIn", "Cancelled")),
    # Wrappers: chosen only when stderr holds nothing more specific.
    (_P, None, ("InvalidTemplateDeployment",)),
    (_T, None, ("DeploymentFailed", "ResourceDeploymentFailure")),
)
_WRAPPERS = {"InvalidTemplateDeployment", "DeploymentFailed", "ResourceDeploymentFailure"}
_OWN_CODES = {"TokenCacheLocked", "Timeout", "Unknown", "ArgumentError", "NotLoggedIn",
              "Cancelled"}
_AZURE_CODES = {code for _, _, codes in _TABLE for code in codes} - _WRAPPERS - _OWN_CODES
# Failures that carry no Azure code, named by their text.
_SIGNATURES = (
    ("TokenCacheLocked", re.compile(r"Permission denied.*msal_token_cache\S*lockfile")),
    ("NotLoggedIn", re.compile(r"Please run:? '?az login")),
    ("ArgumentError", re.compile(
        r"unrecognized arguments|arguments are required|\) are required|is not a valid value")),
    ("Cancelled", re.compile(r"^ERROR: Operation cancelled", re.M)),
)
_PAREN_CODE = re.compile(r"\((\w+)\)")
_JSON_CODE = re.compile(r'"code":\s*"(\w+)"')
_CODE_LINE = re.compile(r"^\s*Code:\s*(\w+)", re.M)
# Azure writes "code" before "message" in an error object; [^{}] keeps to that object.
_JSON_MESSAGE = re.compile(r'"code":\s*"(\w+)"[^{}]*?"message":\s*("(?:[^"\\]|\\.)*")')
_PAREN_MESSAGE = re.compile(r"\((\w+)\)[ \t]*([^\n]+)")
# "Retry-After: 17", "retry after 180 seconds", ARM's "Please try again after '17' seconds".
_RETRY_AFTER = re.compile(r"(?:retry[- ]after:?|try again after)\s*'?(\d+(?:\.\d+)?)", re.I)


def classify(exit_code: int, stderr: str) -> AzError:
    """What a failed az call means: its most specific Azure code and what to do about it."""
    code = "ArgumentError" if exit_code == 2 else _pick_code(stderr)
    if code is None:
        code = "ResourceNotFound" if exit_code == 3 else "Unknown"
    message = _messages(stderr).get(code) or _first_error_line(stderr, exit_code)
    return AzError(code, message, _kind(code, message), _retry_after(stderr))


def _retry_after(text: str) -> float | None:
    hints = [float(hint) for hint in _RETRY_AFTER.findall(text)]  # the longest wait wins
    return max(hints) if hints else None


def provisioning_failure(vm: object) -> AzError | None:
    """Why a Failed VM failed, from `az vm get-instance-view`'s `instanceView.statuses`:
    the code of `ProvisioningState/failed/<Code>` and its message (azure-cli.md §7)."""
    view = vm.get("instanceView") if isinstance(vm, dict) else None
    statuses = view.get("statuses") if isinstance(view, dict) else None
    for status in statuses if isinstance(statuses, list) else ():
        parts = str(status.get("code", "")).split("/") if isinstance(status, dict) else []
        if parts[:2] == ["ProvisioningState", "failed"] and len(parts) > 2 and parts[2]:
            message = _one_line(str(status.get("message") or status.get("displayStatus", "")))
            return AzError(parts[2], message, _kind(parts[2], message), _retry_after(message))
    return None


def _kind(code: str, message: str) -> FailureKind:
    for kind, text, codes in _TABLE:
        if code in codes and (text is None or re.search(text, message)):
            return kind
    return FailureKind.PERMANENT  # Azure named a specific failure that we do not know


def _pick_code(stderr: str) -> str | None:
    """Inner-most known code, else a codeless signature, else an unknown code, else a wrapper.

    Inner codes come after their wrappers in both the JSON body and the traceback, so the
    last occurrence is the most specific. A parenthesised word counts as an unknown code
    only when a `Code:` line confirms it (it may be prose, like "(Minimum)").
    """
    confirmed = set(_CODE_LINE.findall(stderr)) | set(_JSON_CODE.findall(stderr))
    found = [m[1] for m in sorted([*_PAREN_CODE.finditer(stderr), *_JSON_CODE.finditer(stderr)],
                                  key=lambda m: m.start())]
    known = [c for c in found if c in _AZURE_CODES]
    signature = next((name for name, regex in _SIGNATURES if regex.search(stderr)), None)
    unknown = [c for c in found if c in confirmed and c not in _AZURE_CODES | _WRAPPERS]
    wrappers = [c for c in found if c in _WRAPPERS]
    for choice in (known, [signature] if signature else [], unknown, wrappers):
        if choice:
            return choice[-1]
    return None


def _messages(stderr: str) -> dict[str, str]:
    """Each code's own message: from a JSON error body, else from "(Code) message"."""
    found: dict[str, str] = {}
    for match in _JSON_MESSAGE.finditer(stderr):
        with contextlib.suppress(ValueError):
            found.setdefault(match[1], _one_line(json.loads(match[2])))
    for match in _PAREN_MESSAGE.finditer(stderr):
        found.setdefault(match[1], _one_line(match[2]))
    return found


def _first_error_line(stderr: str, exit_code: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    line = next((x for x in lines if x.startswith("ERROR:")), lines[0] if lines else "")
    return _one_line(line.removeprefix("ERROR:")) or f"az exited with code {exit_code}"


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
