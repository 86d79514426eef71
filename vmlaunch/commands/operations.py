"""The orchestrator's other commands: `status`, `reset` and `events`.

`status` reads the state file (and with `--live` asks Azure once and the workers through
their micro-service stats); `reset` deletes the plan's VMs and their public IPs in
parallel and records it; `events` prints the audit trail from the events stream, from a
NATS URL, or from the embedded server's store under the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from nats.aio.client import Client

from vmlaunch.azure.azcli import AzCli
from vmlaunch.azure.look import look, refusal
from vmlaunch.bus.auth import write_embedded_auth
from vmlaunch.bus.connection import NatsSettings, NatsUnavailable, close_quietly, connect
from vmlaunch.bus.embedded import EmbeddedNats, embedded_client
from vmlaunch.bus.feed import EventFeed
from vmlaunch.bus.publish import NATS_ERRORS, describe
from vmlaunch.bus.streams import StreamMismatch, prepare_streams
from vmlaunch.display.views import format_table, terminal_safe
from vmlaunch.errors import ExitCode
from vmlaunch.host import atomicfile
from vmlaunch.host.stopsignals import on_stop_signals
from vmlaunch.plans.plan import Plan
from vmlaunch.schema.messages import Message, encode
from vmlaunch.schema.speccheck import field_problem, show
from vmlaunch.state.reducer import DELETED, DELETING
from vmlaunch.state.statefile import LoadedState, StateFileError, load_state
from vmlaunch.state.writer import StateWriter, WriteFailed

STATS_SUBJECT = "$SRV.STATS.vm-launcher"
STATS_WAIT = 0.5
RESET_TIMEOUT = 300.0  # the legacy reset waits up to 5 minutes
RESET_CONCURRENCY = 10


def _print(text: str = "") -> None:
    print(terminal_safe(text), flush=True)


def _err(text: str) -> None:
    print(terminal_safe(text, lines=True), file=sys.stderr, flush=True)


# --- status -----------------------------------------------------------------------------------

def _load(state_file: Path, events_file: Path, *, writable: bool = False,
          deployment_id: str | None = None) -> LoadedState | int:
    """Both files checked, or the exit code (after saying why): 2 malformed or another
    deployment's, 3 unusable."""
    try:
        loaded = load_state(state_file, events_file, writable=writable,
                            deployment_id=deployment_id)
    except StateFileError as exc:
        _err(f"error: {exc}")
        return ExitCode.BAD_INPUT
    except OSError as exc:
        _err(f"error: cannot use the state files: {exc}")
        return ExitCode.CANNOT_RUN
    if loaded.rebuilt:
        _err(f"warning: {loaded.rebuilt}")
    return loaded


async def status(*, state_file: Path, events_file: Path, json_out: bool, live: bool,
                 resource_group: str | None, az: str | None, nats: NatsSettings | None) -> int:
    if isinstance(loaded := _load(state_file, events_file), int):
        return loaded
    state = loaded.data
    if not state:
        _err(f"error: no state file at {state_file}")
        return ExitCode.CANNOT_RUN
    vms: dict[str, Any] = state.get("vm_states") or {}
    group = resource_group or (state.get("config") or {}).get("resource_group")
    azure: dict[str, dict[str, Any]] | None = None
    workers: list[dict[str, Any]] | None = None
    if live:
        if not group:
            _err("error: --live needs --resource-group (the state file names none)")
            return ExitCode.BAD_INPUT
        if (why := field_problem("resource_group", str(group))) is not None:
            _err(f"error: resource group {show(str(group))} {why}")  # it goes to az's argv
            return ExitCode.BAD_INPUT
        azure = await _azure_view(AzCli(az), group)
        store = state_file.parent / "nats"
        if nats is None and (url := running_embedded_url(store)):  # a deploy running
            nats = _embedded_client(url, store, name="vm-launch-status")
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


def _print_state(state: dict[str, Any], vms: dict[str, Any],
                 azure: dict[str, dict[str, Any]] | None) -> None:
    _print(f"deployment {state.get('deployment_id')}  phase {state.get('phase')}  "
           f"updated {state.get('last_updated')}")
    header = ("VM", "STATE", "PUBLIC IP", "PRIVATE IP", "ATTEMPT", "LAST CHECKED", "ERROR")
    rows = [[name, e.get("state", ""), e.get("public_ip") or "-", e.get("private_ip") or "-",
             str(e.get("attempt", "-")), e.get("last_checked", ""), e.get("last_error") or ""]
            for name, e in vms.items() if isinstance(e, dict)]
    if azure is not None:
        header += ("AZURE",)
        rows = [[*r, azure.get(r[0], {}).get("provisioningState", "absent")] for r in rows]
    for line in format_table(rows, header=header):
        _print(line)


