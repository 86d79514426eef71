"""The az runner: `AzCli` admits, rate-limits and runs az; each call gives an `AzResult`.

A failed call is an `AzResult` whose `error` says what kind of failure it is (the table is
in `failures.py`; the argv builders are in `argv.py`); timeouts and cancellations kill the
whole process tree (`host/procs.py`). Facts: azure-cli.md in the shared reference.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any

from vmlaunch.azure.argv import (
    TAG_DEPLOYMENT,
    command_key,
    group_show_args,
    public_ip_delete_args,
    redact,
    run_shell_args,
    vm_create_args,
    vm_create_command,
    vm_delete_args,
    vm_instance_view_args,
    vm_ip_addresses_args,
    vm_list_args,
    vm_show_args,
    vm_wait_args,
)
from vmlaunch.azure.failures import AzError, FailureKind, classify
from vmlaunch.host import azslots, guarded
from vmlaunch.host.procs import COMMAND_NICENESS, KILL_GRACE, ProcessResult, run_process
from vmlaunch.schema.vmspec import VMSpec

# Importers of this module's names from before the split keep working.
__all__ = ["RATE_LIMITED", "TAG_DEPLOYMENT", "AzCli", "AzError", "AzResult", "FailureKind",
           "TokenBucket", "classify", "vm_create_args"]

log = logging.getLogger("azcli")

# Telemetry upload runs after exit; dynamic install does a 10 s network lookup.
AZ_ENV = {"AZURE_CORE_COLLECT_TELEMETRY": "no", "AZURE_EXTENSION_USE_DYNAMIC_INSTALL": "no"}
# Writes each process spaces itself (ARM refills its delete bucket at 10/s, azure-cli.md §6).
# Creates are not among them: the fleet's write budget paces those (writebudget.py) for
# every worker together, and a per-process rate would only cap a burst the budget allows.
RATE_LIMITED = frozenset({"vm delete"})
# Short reads that many VMs wait on: they may take the az slots kept from creates, and run
# at READ_NICENESS rather than COMMAND_NICENESS: a listing is what every report of the
# group waits for, so on a busy machine it must not wait for the CPU behind the creates.
QUICK_READS = frozenset({"vm list", "vm list-ip-addresses", "vm show", "vm get-instance-view",
                         "group show"})
READ_NICENESS = 0


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
    """Runs az. `calls` counts invocations per command (see `command_key`). Every process
    holds a slot of `slots` (by default the process's machine-wide limit) while it runs.
    Made only where this process's guard runs: else `GuardUnavailable` (exit 3) at once,
    not a NOT_RUN for each call, which is an unknown outcome and would be retried."""

    def __init__(self, executable: str | None = None, *, write_rate: float = 10.0,
                 kill_grace: float = KILL_GRACE,
                 slots: azslots.MachineSlots | None = None) -> None:
        self.executable = executable or os.environ.get("AZ_CLI") or "az"
        self.kill_grace = kill_grace
        self.slots = slots or azslots.shared()
        self.calls: collections.Counter[str] = collections.Counter()
        self._bucket = TokenBucket(write_rate, max(1, round(write_rate)))
        guarded.guard()

    async def _admit(self, args: list[str]) -> list[str]:
        """Count the call, rate-limit writes, log it; give the full argv."""
        key = command_key(args)
        self.calls[key] += 1
        if key in RATE_LIMITED:
            await self._bucket.acquire()
        log.debug("az %s", shlex.join(redact(args)))
        return [self.executable, *args]

    async def run(self, args: list[str], *, timeout: float | None = None) -> AzResult:
        """Run az to completion; see `procs.run_process`."""
        argv = await self._admit(args)
        read = command_key(args) in QUICK_READS
        async with self.slots.held(read=read):  # the timeout starts once the process does
            done = await run_process(argv, timeout=timeout, env=AZ_ENV,
                                     kill_grace=self.kill_grace,
                                     niceness=READ_NICENESS if read else COMMAND_NICENESS)
        result = AzResult(**{**dataclasses.asdict(done), "argv": redact(argv)},
                          data=_parse_json(done.stdout))
        log.debug("%s: exit %s in %.1f s%s", result.command, result.exit_code, result.duration,
                  " (timed out)" if result.timed_out else "")
        return result

    async def create_vm(self, spec: VMSpec, *, deployment_id: str, timeout: float,
                        no_wait: bool = False) -> AzResult:
        """The one place a VM create is issued. `spec.custom_data` is content: it goes to a
        private file, removed afterwards."""
        with vm_create_command(spec, deployment_id=deployment_id, no_wait=no_wait) as args:
            return await self.run(args, timeout=timeout)

    async def show_vm(self, resource_group: str, name: str, *, timeout: float = 120) -> AzResult:
        return await self.run(vm_show_args(resource_group, name), timeout=timeout)

    async def list_vms(self, resource_group: str, *, timeout: float = 300,
                       details: bool = True, tracked_fields: bool = False) -> AzResult:
        return await self.run(vm_list_args(resource_group, details=details,
                                           tracked_fields=tracked_fields), timeout=timeout)

    async def ip_addresses(self, resource_group: str, *, timeout: float = 300) -> AzResult:
        return await self.run(vm_ip_addresses_args(resource_group), timeout=timeout)

    async def instance_view(self, resource_group: str, name: str, *,
                            timeout: float = 120) -> AzResult:
        return await self.run(vm_instance_view_args(resource_group, name), timeout=timeout)

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
