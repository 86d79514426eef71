"""Checks that a created VM is usable: SSH answers, and cloud-init has finished.

Run by the VM lifecycle (lifecycle/machine.py), in every mode. A check returns a result; it
never raises for a failed check. SSH checks are light `ssh` processes, at most SSH_AT_ONCE at
once per process (a worker follows hundreds of VMs, which may all succeed together); a
run-command check is an `az` process of ~100 MB that lasts >= 20 s (azure-cli.md §4, §7),
so those wait for a slot of their own pool, one per `AzCli` (`limit_run_commands`).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from vmlaunch.azure import azcli
from vmlaunch.azure.azcli import AzCli
from vmlaunch.host import procs
from vmlaunch.host.procs import ProcessResult
from vmlaunch.schema.vmspec import VMSpec

CLOUD_INIT_SCRIPT = "cloud-init status --wait --long"
SSH_TRIES = 3
SSH_FAILED = 255  # ssh's own exit code (refused, reset, denied); others are the command's
# Run-command allows one invocation per VM at a time; a busy VM is asked again after this.
RUN_COMMAND_BUSY_PAUSE = 5.0
DEFAULT_RUN_COMMAND_CONCURRENCY = 8
SSH_AT_ONCE = 32  # ssh clients running at once in one process
_STATUS_LINE = re.compile(r"^status:\s*(\w+)", re.M)
# Since cloud-init 23.4 a recoverable error shows as "status: done" with
# "extended_status: degraded done"; older releases print "status: degraded".
_EXTENDED_LINE = re.compile(r"^extended_status:\s*(\w+)", re.M)
# Keyed by the AzCli, the one object every lifecycle of a worker or a poller shares.
_pools: weakref.WeakKeyDictionary[AzCli, asyncio.Semaphore] = weakref.WeakKeyDictionary()
# One ssh gate per event loop (a semaphore belongs to the loop it is first used in).
_ssh_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _ssh_gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _ssh_gates:
        _ssh_gates[loop] = asyncio.Semaphore(SSH_AT_ONCE)
    return _ssh_gates[loop]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str
    # For cloud-init: done | degraded | error (degraded is ok, with warnings).
    result: str = ""


def limit_run_commands(az: AzCli, limit: int) -> None:
    """At most `limit` run-command checks through `az` at once (a separate pool from any
    other az call, so checks never hold back creates and listings)."""
    if limit < 1:
        raise ValueError("the run-command concurrency must be at least 1")
    _pools[az] = asyncio.Semaphore(limit)


def run_command_pool(az: AzCli) -> asyncio.Semaphore:
    """`az`'s run-command pool: DEFAULT_RUN_COMMAND_CONCURRENCY slots unless limited."""
    if az not in _pools:
        _pools[az] = asyncio.Semaphore(DEFAULT_RUN_COMMAND_CONCURRENCY)
    return _pools[az]


def ssh_args(spec: VMSpec, *, ip: str, private_key: str | None, command: str) -> list[str]:
    args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={max(1, round(spec.ssh_connect_timeout))}",
            "-p", str(spec.ssh_port)]
    if private_key is not None:
        args += ["-i", private_key, "-o", "IdentitiesOnly=yes"]
    # `--`: the destination is never read as an option, whatever the user name holds.
    return [*args, "--", f"{spec.effective_ssh_user}@{ip}", command]


async def _over_ssh(spec: VMSpec, *, ip: str, private_key: str | None, command: str,
                    timeout: float, backoff: float,
                    again: Callable[[ProcessResult], bool]) -> ProcessResult:
    """`command` over ssh, up to SSH_TRIES times while `again` says the try did not count."""
    attempt = 1
    while True:
        async with _ssh_gate():
            result = await procs.run_process(
                ssh_args(spec, ip=ip, private_key=private_key, command=command),
                timeout=timeout)
        if attempt == SSH_TRIES or not again(result):
            return result
        await asyncio.sleep(backoff * attempt)
        attempt += 1


async def check_ssh(spec: VMSpec, *, ip: str, private_key: str | None,
                    backoff: float = 2.0) -> CheckResult:
    """`ssh ... true` with a few retries: sshd often starts a little after Succeeded."""
    result = await _over_ssh(spec, ip=ip, private_key=private_key, command="true",
                             timeout=spec.ssh_connect_timeout + 10, backoff=backoff,
                             again=lambda tried: not tried.ok)
    if result.ok:
        return CheckResult(True, f"ssh {spec.effective_ssh_user}@{ip}:{spec.ssh_port} ok")
    detail = _last_line(result.stderr) or f"ssh exited with {result.exit_code}"
    return CheckResult(False, f"ssh to {ip}:{spec.ssh_port} failed after {SSH_TRIES} tries: "
                              f"{detail}")


