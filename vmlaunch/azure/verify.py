"""Checks that a created VM is usable: SSH answers, and cloud-init has finished.

Run by the VM lifecycle (lifecycle/machine.py), in every mode. A check returns a result; it
never raises for a failed check.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from vmlaunch.azure import azcli
from vmlaunch.azure.azcli import AzCli
from vmlaunch.host import procs
from vmlaunch.schema.vmspec import VMSpec

CLOUD_INIT_SCRIPT = "cloud-init status --wait --long"
SSH_TRIES = 3
# Run-command allows one invocation per VM at a time; a busy VM is asked again after this.
RUN_COMMAND_BUSY_PAUSE = 5.0
_STATUS_LINE = re.compile(r"^status:\s*(\w+)", re.M)
# Since cloud-init 23.4 a recoverable error shows as "status: done" with
# "extended_status: degraded done"; older releases print "status: degraded".
_EXTENDED_LINE = re.compile(r"^extended_status:\s*(\w+)", re.M)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str
    # For cloud-init: done | degraded | error (degraded is ok, with warnings).
    result: str = ""


def ssh_args(spec: VMSpec, *, ip: str, private_key: str | None, command: str) -> list[str]:
    args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={max(1, round(spec.ssh_connect_timeout))}",
            "-p", str(spec.ssh_port)]
    if private_key is not None:
        args += ["-i", private_key, "-o", "IdentitiesOnly=yes"]
    # `--`: the destination is never read as an option, whatever the user name holds.
    return [*args, "--", f"{spec.effective_ssh_user}@{ip}", command]


async def check_ssh(spec: VMSpec, *, ip: str, private_key: str | None,
                    backoff: float = 2.0) -> CheckResult:
    """`ssh ... true` with a few retries: sshd often starts a little after Succeeded."""
    detail = ""
    for attempt in range(1, SSH_TRIES + 1):
        result = await procs.run_process(
            ssh_args(spec, ip=ip, private_key=private_key, command="true"),
            timeout=spec.ssh_connect_timeout + 10,
        )
        if result.ok:
            return CheckResult(True, f"ssh {spec.effective_ssh_user}@{ip}:{spec.ssh_port} ok")
        detail = _last_line(result.stderr) or f"ssh exited with {result.exit_code}"
        if attempt < SSH_TRIES:
            await asyncio.sleep(backoff * attempt)
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


async def check_cloud_init(spec: VMSpec, *, az: AzCli, ip: str,
                           private_key: str | None) -> CheckResult:
    """cloud-init status, via run-command (default) or over SSH, bounded by its timeout."""
    try:
        return await asyncio.wait_for(_cloud_init(spec, az=az, ip=ip, private_key=private_key),
                                      spec.cloud_init_timeout)
    except TimeoutError:
        return CheckResult(False, f"cloud-init did not finish within "
                                  f"{spec.cloud_init_timeout:g} s", "error")


async def _cloud_init(spec: VMSpec, *, az: AzCli, ip: str, private_key: str | None) -> CheckResult:
    if spec.cloud_init_check == "ssh":
        result = await procs.run_process(
            ssh_args(spec, ip=ip, private_key=private_key, command=CLOUD_INIT_SCRIPT),
            timeout=spec.cloud_init_timeout)
        # `cloud-init status` exits 1 on error and 2 on degraded: the text decides.
        return parse_cloud_init(result.stdout) if result.stdout else CheckResult(
            False, f"cloud-init check over ssh failed: {_last_line(result.stderr)}", "error")
    while True:
        result = await az.run_shell(spec.resource_group, spec.name, CLOUD_INIT_SCRIPT,
                                    timeout=spec.cloud_init_timeout)
        if result.ok:
            return parse_cloud_init(run_command_stdout(result.data))
        error = result.error
        if error is None or error.kind is not azcli.FailureKind.TRANSIENT:
            detail = error.message if error else "no output"
            return CheckResult(False, f"cloud-init check failed: {detail}", "error")
        await asyncio.sleep(error.retry_after or RUN_COMMAND_BUSY_PAUSE)


def _section(output: str, heading: str) -> str:
    text = output.split(heading, 1)[1] if heading in output else ""
    lines = [ln.strip(" \t-") for ln in text.splitlines() if ln.strip(" \t-[]")]
    return "; ".join(lines)[:300]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
