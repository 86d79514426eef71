"""`status`: the deployment as the state file has it; with `--live` also Azure (one
`az vm list -d`) and the workers (their micro-service stats); with `--rebuild` the state
file's `vm_states` rebuilt from the events log first."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from vmlaunch.azure.azcli import AzCli
from vmlaunch.bus.connection import NatsSettings, NatsUnavailable, connect
from vmlaunch.bus.publish import NATS_ERRORS
from vmlaunch.commands.common import err, load_files, say
from vmlaunch.commands.events import embedded_client_settings, running_embedded_url
from vmlaunch.display.views import format_table
from vmlaunch.errors import ExitCode
from vmlaunch.host import atomicfile
from vmlaunch.schema.speccheck import field_problem, show
from vmlaunch.state import statefile

STATS_SUBJECT = "$SRV.STATS.vm-launcher"
STATS_WAIT = 0.5


async def status(*, state_file: Path, events_file: Path, json_out: bool, live: bool,
                 resource_group: str | None, az: str | None, nats: NatsSettings | None,
                 rebuild: bool = False) -> int:
    """Show the state file (rebuilt from the events log first with `rebuild`); 0, or 2 for
    a malformed file, 3 for a missing one."""
    if rebuild and (code := _rebuild(state_file, events_file)):
        return code
    if isinstance(loaded := load_files(state_file, events_file), int):
        return loaded
    state = loaded.data
    if not state:
        err(f"error: no state file at {state_file}")
        return ExitCode.CANNOT_RUN
    vms: dict[str, Any] = state.get("vm_states") or {}
    group = resource_group or (state.get("config") or {}).get("resource_group")
    azure: dict[str, dict[str, Any]] | None = None
    workers: list[dict[str, Any]] | None = None
    if live:
        if not group:
            err("error: --live needs --resource-group (the state file names none)")
            return ExitCode.BAD_INPUT
        if (why := field_problem("resource_group", str(group))) is not None:
            err(f"error: resource group {show(str(group))} {why}")  # it goes to az's argv
            return ExitCode.BAD_INPUT
        azure = await azure_view(AzCli(az), group)
        store = state_file.parent / "nats"
        if nats is None and (url := running_embedded_url(store)):  # a deploy running
            nats = embedded_client_settings(url, store, name="vm-launch-status")
        workers = await _worker_stats(nats) if nats else None
    if json_out:
        print(json.dumps({"deployment_id": state.get("deployment_id"), "phase":
                           state.get("phase"), "last_updated": state.get("last_updated"),
                           "vm_states": vms, "azure": azure, "workers": workers}, indent=2,
                          default=str), flush=True)
        return ExitCode.OK
    _print_state(state, vms, azure)
    if live:
        _print_workers(workers, nats)
    return ExitCode.OK


def _rebuild(state_file: Path, events_file: Path) -> int:
    """`vm_states` rebuilt from the events log; 0, or the exit code (said why)."""
    try:
        with atomicfile.run_lock(state_file):  # not while a deploy (or reset) writes it
            count = statefile.rebuild(state_file, events_file)
    except statefile.StateFileError as exc:
        err(f"error: {exc}")
        return ExitCode.BAD_INPUT
    except OSError as exc:  # no events log, an unwritable file, a live run (InUse)
        err(f"error: cannot rebuild {state_file}: {exc}")
        return ExitCode.CANNOT_RUN
    err(f"rebuilt vm_states of {count} VMs in {state_file} from {events_file}")
    return ExitCode.OK


def _print_state(state: dict[str, Any], vms: dict[str, Any],
                 azure: dict[str, dict[str, Any]] | None) -> None:
    say(f"deployment {state.get('deployment_id')}  phase {state.get('phase')}  "
           f"updated {state.get('last_updated')}")
    header = ("VM", "STATE", "PUBLIC IP", "PRIVATE IP", "ATTEMPT", "LAST CHECKED", "ERROR")
    rows = [[name, e.get("state", ""), e.get("public_ip") or "-", e.get("private_ip") or "-",
             str(e.get("attempt", "-")), e.get("last_checked", ""), e.get("last_error") or ""]
            for name, e in vms.items() if isinstance(e, dict)]
    if azure is not None:
        header += ("AZURE",)
        rows = [[*r, azure.get(r[0], {}).get("provisioningState", "absent")] for r in rows]
    for line in format_table(rows, header=header):
        say(line)


async def azure_view(az: AzCli, group: str) -> dict[str, dict[str, Any]]:
    result = await az.list_vms(group)
    if not result.ok or not isinstance(result.data, list):
        err(f"warning: az vm list failed: {result.error.message if result.error else '?'}")
        return {}
    return {vm["name"]: vm for vm in result.data if isinstance(vm, dict) and "name" in vm}


async def _worker_stats(settings: NatsSettings) -> list[dict[str, Any]] | None:
    """Every vm-launcher's micro-service stats (one request, answers for STATS_WAIT s)."""
    try:
        nc = await connect(settings)
    except NatsUnavailable as exc:  # its message names the URL without its secret
        err(f"warning: {exc}; no worker stats")
        return None
    answers: list[dict[str, Any]] = []
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(STATS_SUBJECT, b"", reply=inbox)
        with contextlib.suppress(TimeoutError, *NATS_ERRORS):
            loop = asyncio.get_running_loop()
            end = loop.time() + STATS_WAIT
            while (left := end - loop.time()) > 0:
                msg = await sub.next_msg(timeout=left)
                with contextlib.suppress(ValueError):
                    answers.append(json.loads(msg.data))
    finally:
        await nc.close()
    return answers


def _print_workers(workers: list[dict[str, Any]] | None, nats: NatsSettings | None) -> None:
    if nats is None:
        say("workers: no NATS URL given (--nats-url) and no deploy running; not asked")
        return
    if not workers:
        say("workers: none answered")
        return
    rows = []
    for answer in workers:
        data = next((e.get("data") for e in answer.get("endpoints", []) if e.get("data")), {})
        rows.append([str(data.get("worker_id") or answer.get("id")),
                     *(str(data.get(k, "-")) for k in ("in_flight", "completed", "failed",
                                                       "cancelled"))])
    for line in format_table(rows, header=("WORKER", "IN FLIGHT", "COMPLETED", "FAILED",
                                           "CANCELLED")):
        say(line)