def parse_cloud_init(output: str) -> CheckResult:
    """Decide from the `cloud-init status --long` text, never from an exit code."""
    match = _STATUS_LINE.search(output)
    status = match[1] if match else "unknown"
    extended = _EXTENDED_LINE.search(output)
    if status == "done" and extended and extended[1] == "degraded":
        status = "degraded"
    errors = _section(output, "recoverable_errors:" if status == "degraded" else "errors:")
    if status == "done":
        return CheckResult(True, "cloud-init finished: status done", "done")
    if status == "degraded":
        return CheckResult(True, f"cloud-init finished with warnings: {errors or 'degraded'}",
                           "degraded")
    return CheckResult(False, f"cloud-init status {status}: {errors or 'no detail'}", "error")


def run_command_stdout(data: object) -> str:
    """The `[stdout]` part of a run-command result, which reports success regardless."""
    try:
        message = data["value"][0]["message"]  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return ""
    stdout = message.split("[stdout]", 1)[-1]
    return stdout.split("[stderr]", 1)[0].strip()


async def check_cloud_init(spec: VMSpec, *, az: AzCli, ip: str, private_key: str | None,
                           backoff: float = 2.0) -> CheckResult:
    """cloud-init status, via run-command (default) or over SSH, bounded by its timeout
    (for run-command counted from its first slot in the pool)."""
    if spec.cloud_init_check != "ssh":
        return await _by_run_command(spec, az)
    try:
        return await asyncio.wait_for(_by_ssh(spec, ip=ip, private_key=private_key,
                                              backoff=backoff), spec.cloud_init_timeout)
    except TimeoutError:
        return _timed_out(spec)


async def _by_ssh(spec: VMSpec, *, ip: str, private_key: str | None,
                  backoff: float) -> CheckResult:
    """No az at all: `cloud-init status --wait` through ssh. A failure of ssh itself
    (exit 255 without output: a reboot by cloud-init, sshd not up yet) is tried again."""
    result = await _over_ssh(spec, ip=ip, private_key=private_key, command=CLOUD_INIT_SCRIPT,
                             timeout=spec.cloud_init_timeout, backoff=backoff,
                             again=lambda tried: tried.exit_code == SSH_FAILED
                             and not tried.stdout)
    # `cloud-init status` exits 1 on error and 2 on degraded: the text decides.
    if result.stdout:
        return parse_cloud_init(result.stdout)
    detail = _last_line(result.stderr) or f"exit {result.exit_code}"
    return CheckResult(False, f"cloud-init check over ssh failed: {detail}", "error")


async def _by_run_command(spec: VMSpec, az: AzCli) -> CheckResult:
    """`az vm run-command invoke`, each call in a slot of `az`'s pool. The timeout runs from
    the first slot: a VM that waited in the queue is not failed for it."""
    pool, loop = run_command_pool(az), asyncio.get_running_loop()
    until: float | None = None
    while until is None or loop.time() < until:
        async with pool:
            until = until or loop.time() + spec.cloud_init_timeout
            result = await az.run_shell(spec.resource_group, spec.name, CLOUD_INIT_SCRIPT,
                                        timeout=max(0.1, until - loop.time()))
        if result.ok:
            return parse_cloud_init(run_command_stdout(result.data))
        if result.timed_out:
            break
        error = result.error
        if error is None or error.kind is not azcli.FailureKind.TRANSIENT:
            detail = error.message if error else "no output"
            return CheckResult(False, f"cloud-init check failed: {detail}", "error")
        await asyncio.sleep(min(error.retry_after or RUN_COMMAND_BUSY_PAUSE,
                                max(0.0, until - loop.time())))
    return _timed_out(spec)


def _timed_out(spec: VMSpec) -> CheckResult:
    return CheckResult(False, f"cloud-init did not finish within {spec.cloud_init_timeout:g} s",
                       "error")


def _section(output: str, heading: str) -> str:
    text = output.split(heading, 1)[1] if heading in output else ""
    lines = [ln.strip(" \t-") for ln in text.splitlines() if ln.strip(" \t-[]")]
    return "; ".join(lines)[:300]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
