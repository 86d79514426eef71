"""Options defined once: each also comes from VMLAUNCH_<OPTION>, named in --help; the one
place a VmLaunchError becomes an exit code; the embedded workers' `serve` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from vmlaunch.azure.writebudget import DEFAULT_WINDOWS, Window
from vmlaunch.bus.embedded import WorkerOptions, worker_argv, worker_env
from vmlaunch.cli import launcher, orchestrator
from vmlaunch.cli.options import Group
from vmlaunch.lifecycle.tracked import FOLLOWED_AT_ONCE
from vmlaunch.runner import deployment
from vmlaunch.state.statefile import StateFileError

BASE = ["--vm", "vm-1", "-g", "rg-1", "--image", "Debian12"]
CLIS = [(launcher.cli, name) for name in launcher.cli.commands] + [
    (orchestrator.cli, name) for name in orchestrator.cli.commands]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def fake_deploy(plan, options, display):
        seen.update(plan=plan, options=options)
        return 0

    monkeypatch.setattr(deployment, "deploy", fake_deploy)
    return seen


@pytest.mark.parametrize(("env", "check"), [
    ({"VMLAUNCH_STATE_FILE": "s/x.yaml"},
     lambda o: (o.state_file, o.events_file) == (Path("s/x.yaml"),
                                                 Path("s/deployment-events.yaml"))),
    ({"VMLAUNCH_WORKER_CONCURRENCY": "2", "VMLAUNCH_WORKERS": "3"},
     lambda o: (o.workers.concurrency, o.workers.count) == (2, 3)),
    ({"VMLAUNCH_AZ": "/bin/az", "AZ_CLI": "/opt/az"}, lambda o: o.az == "/bin/az"),
    ({"VMLAUNCH_ADOPT_UNTAGGED": "1"}, lambda o: o.adopt_untagged and o.workers.adopt_untagged),
    ({"VMLAUNCH_NATS_URL": "nats://a:1"}, lambda o: o.nats.servers == ["nats://a:1"]),
    ({"VMLAUNCH_TRACK_INTERVAL": "0.5", "VMLAUNCH_MAX_AZ_PROCESSES": "7"},
     lambda o: (o.workers.track_interval, o.workers.max_az_processes) == (0.5, 7)),
], ids=["state-file", "worker-concurrency", "az-before-AZ_CLI", "flag", "nats-url",
        "track-interval-and-az-limit"])
def test_an_option_given_only_by_its_variable_takes_effect(captured, env, check):
    result = CliRunner().invoke(orchestrator.cli, BASE, env={"NATS_URL": None, **env})
    assert result.exit_code == 0, result.output
    assert check(captured["options"])


def test_a_spec_field_given_only_by_its_variable_reaches_the_plan(captured):
    result = CliRunner().invoke(orchestrator.cli, ["--vm", "vm-1", "-g", "rg-1"],
                                env={"VMLAUNCH_IMAGE": "Debian12", "VMLAUNCH_ZONE": "2"})
    assert result.exit_code == 0, result.output
    assert (captured["plan"].vms[0].image, captured["plan"].vms[0].zone) == ("Debian12", "2")


def test_the_launcher_takes_its_options_from_the_environment_too():
    result = CliRunner().invoke(
        launcher.cli, ["launch", "-n", "vm-1", "-g", "rg-1", "--image", "Debian12",
                       "--no-nats"], env={"VMLAUNCH_AZ": "/nonexistent/az"})
    assert result.exit_code == 3
    assert "the az executable '/nonexistent/az' was not found" in result.output


@pytest.mark.parametrize(("group", "name"), CLIS, ids=[name for _, name in CLIS])
def test_the_help_of_every_command_names_each_option_s_variable(group, name):
    result = CliRunner().invoke(group, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    command = group.commands[name]
    flags = [next(o for o in p.opts if o.startswith("--")) for p in command.params
             if isinstance(p, click.Option) and p.name != "help"]
    missing = [flag for flag in flags
               if "VMLAUNCH_" + flag[2:].upper().replace("-", "_") not in result.output]
    assert not missing
    assert "NATS_URL" in result.output or "--nats-url" not in flags


def test_a_vmlaunch_error_exits_with_its_code_and_says_why(tmp_path):
    @click.group(cls=Group)
    def cli() -> None:
        pass

    @cli.command()
    def broken() -> None:
        raise StateFileError(tmp_path / "state.yaml", "not a mapping")

    @cli.command()
    def answer() -> int:
        return 130

    result = CliRunner().invoke(cli, ["broken"])
    assert (result.exit_code, result.output) == (2, f"error: Cannot use {tmp_path}/state.yaml: "
                                                    "not a mapping.\n")
    assert CliRunner().invoke(cli, ["answer"]).exit_code == 130


def test_the_workers_command_line_is_what_serve_parses():
    options = WorkerOptions(count=3, concurrency=2, az="/bin/az", ssh_private_key=__file__,
                            grace=0.0, adopt_untagged=True,
                            allow_extra_args=("--accelerated-networking", "--ultra-ssd"))
    argv = worker_argv("nats://127.0.0.1:4222", 1, options)
    assert argv[1:4] == ["-m", "vmlaunch.cli.launcher", "serve"]
    params = launcher.serve.make_context("serve", argv[4:]).params
    assert {key: params[key] for key in ("nats_url", "concurrency", "az_path", "ssh_private_key",
                                         "grace", "adopt_untagged", "allow_extra_args")} == {
        "nats_url": "nats://127.0.0.1:4222", "concurrency": 2, "az_path": "/bin/az",
        "ssh_private_key": __file__, "grace": 0.0, "adopt_untagged": True,
        "allow_extra_args": ("--accelerated-networking", "--ultra-ssd")}
    defaults = launcher.serve.make_context("serve", worker_argv("u", 1, WorkerOptions())[4:])
    assert (defaults.params["concurrency"], defaults.params["allow_extra_args"]) == (
        FOLLOWED_AT_ONCE, ())


def test_the_orchestrator_s_variables_do_not_reach_its_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("VMLAUNCH_CONCURRENCY", "8")
    assert not any(key.startswith("VMLAUNCH_") for key in worker_env(tmp_path, WorkerOptions()))


def test_the_write_budget_reaches_the_workers_and_defaults_to_the_putvm_budget():
    windows = (Window(10, 2.0), Window(30, 60.0))
    argv = worker_argv("u", 1, WorkerOptions(write_budget=windows))
    assert launcher.serve.make_context("serve", argv[4:]).params["write_budget"] == windows
    defaults = launcher.serve.make_context("serve", worker_argv("u", 1, WorkerOptions())[4:])
    assert defaults.params["write_budget"] == DEFAULT_WINDOWS


def test_a_write_budget_that_is_not_count_slash_seconds_is_bad_input():
    result = CliRunner().invoke(launcher.cli, ["serve", "--write-budget", "10 per 2"])
    assert result.exit_code == 2 and "COUNT/SECONDS" in result.output


def test_deploy_gives_its_write_budget_to_the_workers_and_the_legacy_poller(captured):
    result = CliRunner().invoke(orchestrator.cli, [*BASE, "--write-budget", "10/2,30/60"],
                                env={"NATS_URL": None})
    assert result.exit_code == 0, result.output
    assert captured["options"].workers.write_budget == (Window(10, 2.0), Window(30, 60.0))


def test_the_run_command_concurrency_reaches_legacy_mode_and_the_embedded_workers(captured):
    result = CliRunner().invoke(orchestrator.cli, [*BASE, "--run-command-concurrency", "3"],
                                env={"NATS_URL": None})
    assert result.exit_code == 0, result.output
    options = captured["options"]
    assert (options.run_command_concurrency, options.workers.run_command_concurrency) == (3, 3)
    argv = worker_argv("nats://127.0.0.1:4222", 1, options.workers)
    assert launcher.serve.make_context("serve", argv[4:]).params["run_command_concurrency"] == 3
    defaults = launcher.serve.make_context("serve", worker_argv("u", 1, WorkerOptions())[4:])
    assert defaults.params["run_command_concurrency"] == 8


def test_the_track_interval_and_the_az_limit_reach_the_embedded_workers_serve():
    argv = worker_argv("u", 1, WorkerOptions(track_interval=0.25, max_az_processes=5))
    params = launcher.serve.make_context("serve", argv[4:]).params
    assert (params["track_interval"], params["max_az_processes"]) == (0.25, 5)
    defaults = launcher.serve.make_context("serve", worker_argv("u", 1, WorkerOptions())[4:])
    assert (defaults.params["track_interval"], defaults.params["max_az_processes"]) == (2.0, 32)