async def _azure_view(az: AzCli, group: str) -> dict[str, dict[str, Any]]:
    result = await az.list_vms(group)
    if not result.ok or not isinstance(result.data, list):
        _err(f"warning: az vm list failed: {result.error.message if result.error else '?'}")
        return {}
    return {vm["name"]: vm for vm in result.data if isinstance(vm, dict) and "name" in vm}


async def _worker_stats(settings: NatsSettings) -> list[dict[str, Any]] | None:
    """Every vm-launcher's micro-service stats (one request, answers for STATS_WAIT s)."""
    try:
        nc = await connect(settings)
    except NatsUnavailable as exc:  # its message names the URL without its secret
        _err(f"warning: {exc}; no worker stats")
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
        _print("workers: no NATS URL given (--nats-url) and no deploy running; not asked")
        return
    if not workers:
        _print("workers: none answered")
        return
    rows = []
    for answer in workers:
        data = next((e.get("data") for e in answer.get("endpoints", []) if e.get("data")), {})
        rows.append([str(data.get("worker_id") or answer.get("id")),
                     *(str(data.get(k, "-")) for k in ("in_flight", "completed", "failed",
                                                       "cancelled"))])
    for line in format_table(rows, header=("WORKER", "IN FLIGHT", "COMPLETED", "FAILED",
                                           "CANCELLED")):
        _print(line)


# --- reset ------------------------------------------------------------------------------------

async def reset(plan: Plan, *, az: str | None, state_file: Path, events_file: Path) -> int:
    """Delete the plan's VMs (NIC and disk go with them) and their public IPs, in parallel.

    0 when every VM is gone, 1 otherwise; 2 or 3 (before any delete) when the state files
    are malformed or cannot be written, or a live deploy uses them (3); 3 when they stop
    being writable."""
    if isinstance(code := _load(state_file, events_file, writable=True,
                                deployment_id=plan.deployment_id), int):
        return code
    try:
        with atomicfile.run_lock(state_file):  # not while a deploy drives these VMs
            return await _reset(plan, az=az, state_file=state_file, events_file=events_file)
    except (WriteFailed, atomicfile.InUse) as exc:
        _err(f"error: {exc}")
        return ExitCode.CANNOT_RUN


async def _reset(plan: Plan, *, az: str | None, state_file: Path, events_file: Path) -> int:
    cli = AzCli(az)
    limit = asyncio.Semaphore(RESET_CONCURRENCY)
    async with StateWriter(state_file, events_file, deployment_id=plan.deployment_id) as writer:

        async def delete(name: str) -> bool:
            async with limit:
                return await _reset_one(cli, writer, plan, name)

        results = await asyncio.gather(*(delete(vm.name) for vm in plan.vms))
        left = await _azure_view(cli, plan.resource_group)
        still = [vm.name for vm in plan.vms if vm.name in left]
        writer.append_event("vm_reset_complete", f"Reset: {sum(results)} of {len(plan.vms)} "
                            "VMs deleted" + (f"; still present: {', '.join(still)}"
                                             if still else ""))
    return ExitCode.OK if all(results) and not still else ExitCode.FAILED


async def _reset_one(cli: AzCli, writer: StateWriter, plan: Plan, name: str) -> bool:
    """Delete one VM of the plan, only when a read says it is gone or this deployment's."""
    if (why := await _not_ours_to_delete(cli, plan, name)) is not None:
        writer.record(name, {"last_error": f"reset: left in place: {why}"},
                      [("vm_reset_failed", f"Not deleting VM: {name}: {why}")])
        _err(f"error: not deleting {name}: {why}")
        return False
    writer.record(name, {"state": DELETING},
                  [("vm_reset_deletion", f"Deleting VM: {name} (reset)")])
    _print(f"deleting {name}")
    gone = await cli.delete_vm(plan.resource_group, name, timeout=RESET_TIMEOUT)
    if gone.ok:
        await cli.delete_public_ip(plan.resource_group, name)
        writer.record(name, {"state": DELETED, "public_ip": "", "private_ip": "",
                             "verified": False},
                      [("vm_reset_deleted", f"Deleted VM: {name} (reset)")])
        _print(f"deleted {name}")
        return True
    error = gone.error.message if gone.error else "unknown error"
    writer.record(name, {"last_error": f"reset: {error}"},
                  [("vm_reset_failed", f"Could not delete VM: {name}: {error}")])
    _err(f"error: could not delete {name}: {error}")
    return False


