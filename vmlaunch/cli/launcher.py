"""vm_launcher: create Azure VMs from NATS requests (`serve`) or one by hand (`launch`).

Exit codes: 0 ready (or a worker stopped gracefully), 1 failed, 2 bad input,
3 could not run (e.g. `serve` with NATS unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vmlaunch.azure.writebudget import Window
from vmlaunch.bus.connection import ACK_WAIT, NatsSettings
from vmlaunch.cli import natsoptions
from vmlaunch.cli import options as cliopts
from vmlaunch.cli.specoptions import spec_options, spec_values
from vmlaunch.commands import launch as manual_launch
from vmlaunch.errors import ExitCode
from vmlaunch.host import azslots, customdata
from vmlaunch.lifecycle.tracked import FOLLOWED_AT_ONCE
from vmlaunch.plans.planfile import read_spec_file
from vmlaunch.schema.speccheck import allow_list_problems, deployment_id_problem
from vmlaunch.schema.typedfields import FieldErrors
from vmlaunch.schema.vmspec import VMSpec, spec_problems
from vmlaunch.worker import process as workerproc
from vmlaunch.worker import settings as workersettings

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


nats_options = natsoptions.nats_options(
    default_url=DEFAULT_NATS_URL, replicas=True, manage_streams=True,
    url_help="NATS server URL(s), comma-separated; may carry user:password@ (never shown).")


def local_options(command: F) -> F:
    """--az, --max-az-processes, --ssh-private-key, --adopt-untagged, -v: shared by every
    command."""
    return cliopts.apply_options(command, [
        cliopts.az_option(default="az"),
        cliopts.max_az_processes_option(),
        cliopts.ssh_private_key_option(
            "Private key for the SSH checks (never leaves this machine)."),
        cliopts.adopt_untagged_option("A VM tagged for another deployment always fails; no "
                                      "request can grant this."),
        cliopts.verbose_option("More log detail (repeatable)."),
    ])


def _required(settings: NatsSettings | None) -> NatsSettings:
    if settings is None:
        raise click.BadParameter("no NATS server URL given", param_hint="--nats-url")
    return settings


def _allowed_flags(ctx: click.Context, param: click.Parameter,
                   values: tuple[str, ...]) -> tuple[str, ...]:
    """`--allow-extra-arg accelerated-networking` means the flag --accelerated-networking."""
    flags = tuple(v if v.startswith("-") else f"--{v}" for v in values)
    problems = allow_list_problems(flags)
    if problems:
        raise click.BadParameter("; ".join(problems), ctx, param)
    return flags


@click.group(cls=cliopts.Group, context_settings=cliopts.CONTEXT)
def cli() -> None:
    """Create and verify Azure VMs: as a NATS worker (serve) or one VM by hand (launch).

    Exit codes: 0 ready, 1 failed, 2 bad input, 3 could not run. Every option can also be
    set in the environment: VMLAUNCH_ and its name (--worker-id is VMLAUNCH_WORKER_ID).
    """


@cli.command()
@nats_options
@local_options
@click.option("--concurrency", type=click.IntRange(min=1), default=FOLLOWED_AT_ONCE,
              show_default=True,
              help="Requests this worker handles at once. A VM in flight holds no process "
                   "(a create's az process lives only for the submit; every VM is followed "
                   "by one shared listing), so this bounds memory, not az processes "
                   "(--max-az-processes) or writes (--write-budget).")
@cliopts.run_command_concurrency_option("Per worker.")
@cliopts.track_interval_option()
@click.option("--worker-id", default=None, help="Name in events and stats. [default: host-pid]")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds a stop waits for work in flight before releasing it.")
@click.option("--max-deliveries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Failed deliveries of one request before it goes to vm.create.deadletter "
                   "(a delivery released by a graceful stop does not count).")
@click.option("--ack-wait", type=click.FloatRange(min=1), default=ACK_WAIT, show_default=True,
              help="AckWait in seconds of the shared consumer, applied only if this worker "
                   "creates it (an existing consumer keeps its own); a busy worker sends "
                   "heartbeats every third of it. Tests shorten it.")
@click.option("--allow-extra-arg", "allow_extra_args", multiple=True, metavar="FLAG",
              callback=_allowed_flags,
              help="A flag that requests may pass to az vm create in extra_args, e.g. "
                   "--allow-extra-arg=--accelerated-networking (repeatable). A request "
                   "using any other flag fails (InvalidRequest) without an az call.")
@cliopts.write_budget_option("Shared by every worker on this NATS (KV bucket VM_PACING); "
                             "give them all the same.")
def serve(az_path: str, max_az_processes: int, ssh_private_key: str | None,
          adopt_untagged: bool, verbose: int, concurrency: int, run_command_concurrency: int,
          track_interval: float, worker_id: str | None, grace: float, max_deliveries: int,
          ack_wait: float, allow_extra_args: tuple[str, ...], write_budget: tuple[Window, ...],
          **nats_params: Any) -> int:
    """Take vm.create.request messages from NATS and create the VMs (worker mode).

    All workers share one durable consumer, so N workers on M machines split the work.
    A request is acknowledged only when finished; if this worker dies, another takes it
    over after AckWait. SIGTERM/SIGINT/SIGHUP stop gracefully: nothing more is fetched,
    work in flight gets --grace seconds (a second signal ends them at once), the rest is
    released for other workers (its az processes are killed). A request that cannot be
    read is dead-lettered at once. A lost consumer is recreated; exit 3 if that fails.
    Creates keep inside --write-budget together with every other worker on this NATS, and
    a throttled create holds all of them back for its retry-after.
    Logs go to stderr, one line per request transition; `nats micro stats vm-launcher`
    shows every worker's counts. Exit 3 when NATS cannot be used: unreachable,
    credentials rejected, TLS failed, or (--no-manage-streams) a stream missing.
    """
    cliopts.setup_logging(verbose, level=logging.INFO)
    worker_id = worker_id or workersettings.default_worker_id()
    settings = workersettings.WorkerSettings(
        nats=_required(natsoptions.nats_settings(nats_params, name=f"vm-launcher-{worker_id}")),
        worker_id=worker_id, az=az_path, concurrency=concurrency,
        ssh_private_key=ssh_private_key, grace=grace, max_deliveries=max_deliveries,
        ack_wait=ack_wait, track_interval=track_interval, adopt_untagged=adopt_untagged,
        allow_extra_args=allow_extra_args, write_budget=write_budget)
    customdata.prepare()  # sweeps what a SIGKILLed process left
    azslots.configure(max_az_processes)
    return asyncio.run(workerproc.serve(settings, run_commands=run_command_concurrency))


@cli.command()
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE",
              help="YAML mapping of VM spec fields (names as below, with underscores); "
                   "options given on the command line override it. Relative file paths "
                   "in it are relative to the file.")
@spec_options()
@click.option("--deployment-id", help="Deployment the events belong to. [default: manual-NAME]")
@click.option("--json", "json_lines", is_flag=True,
              help="Print each event as a JSON line (the encoded message) instead of text.")
@cliopts.state_file_option("deployment-state.yaml to keep up to date (created when absent; "
                           "malformed or another deployment's: exit 2, not writable: exit 3, "
                           "both before any az call).")
@cliopts.events_file_option("The events log to append to.")
@click.option("--no-nats", is_flag=True, help="Do not try to publish the events to NATS.")
@nats_options
@local_options
@cliopts.write_budget_option("Counts this launch's creates only.")
def launch(spec_file: Path | None, deployment_id: str | None, json_lines: bool,
           no_nats: bool, az_path: str, max_az_processes: int, ssh_private_key: str | None,
           adopt_untagged: bool, verbose: int, write_budget: tuple[Window, ...],
           **params: Any) -> int:
    """Create and verify one VM in the foreground, without an orchestrator.

    Every VM spec field is an option (or comes from --spec). The spec is checked first:
    every problem is listed and nothing is launched (exit 2). Then the same pipeline as
    the worker runs, printing one line per event; the events also go to NATS when it
    answers (one warning when it does not). Exit 0 when the VM is ready, 1 when it failed,
    3 when NATS rejects the credentials or TLS fails (nothing launched).
    """
    cliopts.setup_logging(verbose, level=logging.WARNING)
    spec, problems = _spec(spec_file, params)
    if deployment_id is not None and (why := deployment_id_problem(deployment_id)):
        problems.append(why)
    if spec is None or problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        return ExitCode.BAD_INPUT
    if shutil.which(az_path) is None:
        click.echo(f"error: the az executable {az_path!r} was not found", err=True)
        return ExitCode.CANNOT_RUN
    nats = None if no_nats else natsoptions.nats_settings(
        params, name=f"vm-launcher-manual-{spec.name}")
    azslots.configure(max_az_processes)
    try:
        code = asyncio.run(manual_launch.launch(
            spec, deployment_id=deployment_id or f"manual-{spec.name}", az=az_path,
            private_key=ssh_private_key, nats=nats, json_lines=json_lines,
            files=cliopts.state_files(params), adopt_untagged=adopt_untagged,
            write_budget=write_budget))
    except KeyboardInterrupt:
        click.echo("interrupted; the az processes were stopped", err=True)
        code = ExitCode.FAILED
    return code


def _spec(spec_file: Path | None, params: dict[str, Any]) -> tuple[VMSpec | None, list[str]]:
    """The spec from the file and the options, and every problem with it."""
    data, problems = read_spec_file(spec_file) if spec_file else ({}, [])
    data.update(spec_values(params))
    try:
        spec = VMSpec.from_dict(data, where="spec")
    except FieldErrors as exc:
        return None, problems + exc.problems
    return spec, problems + spec_problems(spec, files_are_paths=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
