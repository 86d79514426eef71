"""orchestrator: launch a plan of Azure VMs through NATS workers and keep the state file true.

`deploy` is the default command: `python orchestrator.py --legacy-poll` is
`python orchestrator.py deploy --legacy-poll`. Exit codes: 0 all VMs ready, 1 some VM
failed, 2 bad input (nothing launched, every problem listed), 3 could not run,
130 interrupted (run again to resume).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vmlaunch.bus.embedded import WorkerOptions
from vmlaunch.bus.streams import provision_streams
from vmlaunch.cli import natsoptions
from vmlaunch.cli import options as cliopts
from vmlaunch.cli.planoptions import POSITIVE, plan_from, plan_options
from vmlaunch.commands import events as events_command
from vmlaunch.commands import reset as reset_command
from vmlaunch.commands import status as status_command
from vmlaunch.display.views import format_table, make_display
from vmlaunch.errors import ExitCode
from vmlaunch.host import azslots
from vmlaunch.lifecycle.tracked import FOLLOWED_AT_ONCE
from vmlaunch.plans.plan import Plan
from vmlaunch.runner import deployment
from vmlaunch.schema.speccheck import extra_flags
from vmlaunch.state import statefile

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STATE_FILE = Path("state/deployment-state.yaml")


def file_options(command: F) -> F:
    return cliopts.apply_options(command, [
        cliopts.state_file_option("The deployment state file the bash scripts read.",
                                  default=DEFAULT_STATE_FILE),
        cliopts.events_file_option("The events log."),
    ])


nats_options = natsoptions.nats_options(
    default_url=None, replicas=True, manage_streams=True,
    url_help="NATS server URL(s), comma-separated; may carry user:password@ (never shown). "
             "[default for deploy: embedded mode]")


def _confirm(yes: bool) -> Callable[[str], bool] | None:
    """Ask only on a terminal; never wait for an answer without one."""
    if yes or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    return lambda question: click.confirm(question, default=False)


class DefaultGroup(cliopts.Group):
    """A group whose default command is `deploy` (options first means `deploy ...`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["deploy", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings=cliopts.CONTEXT)
def cli() -> None:
    """Launch a plan of Azure VMs in parallel and keep state/deployment-state.yaml true.

    The default command is deploy. Exit codes: 0 all VMs ready, 1 some VM failed,
    2 bad input (nothing launched), 3 could not run, 130 interrupted (rerun to resume).
    Every option can also be set in the environment: VMLAUNCH_ and its name
    (--state-file is VMLAUNCH_STATE_FILE).
    """


@cli.command()
@plan_options
@file_options
@nats_options
@cliopts.az_option()
@cliopts.max_az_processes_option("The orchestrator's own and, given to them, the embedded "
                                 "workers'.")
@cliopts.ssh_private_key_option(
    "Private key for the SSH checks (given to embedded workers; never sent). "
    "[default: the k0rdent key ./azure-resources/<id>-ssh-key if present]")
@click.option("--require-nats", is_flag=True,
              help="Exit 3 instead of falling back to legacy polling when NATS is missing.")
@click.option("--nats-grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds NATS may be lost mid-run before the rest is done by polling "
                   "(which creates or deletes nothing until the workers' leases, their "
                   "AckWait, have lapsed).")
@click.option("--legacy-poll", is_flag=True,
              help="No NATS: one az vm create --no-wait per VM, followed with az vm list "
                   "every --poll-interval (legacy mode).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Embedded mode: local workers (each one lists every group it follows).")
@click.option("--worker-concurrency", type=click.IntRange(min=1), help="Embedded mode: "
              "VMs in flight per worker (serve's --concurrency). [default: the worker's]")
@cliopts.track_interval_option("Given to the embedded workers (legacy mode: --poll-interval).")
@click.option("--concurrency", type=click.IntRange(min=1), default=FOLLOWED_AT_ONCE,
              show_default=True, help="Legacy mode: VMs in flight at once (a followed VM "
              "holds no process; az processes: --max-az-processes).")
@cliopts.run_command_concurrency_option("Per embedded worker, and for legacy mode.")
@cliopts.adopt_untagged_option("Given to the embedded workers and the legacy poller.")
@click.option("--poll-interval", type=POSITIVE,
              help="Legacy mode: seconds between polls. [default: the plan's, else 30]")
@cliopts.write_budget_option("Given to the embedded workers (who share it) and the legacy "
                             "poller; workers on an external NATS have their own.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "json_out", is_flag=True, help="Print every event as a JSON line.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and the summary.")
@cliopts.verbose_option("Every event as a line, plus logs on stderr (repeat for debug).")
def deploy(**params: Any) -> int:
    """Launch the plan's VMs and follow them until ready, failed, or the deadline.

    The plan is validated first (every problem listed; exit 2, nothing launched). With a
    NATS URL the requests go to the workers there; with none and a nats-server binary at
    hand, an embedded server and --workers local workers run for the duration (their
    store and logs in state/nats/). NATS unreachable: one warning, then legacy polling
    (unless --require-nats); credentials rejected or TLS failed: exit 3. A rerun with
    the same plan resumes: finished VMs are left alone, VMs in flight are picked up,
    nothing is created twice. SIGINT, SIGTERM and SIGHUP stop it in order (exit 130).

    The state and events files are checked before any az call: malformed, exit 2 (the
    file untouched); not writable, exit 3. A truncated state file is rebuilt from the
    events log. A state file that stops being writable mid-run stops the launch: exit 3.
    A state file another live deploy is using: exit 3 before anything is launched.
    """
    cliopts.setup_logging(params["verbose"], level=logging.WARNING)
    plan = plan_from(params)
    options = _deploy_options(params, plan)
    display = make_display(json_lines=params["json_out"], quiet=params["quiet"],
                           verbose=params["verbose"] > 0)
    azslots.configure(params["max_az_processes"])
    return asyncio.run(deployment.deploy(plan, options, display))


def _deploy_options(params: dict[str, Any], plan: Plan) -> deployment.DeployOptions:
    """`deploy`'s options as the runner takes them; the embedded workers get theirs."""
    key = params["ssh_private_key"] or (plan.ssh_private_key if plan.ssh_private_key and
                                        Path(plan.ssh_private_key).is_file() else None)
    return deployment.DeployOptions(
        state_file=params["state_file"], events_file=cliopts.events_file(params),
        az=params["az_path"], ssh_private_key=key, require_nats=params["require_nats"],
        nats=natsoptions.nats_settings(params, name="vm-launch-orchestrator"),
        legacy_poll=params["legacy_poll"], nats_grace=params["nats_grace"],
        workers=WorkerOptions(count=params["workers"], az=params["az_path"],
                              concurrency=params["worker_concurrency"], ssh_private_key=key,
                              run_command_concurrency=params["run_command_concurrency"],
                              track_interval=params["track_interval"],
                              max_az_processes=params["max_az_processes"],
                              adopt_untagged=params["adopt_untagged"],
                              allow_extra_args=extra_flags(plan.vms),
                              write_budget=params["write_budget"]),
        concurrency=params["concurrency"], adopt_untagged=params["adopt_untagged"],
        run_command_concurrency=params["run_command_concurrency"],
        poll_interval=params["poll_interval"], deadline=params["deadline"],
        confirm=_confirm(params["yes"]))


@cli.command("plan")
@plan_options
@click.option("--json", "json_out", is_flag=True, help="Print the plan as JSON.")
def plan_command(**params: Any) -> None:
    """Print the resolved plan (every default applied) without launching anything.

    Exit 2 with every problem listed when the plan is invalid. The location shows as
    "(resource group's)" when deploy would look it up.
    """
    plan = plan_from(params)
    if params["json_out"]:
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    click.echo(f"deployment {plan.deployment_id}  resource group {plan.resource_group}  "
               f"deadline {plan.deadline:g} s  ({plan.origin})")
    rows = [[vm.name, vm.zone or "-", vm.size, vm.location or "(resource group's)",
             vm.priority, vm.image, vm.custom_data or "-"] for vm in plan.vms]
    for line in format_table(rows, header=("VM", "ZONE", "SIZE", "LOCATION", "PRIORITY",
                                           "IMAGE", "CUSTOM DATA")):
        click.echo(line)


@cli.command()
@file_options
@nats_options
@click.option("--json", "json_out", is_flag=True, help="Print the status as JSON.")
@click.option("--live", is_flag=True,
              help="Also ask Azure (one az vm list -d) and the workers (micro stats).")
@click.option("-g", "--resource-group",
              help="Resource group for --live. [default: config.resource_group in the file]")
@cliopts.az_option()
@click.option("--rebuild", is_flag=True, help="First rewrite the state file's vm_states from "
              "the events log alone (e.g. a lost state file: made anew).")
def status(**params: Any) -> int:
    """Show the deployment as the state file has it.

    Exit 2 when the state or events file is malformed (named, with the problem), 3 when
    there is no state file (with --rebuild: no events log, or a deploy using the files). A
    truncated state file is shown as rebuilt from the events log.
    """
    return asyncio.run(status_command.status(
        state_file=params["state_file"], events_file=cliopts.events_file(params),
        json_out=params["json_out"], live=params["live"],
        resource_group=params["resource_group"], az=params["az_path"],
        nats=natsoptions.nats_settings(params, name="vm-launch-status"),
        rebuild=params["rebuild"]))


@cli.command()
@plan_options
@file_options
@cliopts.az_option()
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(**params: Any) -> int:
    """Delete the plan's VMs (with their NICs, disks and public IPs), in parallel.

    Only VMs tagged with this deployment are deleted: an untagged or another deployment's
    VM, or one whose state cannot be read, is left in place and named (exit 1). Writes
    Deleting and then Deleted to the state file and vm_reset_deletion events; a state file
    that is malformed or another deployment's is exit 2, one that cannot be written or
    that a live deploy is using exit 3, before any delete. Asks for confirmation unless
    --yes; without a terminal --yes is required.
    """
    plan = plan_from(params)
    question = f"Delete {len(plan.vms)} VMs in Azure (resource group {plan.resource_group})?"
    if not params["yes"]:
        if not sys.stdin.isatty():
            click.echo("error: reset deletes VMs; without a terminal give --yes", err=True)
            return ExitCode.BAD_INPUT
        if not click.confirm(question, default=False):
            return ExitCode.FAILED
    return asyncio.run(reset_command.reset(plan, az=params["az_path"],
                                           state_file=params["state_file"],
                                           events_file=cliopts.events_file(params)))


@cli.command()
@nats_options
@cliopts.state_file_option(
    "Its deployment id is the default filter; the embedded store is beside it.",
    default=DEFAULT_STATE_FILE)
@click.option("--deployment-id", help="Only this deployment. [default: the state file's]")
@click.option("--all-deployments", is_flag=True, help="Every deployment's events.")
@click.option("--vm", "vms", multiple=True, help="Only this VM (repeatable).")
@click.option("--since", help="From this long ago (90s, 10m, 2h, 1d) or this ISO time.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new events (Ctrl-C, SIGTERM or SIGHUP ends).")
@click.option("--json", "json_out", is_flag=True, help="Print each event as a JSON line.")
def events(**params: Any) -> int:
    """Print the audit trail from the events stream (7 days are kept).

    Without --nats-url it reads the embedded mode's store (state/nats/), through the
    running deploy's server if there is one.
    """
    try:
        since = events_command.parse_since(params["since"]) if params["since"] else None
    except ValueError:
        raise click.BadParameter("expected 90s, 10m, 2h, 1d or an ISO time",
                                 param_hint="--since") from None
    deployment_id = None if params["all_deployments"] else (
        params["deployment_id"] or _state_deployment(params["state_file"]))
    return asyncio.run(events_command.events(
        nats=natsoptions.nats_settings(params, name="vm-launch-events"),
        store=params["state_file"].parent / "nats",
        deployment_id=deployment_id, vms=params["vms"], since=since,
        follow=params["follow"], json_out=params["json_out"]))


@cli.command()
@nats_options
def streams(**params: Any) -> None:
    """As an admin: create the streams and the workers' consumer (exit 3 if impossible),
    for users that may not manage them and run with --no-manage-streams."""
    settings = natsoptions.nats_settings(params, name="vm-launch-admin")
    if settings is None:
        raise click.BadParameter("no NATS server URL given", param_hint="--nats-url")
    asyncio.run(provision_streams(settings))  # NatsUnavailable: exit 3
    click.echo(f"streams and the workers' consumer are ready (replicas {settings.replicas})")


def _state_deployment(state_file: Path) -> str | None:
    try:
        return statefile.read_state(state_file).get("deployment_id") or None
    except (statefile.StateFileError, OSError):
        return None


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
