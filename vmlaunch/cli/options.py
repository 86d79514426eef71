"""What both command-line interfaces share: their group class and the options they both use.

`Group` gives every option of its commands an environment variable, `VMLAUNCH_<OPTION>`
(`--state-file` is VMLAUNCH_STATE_FILE; the older names such as NATS_URL and AZ_CLI still
work after it), shown in `--help`, and turns a command's result, or the `VmLaunchError` it
raised, into the exit status: the one place an error becomes an exit code.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from vmlaunch.azure.verify import DEFAULT_RUN_COMMAND_CONCURRENCY
from vmlaunch.azure.writebudget import DEFAULT_WINDOWS, Window, parse_windows
from vmlaunch.errors import ExitCode, VmLaunchError
from vmlaunch.host import azslots
from vmlaunch.lifecycle.tracked import TRACK_INTERVAL

F = TypeVar("F", bound=Callable[..., Any])
ENV_PREFIX = "VMLAUNCH_"
EVENTS_FILE_NAME = "deployment-events.yaml"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def env_name(option: click.Option) -> str:
    """VMLAUNCH_ and the option's long name: `--worker-concurrency` is
    VMLAUNCH_WORKER_CONCURRENCY."""
    flag = next(opt for opt in option.opts if opt.startswith("--"))
    return ENV_PREFIX + flag[2:].upper().replace("-", "_")


def _with_env(option: click.Option) -> None:
    older = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
    option.envvar = [env_name(option), *older]
    option.show_envvar = True


class Group(click.Group):
    """A group whose commands' options come from the command line or the environment and
    whose commands return their exit code (or raise a VmLaunchError carrying it)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                _with_env(param)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            code = super().invoke(ctx)
        except VmLaunchError as exc:
            click.echo(f"error: {exc}", err=True)
            code = exc.exit_code
        ctx.exit(int(code or ExitCode.OK))


def apply_options(command: F, options: list[Callable[[F], F]]) -> F:
    """Decorate `command` with `options`, in the order they are listed in --help."""
    for option in reversed(options):
        command = option(command)
    return command


def az_option(*, default: str | None = None) -> Callable[[F], F]:
    return click.option("--az", "az_path", envvar="AZ_CLI", default=default,
                        show_default=default is not None, help="The az executable.")


def state_file_option(help: str, *, default: Path | None = None) -> Callable[[F], F]:
    return click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path),
                        default=default, show_default=default is not None, help=help)


def events_file_option(help: str) -> Callable[[F], F]:
    return click.option("--events-file", type=click.Path(dir_okay=False, path_type=Path),
                        help=f"{help} [default: {EVENTS_FILE_NAME} beside --state-file]")


def events_file(params: Mapping[str, Any]) -> Path:
    """--events-file, by default beside --state-file."""
    return params["events_file"] or params["state_file"].parent / EVENTS_FILE_NAME


def state_files(params: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """The state file and its events log; None without a state file."""
    return None if params["state_file"] is None else (params["state_file"], events_file(params))


def ssh_private_key_option(help: str) -> Callable[[F], F]:
    return click.option("--ssh-private-key", type=click.Path(exists=True, dir_okay=False),
                        help=help)


def adopt_untagged_option(help: str) -> Callable[[F], F]:
    return click.option("--adopt-untagged", is_flag=True,
                        help="Adopt (never delete) a VM of the name asked for that has no "
                             "vmlaunch-deployment tag; without it such a VM fails as NotOurs. "
                             f"{help}")


def _windows(ctx: click.Context, param: click.Parameter,
             values: tuple[str, ...]) -> tuple[Window, ...]:
    try:
        return parse_windows(values) if values else DEFAULT_WINDOWS
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def write_budget_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--write-budget", multiple=True, metavar="COUNT/SECONDS[,...]", callback=_windows,
        help="At most COUNT VM creates in any SECONDS long window (repeatable, or "
             "comma-separated: every window holds); a throttled create holds every "
             f"create back for its retry-after. {help} [default: "
             f"{','.join(map(str, DEFAULT_WINDOWS))}, Azure's PutVM budget]")


def run_command_concurrency_option(help: str) -> Callable[[F], F]:
    return click.option("--run-command-concurrency", type=click.IntRange(min=1),
                        default=DEFAULT_RUN_COMMAND_CONCURRENCY, show_default=True,
                        help="Cloud-init checks by run-command at once (each is an az process "
                             "of ~100 MB for 20 s or more), in a pool of their own apart from "
                             f"creates and listings; checks over ssh take no slot. {help}")

def max_az_processes_option(help: str = "") -> Callable[[F], F]:
    return click.option(
        "--max-az-processes", type=click.IntRange(min=1), default=azslots.DEFAULT_LIMIT,
        show_default=True,
        help="az processes at once on this machine (each ~100 MB), shared with every "
             "vmlaunch process of this user on it that uses the same number (slot files "
             f"in <tmp>/vmlaunch-<uid>/{azslots.SLOTS_DIR}). {help}".rstrip())


def track_interval_option(help: str = "") -> Callable[[F], F]:
    return click.option(
        "--track-interval", type=click.FloatRange(min=0, min_open=True),
        default=TRACK_INTERVAL, show_default=True,
        help="Seconds between two `az vm list -g RG` that follow every VM being created or "
             f"waited for in the group (creates are az vm create --no-wait). {help}".rstrip())


def verbose_option(help: str) -> Callable[[F], F]:
    return click.option("-v", "--verbose", count=True, help=help)


def setup_logging(verbose: int, *, level: int) -> None:
    """Logs on stderr at `level`, one step more detailed per -v (down to DEBUG)."""
    logging.basicConfig(level=max(logging.DEBUG, level - 10 * verbose), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
