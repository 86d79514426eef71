"""The az command layer: pure argv builders, one error table, and `AzCli` to run them.

A failed call is an `AzResult` whose `error` says what kind of failure it is; timeouts and
cancellations kill the whole process tree (`procs.py`). Facts: azure-cli.md in
the shared reference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shlex
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmlaunch.host.customdata import custom_data_file
from vmlaunch.host.procs import ProcessResult, run_process, spawn
from vmlaunch.schema.vmspec import VMSpec

log = logging.getLogger("azcli")

TAG_DEPLOYMENT = "vmlaunch-deployment"
TAG_MANAGED_BY = "managed-by"
MANAGED_BY = "azure-vm-launch-manager"
# Telemetry upload runs after exit; dynamic install does a 10 s network lookup.
AZ_ENV = {"AZURE_CORE_COLLECT_TELEMETRY": "no", "AZURE_EXTENSION_USE_DYNAMIC_INSTALL": "no"}
WRITE_COMMANDS = frozenset({"vm create", "vm delete"})
_COMMON = ["--output", "json", "--only-show-errors"]
_SECRET_FLAGS = frozenset({"--ssh-key-values", "--admin-password"})


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # retry in the same place
    CAPACITY = "capacity"  # retry in another zone or size
    LOOK = "look"  # the VM may still come up: show it before deciding
    PERMANENT = "permanent"  # stop


@dataclass(frozen=True)
class AzError:
    code: str
    message: str
    kind: FailureKind
    retry_after: float | None = None


_T, _C, _L, _P = (FailureKind.TRANSIENT, FailureKind.CAPACITY, FailureKind.LOOK,
                  FailureKind.PERMANENT)
# The table: (kind, regex the code's message must match or None, codes). First match wins.
# A code Azure gives that is not here is PERMANENT; no code at all is "Unknown", TRANSIENT.
_TABLE: tuple[tuple[FailureKind, str | None, tuple[str, ...]], ...] = (
    # Throttling (ARM and Compute; azure-cli.md §6): azure-core has already retried these.
    (_T, None, ("TooManyRequests", "SubscriptionRequestsThrottled",
                "ResourceGroupRequestsThrottled", "TenantRequestsThrottled")),
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
    hints = [float(hint) for hint in _RETRY_AFTER.findall(stderr)]  # the longest wait wins
    return AzError(code, message, _kind(code, message), max(hints) if hints else None)


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


@dataclass(frozen=True)
class AzResult(ProcessResult):
    data: Any = None  # parsed JSON stdout, None when empty or not JSON

    @property
    def not_found(self) -> bool:
        return self.exit_code == 3

    @property
    def error(self) -> AzError | None:
        if self.ok:
            return None
        if self.timed_out:
            return AzError("Timeout", f"{self.command} timed out after {self.duration:.1f} s",
                           FailureKind.TRANSIENT)
        return classify(self.exit_code, self.stderr)

    @property
    def command(self) -> str:
        """For messages: "az vm show"."""
        return " ".join(filter(None, [os.path.basename(self.argv[0]),
                                      command_key(self.argv[1:])]))


def command_key(args: list[str]) -> str:
    """The first two non-flag words: "vm create", "network public-ip", "group show"."""
    return " ".join(list(itertools.takewhile(lambda arg: not arg.startswith("-"), args))[:2])


def redact(argv: list[str]) -> list[str]:
    """The argv with secret flag values elided (custom data is a path already)."""
    return [f"<{len(arg)} chars elided>" if i and argv[i - 1] in _SECRET_FLAGS else arg
            for i, arg in enumerate(argv)]


# --- argv builders -------------------------------------------------------------------------

def vm_create_args(spec: VMSpec, *, deployment_id: str, custom_data_path: str | None) -> list[str]:
    """`az vm create` for a spec; `spec.custom_data` (content) must be written to a file first."""
    if spec.location is None:
        raise ValueError(f"VM {spec.name!r}: location is required (az would look it up per call)")
    if spec.custom_data is not None and custom_data_path is None:
        raise ValueError(f"VM {spec.name!r}: custom data must be passed as a file path")
    tags = {**spec.tags, TAG_DEPLOYMENT: deployment_id, TAG_MANAGED_BY: MANAGED_BY}
    return [
        "vm", "create", "--resource-group", spec.resource_group, "--name", spec.name,
        "--location", spec.location, "--image", spec.image, "--size", spec.size,
        "--priority", spec.priority, "--admin-username", spec.admin_username,
        "--public-ip-sku", spec.public_ip_sku,
        *_optional_create_flags(spec, custom_data_path),
        "--tags", *(f"{key}={value}" for key, value in tags.items()),
        "--nic-delete-option", "Delete", "--os-disk-delete-option", "Delete",
        *_COMMON, *spec.extra_args,
    ]


def _optional_create_flags(spec: VMSpec, custom_data_path: str | None) -> list[str]:
    args: list[str] = []
    if spec.zone is not None:
        args.extend(["--zone", spec.zone])
    if spec.eviction_policy is not None:
        args.extend(["--eviction-policy", spec.eviction_policy])
    if spec.ssh_key_name is not None:
        args.extend(["--ssh-key-name", spec.ssh_key_name])
    if spec.ssh_public_key is not None:
        args.extend(["--ssh-key-values", spec.ssh_public_key])
    if spec.vnet_name is not None:
        args.extend(["--vnet-name", spec.vnet_name])
    if spec.subnet is not None:
        args.extend(["--subnet", spec.subnet])
    if spec.nsg is not None:
        args.extend(["--nsg", spec.nsg])
    if custom_data_path is not None:
        args.extend(["--custom-data", custom_data_path])
    if spec.os_disk_size_gb is not None:
        args.extend(["--os-disk-size-gb", str(spec.os_disk_size_gb)])
    return args


def vm_show_args(resource_group: str, name: str) -> list[str]:
    return ["vm", "show", "-g", resource_group, "-n", name, "-d", *_COMMON]


def vm_list_args(resource_group: str) -> list[str]:
    return ["vm", "list", "-g", resource_group, "-d", *_COMMON]


def vm_delete_args(resource_group: str, name: str, *, no_wait: bool = False) -> list[str]:
    return ["vm", "delete", "-g", resource_group, "-n", name, "--yes",
            *(["--no-wait"] if no_wait else []), *_COMMON]


def vm_wait_args(resource_group: str, name: str, *, condition: str, timeout: int,
                 interval: int) -> list[str]:
    if condition not in ("created", "deleted"):
        raise ValueError(f"wait condition must be 'created' or 'deleted', not {condition!r}")
    return ["vm", "wait", "-g", resource_group, "-n", name, f"--{condition}",
            "--timeout", str(timeout), "--interval", str(interval), *_COMMON]


def run_shell_args(resource_group: str, name: str, script: str) -> list[str]:
    return ["vm", "run-command", "invoke", "-g", resource_group, "-n", name,
            "--command-id", "RunShellScript", "--scripts", script, *_COMMON]


def public_ip_delete_args(resource_group: str, name: str) -> list[str]:
    return ["network", "public-ip", "delete", "-g", resource_group, "-n", name, *_COMMON]


def group_show_args(resource_group: str) -> list[str]:
    return ["group", "show", "--name", resource_group, *_COMMON]


# --- processes -----------------------------------------------------------------------------

class TokenBucket:
    """Async rate limiter: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float = 10.0, burst: int = 10) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("TokenBucket needs a positive rate and a burst of at least 1")
        self.rate, self.burst = rate, burst
        self._tokens, self._last = float(burst), time.monotonic()
        self._lock = asyncio.Lock()  # waiters are served in order

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class AzCli:
    """Runs az. `calls` counts invocations per command (see `command_key`)."""

    def __init__(self, executable: str | None = None, *, write_rate: float = 10.0,
                 kill_grace: float = 3.0) -> None:
        self.executable = executable or os.environ.get("AZ_CLI") or "az"
        self.kill_grace = kill_grace
        self.calls: collections.Counter[str] = collections.Counter()
        self._bucket = TokenBucket(write_rate, max(1, round(write_rate)))

    async def _admit(self, args: list[str]) -> list[str]:
        """Count the call, rate-limit writes, log it; give the full argv."""
        key = command_key(args)
        self.calls[key] += 1
        if key in WRITE_COMMANDS:
            await self._bucket.acquire()
        log.debug("az %s", shlex.join(redact(args)))
        return [self.executable, *args]

    async def start(self, args: list[str], *, capture: bool = False) -> asyncio.subprocess.Process:
        """Spawn without waiting (the legacy poller tracks it); see `procs.spawn`."""
        return await spawn(await self._admit(args), capture=capture, env=AZ_ENV,
                           kill_grace=self.kill_grace)

    async def run(self, args: list[str], *, timeout: float | None = None) -> AzResult:
        """Run az to completion; see `procs.run_process`."""
        argv = await self._admit(args)
        done = await run_process(argv, timeout=timeout, env=AZ_ENV, kill_grace=self.kill_grace)
        result = AzResult(**{**dataclasses.asdict(done), "argv": redact(argv)},
                          data=_parse_json(done.stdout))
        log.debug("%s: exit %s in %.1f s%s", result.command, result.exit_code, result.duration,
                  " (timed out)" if result.timed_out else "")
        return result

    async def create_vm(self, spec: VMSpec, *, deployment_id: str, timeout: float) -> AzResult:
        """`spec.custom_data` is content: it goes to a private file, removed afterwards."""
        with custom_data_file(spec.custom_data) as path:
            args = vm_create_args(spec, deployment_id=deployment_id, custom_data_path=path)
            return await self.run(args, timeout=timeout)

    async def show_vm(self, resource_group: str, name: str, *, timeout: float = 120) -> AzResult:
        return await self.run(vm_show_args(resource_group, name), timeout=timeout)

    async def list_vms(self, resource_group: str, *, timeout: float = 300) -> AzResult:
        return await self.run(vm_list_args(resource_group), timeout=timeout)

    async def delete_vm(self, resource_group: str, name: str, *, timeout: float = 900,
                        no_wait: bool = False) -> AzResult:
        args = vm_delete_args(resource_group, name, no_wait=no_wait)
        return await self.run(args, timeout=timeout)

    async def wait_vm(self, resource_group: str, name: str, *, condition: str, timeout: float,
                      interval: float) -> AzResult:
        """`az vm wait`; its own timeout prints `{}` and exits 0, reported as `timed_out`."""
        args = vm_wait_args(resource_group, name, condition=condition,
                            timeout=math.ceil(timeout), interval=max(1, math.ceil(interval)))
        # Slack for the last poll's GET and az's start-up.
        result = await self.run(args, timeout=timeout + interval + 60)
        if result.ok and result.stdout.strip() == "{}":
            return dataclasses.replace(result, timed_out=True)
        return result

    async def run_shell(self, resource_group: str, name: str, script: str, *,
                        timeout: float) -> AzResult:
        return await self.run(run_shell_args(resource_group, name, script), timeout=timeout)

    async def delete_public_ip(self, resource_group: str, vm_name: str, *,
                               timeout: float = 300) -> AzResult:
        """Delete the `<vm>PublicIP` that `vm create` made (no delete option covers it)."""
        args = public_ip_delete_args(resource_group, f"{vm_name}PublicIP")
        return await self.run(args, timeout=timeout)

    async def group_show(self, resource_group: str, *, timeout: float = 120) -> AzResult:
        return await self.run(group_show_args(resource_group), timeout=timeout)


def _parse_json(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
