"""The manual launch: real `vm_launcher.py launch` processes against the simulator.

The simulator's time_scale is 0.01, so a create takes 0.6 s and a run-command 0.2 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import click
import pytest
import yaml
from click.testing import CliRunner
from conftest import PYTHON, REPO
from workerkit import RG, Bus, launch_env

from vmlaunch.cli.specoptions import spec_options, spec_values
from vmlaunch.schema.messages import CloudInitComplete, Failed, Subject, decode
from vmlaunch.schema.vmspec import SPEC_FIELDS
from vmlaunch.state.statefile import read_events, read_state

pytestmark = pytest.mark.timeout(60)

BASE = ["-g", RG, "--image", "Ubuntu2204", "--zone", "1", "--location", "westus2",
        "--no-verify-ssh", "--retry-backoff", "0.05"]
UNREACHABLE = "nats://127.0.0.1:9"  # discard port: nothing listens


def launch(az_sim, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, str(REPO / "vm_launcher.py"), "launch", *args]
    return subprocess.run(argv, env=launch_env(az_sim), capture_output=True, text=True,
                          timeout=50, cwd=REPO)


def test_launch_creates_the_vm_and_prints_readable_progress(az_sim):
    done = launch(az_sim, "-n", "vm1", *BASE, "--no-nats")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pattern = r"\d\d:\d\d:\d\d vm1 (\S+)"
    assert [re.match(pattern, line)[1] for line in lines[:-1]] == [
        "accepted", "creating", "complete", "verifying", "cloud-init"]
    assert lines[-1] == "vm1: ready (20.100.0.1) after 1 attempt(s)"
    assert re.fullmatch(r"\d\d:\d\d:\d\d vm1 creating  az vm create vm1 "
                        r"\(Standard_D2s_v5, zone 1\) \[attempt 1\]", lines[1])
    assert "public IP 20.100.0.1, private IP 10.0.0.4" in lines[2]
    assert "cloud-init finished: status done" in lines[4]
    assert done.stderr == ""
    assert az_sim.state()["create_counts"] == {"vm1": 1}


def test_launch_json_lines_are_the_encoded_messages(az_sim):
    done = launch(az_sim, "-n", "vm1", *BASE, "--no-nats", "--json",
                  "--deployment-id", "dep-json")
    assert done.returncode == 0, done.stderr
    messages = [decode(line.encode()) for line in done.stdout.splitlines()]
    assert [m.type for m in messages] == [
        Subject.STATUS, Subject.STATUS, Subject.COMPLETE, Subject.STATUS,
        Subject.CLOUDINIT_COMPLETE]
    assert {(m.deployment_id, m.vm_name) for m in messages} == {("dep-json", "vm1")}
    assert isinstance(messages[-1].payload, CloudInitComplete)


def test_launch_takes_the_spec_file_and_lets_options_override_it(az_sim, tmp_path):
    (tmp_path / "init.yaml").write_text("#cloud-config\nwrite_files: [{content: s3cret}]\n")
    (tmp_path / "vm.yaml").write_text(yaml.safe_dump({
        "name": "vm-file", "resource_group": RG, "image": "Ubuntu2204", "size": "Standard_B2s",
        "zone": "2", "custom_data": "init.yaml", "verify_ssh": False,
        "verify_cloud_init": False, "tags": {"team": "infra"}}))
    done = launch(az_sim, "--spec", str(tmp_path / "vm.yaml"), "--zone", "3", "--no-nats",
                  "--json")
    assert done.returncode == 0, done.stderr
    vm = az_sim.state()["vms"]["vm-file"]
    assert (vm["size"], vm["zone"], vm["location"]) == ("Standard_B2s", "3", "westus2")
    assert vm["tags"]["team"] == "infra"
    assert vm["custom_data"].startswith("#cloud-config")  # the content reached az
    assert "s3cret" not in done.stdout + done.stderr
    assert az_sim.state()["calls"]["group show"] == 1  # the location, looked up once


def test_launch_exits_1_when_the_vm_fails_permanently(az_sim):
    az_sim.scenario({"time_scale": 0.01, "vms": [
        {"match": "vm-bad", "fail": "InvalidParameter", "fail_phase": "preflight"}]})
    done = launch(az_sim, "-n", "vm-bad", *BASE, "--no-nats", "--json")
    assert done.returncode == 1, done.stderr
    (failed,) = [m.payload for m in map(decode, done.stdout.encode().splitlines())
                 if isinstance(m.payload, Failed)]
    assert (failed.error_code, failed.final, failed.attempts) == ("InvalidParameter", True, 1)


BAD_INPUT = [
    pytest.param(["-n", "-bad-name-", "--custom-data", "/nonexistent/init.yaml",
                  "--eviction-policy", "Delete"],
                 ["name must be", "custom_data file '/nonexistent/init.yaml' cannot be read",
                  "eviction_policy is only allowed with priority Spot or Low"],
                 id="three-problems-at-once"),
    pytest.param(["-n", "vm1", "--zone", "7", "--ssh-port", "0"],
                 ["zone '7' must be one of 1, 2, 3", "ssh_port must be between 1 and 65535"],
                 id="zone-and-port"),
    pytest.param(["-n", "vm1", "--spec", "/nonexistent/spec.yaml"],
                 ["spec file '/nonexistent/spec.yaml' cannot be read"], id="missing-spec-file"),
]


@pytest.mark.parametrize(("args", "problems"), BAD_INPUT)
def test_launch_with_bad_input_lists_every_problem_and_calls_no_az(az_sim, args, problems):
    done = launch(az_sim, *BASE, *args, "--no-nats")
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    assert len(errors) == len(problems), done.stderr
    assert all(line.startswith("error: ") for line in errors)
    for problem in problems:
        assert [line for line in errors if problem in line], problem
    assert done.stdout == ""
    assert az_sim.state()["calls"] == {}


def test_launch_without_a_required_field_exits_2(az_sim):
    done = launch(az_sim, "-g", RG, "-n", "vm1", "--no-nats")
    assert done.returncode == 2
    assert done.stderr == "error: spec.image: missing required field\n"
    assert az_sim.state()["calls"] == {}


def test_launch_exits_3_when_az_cannot_be_found(az_sim):
    done = launch(az_sim, "-n", "vm1", *BASE, "--no-nats", "--az", "/nonexistent/az")
    assert done.returncode == 3
    assert done.stderr == "error: the az executable '/nonexistent/az' was not found\n"


def test_launch_warns_once_when_nats_is_unreachable_and_still_succeeds(az_sim):
    done = launch(az_sim, "-n", "vm1", *BASE, "--no-verify-cloud-init",
                  "--nats-url", UNREACHABLE, "--nats-connect-timeout", "0.5")
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("warning: NATS at nats://127.0.0.1:9 refused the connection")
    assert "continuing without publishing events" in warning


async def test_launch_publishes_the_same_events_to_nats(az_sim, nats_server):
    async with Bus(nats_server.url) as bus:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(REPO / "vm_launcher.py"), "launch", "-n", "vm1", *BASE, "--json",
            "--nats-url", nats_server.url, env=launch_env(az_sim), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 50)
        assert proc.returncode == 0, err.decode()
        printed = [decode(line) for line in out.splitlines()]
        await bus.wait_for(lambda: len(bus.events) == len(printed), timeout=10)
        assert [m.event_id for m in bus.events] == [m.event_id for m in printed]
        assert bus.events == printed
        assert err == b""


def test_launch_keeps_the_state_and_events_files(az_sim, tmp_path):
    state, events = tmp_path / "state" / "deployment-state.yaml", tmp_path / "events.yaml"
    state.parent.mkdir()
    done = launch(az_sim, "-n", "vm1", *BASE, "--no-nats", "--state-file", str(state),
                  "--events-file", str(events))
    assert done.returncode == 0, done.stderr
    vm = read_state(state)["vm_states"]["vm1"]
    assert (vm["state"], vm["public_ip"], vm["private_ip"]) == (
        "Succeeded", "20.100.0.1", "10.0.0.4")
    actions = [e["action"] for e in read_events(events)]
    assert actions.index("vm_creation_started") < actions.index("vm_ready")


@click.command()
@spec_options()
def probe(**params: object) -> None:
    click.echo(json.dumps(spec_values(params)))


OPTION_TABLE = [
    pytest.param([], {}, id="nothing-given-overrides-nothing"),
    pytest.param(["-n", "vm1", "-g", "rg", "--image", "img", "-l", "westus2"],
                 {"name": "vm1", "resource_group": "rg", "image": "img",
                  "location": "westus2"}, id="short-flags"),
    pytest.param(["--os-disk-size-gb", "64", "--create-timeout", "90"],
                 {"os_disk_size_gb": 64, "create_timeout": 90.0}, id="numbers"),
    pytest.param(["--tag", "team=infra", "--tag", "expr=a=b"],
                 {"tags": {"team": "infra", "expr": "a=b"}}, id="repeated-tags"),
    pytest.param(["--extra-arg=--accelerated-networking", "--extra-arg", "true"],
                 {"extra_args": ["--accelerated-networking", "true"]}, id="extra-args"),
    pytest.param(["--fallback-zone", "2", "--fallback-zone", "3", "--fallback-size", "B2s"],
                 {"fallback_zones": ["2", "3"], "fallback_sizes": ["B2s"]}, id="fallbacks"),
    pytest.param(["--no-verify-ssh", "--verify-cloud-init", "--cloud-init-check", "ssh"],
                 {"verify_ssh": False, "verify_cloud_init": True, "cloud_init_check": "ssh"},
                 id="booleans"),
    pytest.param(["--custom-data", "init.yaml", "--ssh-public-key", "~/.ssh/id.pub"],
                 {"custom_data": "init.yaml", "ssh_public_key": "~/.ssh/id.pub"}, id="files"),
]


@pytest.mark.parametrize(("argv", "fields"), OPTION_TABLE)
def test_spec_options_turn_into_vmspec_fields(argv, fields):
    result = CliRunner().invoke(probe, argv)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == fields


def test_every_vmspec_field_is_an_option():
    assert {p.name for p in probe.params} == set(SPEC_FIELDS)


def test_a_tag_without_a_value_is_a_usage_error():
    result = CliRunner().invoke(probe, ["--tag", "team"])
    assert result.exit_code == 2
    assert "'team' is not KEY=VALUE" in result.output