async def _not_ours_to_delete(cli: AzCli, plan: Plan, name: str) -> str | None:
    """Why reset must leave the VM alone: its state could not be read (azure-cli.md §6), or
    it lacks this deployment's tag. None when it is absent or ours."""
    seen = await look(cli, plan.spec(name), time.monotonic() + RESET_TIMEOUT)
    if seen.error is not None:
        return f"its state could not be read ({seen.error.code}: {seen.error.message})"
    if seen.absent:
        return None
    refused = refusal(seen.data, deployment_id=plan.deployment_id, adopt_untagged=False,
                      delete=True)
    return refused.message if refused else None


# --- events -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str) -> datetime:
    """`90s`, `10m`, `2h`, `1d` ago, or an ISO-8601 time (UTC unless it says otherwise)."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    when = datetime.fromisoformat(text.strip())
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def running_embedded_url(store: Path) -> str | None:
    """The URL of a live embedded server on this store (a deploy in progress), if any."""
    for ports in (store / "ports").glob("*.ports"):
        pid = ports.stem.rsplit("_", 1)[-1]
        with contextlib.suppress(ValueError, OSError, KeyError, IndexError, psutil.Error):
            if psutil.Process(int(pid)).name().startswith("nats-server"):
                return json.loads(ports.read_text())["nats"][0]
    return None


def event_line(message: Message) -> str:
    label, detail = describe(message)
    attempt = f" [attempt {message.attempt}]" if message.attempt else ""
    return (f"{message.time} {message.deployment_id}/{message.vm_name or '-'} {label:<10} "
            f"{detail}{attempt} ({message.source or '?'})")


async def _embedded_settings(stack: contextlib.AsyncExitStack,
                             store: Path) -> NatsSettings | None:
    """The running deploy's embedded server, else one started on its store, else None."""
    url = running_embedded_url(store)
    if url is None:
        if not (store / "jetstream").is_dir():
            return None
        config, _ = write_embedded_auth(store)  # a fresh secret for our own server
        url = (await stack.enter_async_context(EmbeddedNats(store, config=config))).url
    return _embedded_client(url, store, name="vm-launch-events")


def _embedded_client(url: str, store: Path, *, name: str) -> NatsSettings | None:
    """Settings for the embedded server with the secret from its 0600 file (None, with a
    message, when this user cannot read it: it belongs to another user's deploy)."""
    try:
        return embedded_client(url, store, name=name)
    except OSError as exc:
        _err(f"error: cannot read the embedded server's secret: {exc}")
        return None


async def events(*, nats: NatsSettings | None, store: Path, deployment_id: str | None,
                 vms: tuple[str, ...], since: datetime | None, follow: bool,
                 json_out: bool) -> int:
    """Print the audit trail; without `follow`, stop once caught up."""
    async with contextlib.AsyncExitStack() as stack:
        nats = nats or await _embedded_settings(stack, store)
        if nats is None:
            _err(f"error: no --nats-url and no embedded store at {store}")
            return ExitCode.CANNOT_RUN
        try:
            nc: Client = await connect(nats)
            stack.push_async_callback(close_quietly, nc)
            await prepare_streams(nc.jetstream(), nats)
        except (NatsUnavailable, StreamMismatch) as exc:
            _err(f"error: {exc}")
            return ExitCode.CANNOT_RUN

        async def show(message: Message) -> None:
            if not vms or message.vm_name in vms:
                if json_out:
                    print(encode(message).decode(), flush=True)
                else:
                    _print(event_line(message))

        feed = EventFeed(nc.jetstream(), show, start=since, deployment_id=deployment_id)
        stop = asyncio.Event()
        reader = asyncio.create_task(feed.run())
        waiter = asyncio.create_task(stop.wait() if follow else feed.caught_up.wait())
        with on_stop_signals(lambda _: stop.set()):
            try:
                await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                await feed.stop(reader)
    return ExitCode.OK
