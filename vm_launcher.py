"""vm_launcher: create Azure VMs from NATS requests (`serve`) or one by hand (`launch`).

Exit codes: 0 ready (or a worker stopped gracefully), 1 failed, 2 bad input,
3 could not run (e.g. `serve` with NATS unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

import cliopts
import customdata
import manual_launch
import worker
from natsconn import ACK_WAIT, NatsSettings
from typedfields import FieldErrors
from vmspec import VMSpec, spec_problems

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
EXIT_READY, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANNOT_RUN = 0, 1, 2, 3


nats_options = cliopts.nats_options(
    default_url=DEFAULT_NATS_URL, url_help="NATS server URL(s), comma-separated. [env: NATS_URL]")


def local_options(command: F) -> F:
    """--az, --ssh-private-key, -v: shared by every command."""
    return cliopts.apply_options(command, [
        click.option("--az", "az_path", envvar="AZ_CLI", default="az", show_default=True,
                     help="The az executable. [env: AZ_CLI]"),
        click.option("--ssh-private-key", type=click.Path(exists=True, dir_okay=False),
                     help="Private key for the SSH checks (never leaves this machine)."),
        click.option("-v", "--verbose", count=True, help="More log detail (repeatable)."),
    ])


def _required(settings: NatsSettings | None) -> NatsSettings:
    if settings is None:
        raise click.BadParameter("no NATS server URL given", param_hint="--nats-url")
    return settings


def _logging(verbose: int, *, quiet: bool) -> None:
    levels = [logging.WARNING, logging.INFO, logging.DEBUG] if quiet else [
        logging.INFO, logging.DEBUG]
    logging.basicConfig(level=levels[min(verbose, len(levels) - 1)], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Create and verify Azure VMs: as a NATS worker (serve) or one VM by hand (launch).

    Exit codes: 0 ready, 1 failed, 2 bad input, 3 could not run.
    """


@cli.command()
@nats_options
@local_options
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="VMs this worker creates at once (each az is a ~100 MB process).")
@click.option("--worker-id", default=None, help="Name in events and stats. [default: host-pid]")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds a stop waits for work in flight before releasing it.")
@click.option("--max-deliveries", type=click.IntRange(min=1), default=5, show_default=True,
              help="Deliveries of one request before it goes to vm.create.deadletter.")
@click.option("--ack-wait", type=click.FloatRange(min=1), default=ACK_WAIT, show_default=True,
              help="AckWait in seconds of the shared consumer, applied only if this worker "
                   "creates it (an existing consumer keeps its own); a busy worker sends "
                   "heartbeats every third of it. Tests shorten it.")
def serve(nats_url: str, nats_creds: str | None, tls_ca: str | None, tls_cert: str | None,
          tls_key: str | None, nats_connect_timeout: float, az_path: str,
          ssh_private_key: str | None, verbose: int, concurrency: int, worker_id: str | None,
          grace: float, max_deliveries: int, ack_wait: float) -> None:
    """Take vm.create.request messages from NATS and create the VMs (worker mode).

    All workers share one durable consumer, so N workers on M machines split the work.
    A request is acknowledged only when finished; if this worker dies, another takes it
    over after AckWait. SIGTERM/SIGINT stop gracefully: nothing more is fetched, work in
    flight gets --grace seconds (a second signal ends them at once), the rest is released
    for other workers (its az processes are killed). Logs go to
    stderr, one line per request transition; `nats micro stats vm-launcher` shows every
    worker's counts.
    """
    _logging(verbose, quiet=False)
    worker_id = worker_id or worker.default_worker_id()
    params = click.get_current_context().params
    settings = worker.WorkerSettings(
        nats=_required(cliopts.nats_settings(params, name=f"vm-launcher-{worker_id}")),
        worker_id=worker_id, az=az_path, concurrency=concurrency,
        ssh_private_key=ssh_private_key, grace=grace, max_deliveries=max_deliveries,
        ack_wait=ack_wait)
    customdata.prepare()  # sweeps what a SIGKILLed process left
    sys.exit(asyncio.run(worker.serve(settings)))


@cli.command()
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="YAML mapping of VM spec fields (names as below, with underscores); "
                   "options given on the command line override it. Relative file paths "
                   "in it are relative to the file.")
@cliopts.spec_options()
@click.option("--deployment-id", help="Deployment the events belong to. [default: manual-NAME]")
@click.option("--json", "json_lines", is_flag=True,
              help="Print each event as a JSON line (the encoded message) instead of text.")
@click.option("--state-file", type=click.Path(dir_okay=False),
              help="deployment-state.yaml to keep up to date (created when absent; "
                   "malformed: exit 2, not writable: exit 3, both before any az call).")
@click.option("--events-file", type=click.Path(dir_okay=False),
              help="deployment-events.yaml to append to. [default: beside --state-file]")
@click.option("--no-nats", is_flag=True, help="Do not try to publish the events to NATS.")
@nats_options
@local_options
def launch(spec_file: str | None, deployment_id: str | None, json_lines: bool,
           state_file: str | None, events_file: str | None, no_nats: bool, nats_url: str,
           nats_creds: str | None, tls_ca: str | None, tls_cert: str | None,
           tls_key: str | None, nats_connect_timeout: float, az_path: str,
           ssh_private_key: str | None, verbose: int, **spec_params: Any) -> None:
    """Create and verify one VM in the foreground, without an orchestrator.

    Every VM spec field is an option (or comes from --spec). The spec is checked first:
    every problem is listed and nothing is launched (exit 2). Then the same pipeline as
    the worker runs, printing one line per event; the events also go to NATS when it
    answers (one warning when it does not). Exit 0 when the VM is ready, 1 when it failed.
    """
    _logging(verbose, quiet=True)
    spec, problems = _spec(spec_file, spec_params)
    if spec is None or problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if shutil.which(az_path) is None:
        click.echo(f"error: the az executable {az_path!r} was not found", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    nats = None if no_nats else cliopts.nats_settings(
        locals(), name=f"vm-launcher-manual-{spec.name}")
    try:
        code = asyncio.run(manual_launch.launch(
            spec, deployment_id=deployment_id or f"manual-{spec.name}", az=az_path,
            private_key=ssh_private_key, nats=nats, json_lines=json_lines,
            state_file=state_file, events_file=events_file))
    except KeyboardInterrupt:
        click.echo("interrupted; the az processes were stopped", err=True)
        code = EXIT_FAILED
    sys.exit(code)


def _spec(spec_file: str | None, params: dict[str, Any]) -> tuple[VMSpec | None, list[str]]:
    """The spec from the file and the options, and every problem with it."""
    data, problems = cliopts.load_spec_file(spec_file) if spec_file else ({}, [])
    data.update(cliopts.spec_values(params))
    try:
        spec = VMSpec.from_dict(data, where="spec")
    except FieldErrors as exc:
        return None, problems + exc.problems
    return spec, problems + spec_problems(spec, files_are_paths=True)


if __name__ == "__main__":
    cli()
