"""Self-tests of the Azure CLI simulator: real `scripts/az-sim` subprocesses, no mocks.

Durations are scaled by time_scale 0.01 and creates default to 20 s, so a create takes 0.2 s.
The venv's bin directory goes first on PATH, as in an activated venv: `/usr/bin/env python3`
may otherwise be a slow version-manager shim.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(60)

AZ_SIM = REPO / "scripts" / "az-sim"
REFERENCE = Path("/work/shared/reference/az-samples")  # real az 2.91.0 texts, when present
RG = "rg-gpu"
FAST = {"time_scale": 0.01, "location": "eastus", "defaults": {"create_seconds": 20}}
CLI_REF = "\nhttps://aka.ms/cli_ref\nRead more about the command in reference docs\n"
QUERY_REF = ("To learn more about --query, please visit: "
             "'https://learn.microsoft.com/cli/azure/query-azure-cli'\n")
CREATE_KEYS = ["fqdns", "id", "location", "macAddress", "powerState", "privateIpAddress",
               "publicIpAddress", "resourceGroup"]
CONFLICT = ("ERROR: (Conflict) Run command extension execution is in progress. Please wait for "
            "completion before invoking a run command.\nCode: Conflict\nMessage: Run command "
            "extension execution is in progress. Please wait for completion before invoking a "
            "run command.\n")


def wait_for(predicate, *, timeout: float = 10.0, what: str = "the condition"):
    """Poll until predicate() is truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


class Sim:
    """One isolated simulator: its own state file and scenario file."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_path = tmp_path / "az-sim-state"
        self.scenario_path = tmp_path / "scenario.json"
        self.env = {**os.environ, "AZ_SIM_STATE": str(self.state_path),
                    "AZ_SIM_SCENARIO": str(self.scenario_path),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.procs: list[subprocess.Popen] = []
        self.scenario()

    def scenario(self, **data) -> None:
        defaults = {**FAST["defaults"], **data.pop("defaults", {})}
        self.scenario_path.write_text(json.dumps({**FAST, **data, "defaults": defaults}))

    def run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run([str(AZ_SIM), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, *args: str):
        p = self.run(*args)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if p.stdout else None

    def start(self, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([str(AZ_SIM), *args], env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def create(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        return self.run("vm", "create", "-g", RG, "-n", name, "--image", "Ubuntu2204", *extra)

    def start_create(self, name: str, *extra: str) -> subprocess.Popen:
        return self.start("vm", "create", "-g", RG, "-n", name, "--image", "Ubuntu2204", *extra)

    def show(self, name: str, *extra: str) -> dict | None:
        p = self.run("vm", "show", "-g", RG, "-n", name, *extra)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def state(self) -> dict:
        return self.ok("sim", "state")

    def invoke(self, name: str, script: str) -> subprocess.CompletedProcess:
        return self.run("vm", "run-command", "invoke", "-g", RG, "-n", name, "--command-id",
                        "RunShellScript", "--scripts", script)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=5)


@pytest.fixture(name="sim")
def sim_fixture(tmp_path: Path):
    """The other tests/sim modules import it: a conftest.py here would shadow tests/'."""
    s = Sim(tmp_path)
    yield s
    s.close()


def skeleton(value):
    """Keys and value types, recursively: the shape of a JSON document without its values."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(v) for v in value[:1]]
    return type(value).__name__


def reference(name: str):
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference sample {path} is not available")
    return json.loads(path.read_text())


def normalized(text: str) -> str:
    text = re.sub(r"vm_deploy_[0-9a-f]{32}", "vm_deploy_X", text)
    return re.sub(r"tracking id is '[0-9a-f-]{36}'", "tracking id is 'T'", text)


def deployment_error(stderr: str) -> dict:
    assert stderr.startswith("ERROR: {") and stderr.count("\n") == 1, stderr
    return json.loads(stderr[len("ERROR: "):])


def inner_codes(error: dict) -> list[str]:
    codes, todo = [], list(error["error"]["details"])
    while todo:
        item = todo.pop(0)
        codes.append(item["code"])
        todo.extend(item.get("details", []))
    return codes


# ---------------------------------------------------------------- create output and show


def test_zonal_create_prints_exactly_the_create_output_keys_with_zones_as_a_string(sim):
    p = sim.create("gpu-vm-01", "--zone", "2", "--size", "Standard_NC24ads_A100_v4")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert sorted(out) == sorted([*CREATE_KEYS, "zones"])
    assert out["zones"] == "2" and out["powerState"] == "VM running"
    assert out["resourceGroup"] == RG and out["location"] == "eastus"
    assert out["id"].endswith(f"/resourceGroups/{RG}/providers/Microsoft.Compute/"
                              "virtualMachines/gpu-vm-01")
    assert p.stdout == json.dumps(out, indent=2, sort_keys=True) + "\n"


def test_regional_create_prints_no_zones_key(sim):
    out = json.loads(sim.create("cpu-vm-01").stdout)
    assert sorted(out) == CREATE_KEYS
    assert out["publicIpAddress"] and out["privateIpAddress"].startswith("10.0.")


def test_show_of_a_spot_zonal_vm_has_the_shape_of_the_reference_samples(sim):
    sim.create("gpu-vm-01", "--zone", "2", "--size", "Standard_NC24ads_A100_v4", "--priority",
               "spot", "--eviction-policy", "Delete", "--tags", "owner=ci", "pool=a100")
    shown, detailed = sim.show("gpu-vm-01"), sim.show("gpu-vm-01", "-d")
    assert shown["priority"] == "Spot" and shown["zones"] == ["2"]
    assert shown["tags"] == {"owner": "ci", "pool": "a100"}
    assert shown["billingProfile"] == {"maxPrice": -1.0}
    assert "powerState" not in shown and detailed["powerState"] == "VM running"
    assert skeleton(shown) == skeleton(reference("vm-show.json"))
    assert skeleton(detailed) == skeleton(reference("vm-show-d.json"))


def test_show_d_reports_creating_without_ips_and_later_succeeded_with_ips(sim):
    sim.scenario(vms=[{"match": "slow", "create_seconds": 1000}])
    assert sim.create("slow", "--no-wait").stdout == ""
    early = sim.show("slow", "-d")
    assert early["provisioningState"] == "Creating"
    assert (early["powerState"], early["publicIps"], early["privateIps"]) == ("", "", "")
    assert sorted(early) == sorted(reference("vm-show-d-creating.json"))
    sim.create("quick", "--no-wait")
    done = wait_for(lambda: (s := sim.show("quick", "-d"))["provisioningState"] == "Succeeded"
                    and s, what="Succeeded")
    assert done["powerState"] == "VM running" and done["publicIps"] and done["privateIps"]
    listed = sim.ok("vm", "list", "-g", RG, "-d")
    assert [(v["name"], v["provisioningState"], v["publicIps"]) for v in listed] == [
        ("quick", "Succeeded", done["publicIps"]), ("slow", "Creating", "")]


def test_list_ip_addresses_gives_each_vms_nic_and_public_ips_as_azure_cli_does(sim):
    sim.create("one", "--no-wait")
    sim.create("two", "--no-wait", "--public-ip-address", "")
    done = wait_for(lambda: (s := sim.show("one", "-d"))["provisioningState"] == "Succeeded"
                    and s, what="Succeeded")

    listed = sim.ok("vm", "list-ip-addresses", "-g", RG)

    assert [entry["virtualMachine"]["name"] for entry in listed] == ["one", "two"]
    one = listed[0]["virtualMachine"]
    assert (one["resourceGroup"], one["network"]["privateIpAddresses"]) == (
        RG, [done["privateIps"]])
    (public,) = one["network"]["publicIpAddresses"]
    assert public == {"id": public["id"], "ipAddress": done["publicIps"],
                      "ipAllocationMethod": "Static", "name": "onePublicIP",
                      "resourceGroup": RG, "zone": None}
    assert listed[1]["virtualMachine"]["network"]["publicIpAddresses"] == []
    assert sim.ok("vm", "list-ip-addresses", "-g", RG, "-n", "two") == [listed[1]]


def test_public_ip_early_shows_the_standard_ip_while_creating(sim):
    sim.scenario(public_ip_early=True, public_ip="127.0.0.1", defaults={"create_seconds": 500})
    sim.create("early", "--no-wait")
    shown = sim.show("early", "-d")
    assert (shown["provisioningState"], shown["publicIps"]) == ("Creating", "127.0.0.1")


def test_show_of_a_missing_vm_exits_3_with_the_resource_not_found_text(sim):
    p = sim.run("vm", "show", "-g", RG, "-n", "ghost", "-d")
    message = ("The Resource 'Microsoft.Compute/virtualMachines/ghost' under resource group "
               "'rg-gpu' was not found. For more details please go to "
               "https://aka.ms/ARMResourceNotFoundFix")
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr == f"ERROR: (ResourceNotFound) {message}\nCode: ResourceNotFound\n" \
                       f"Message: {message}\n"


def test_killing_the_create_client_does_not_stop_provisioning(sim):
    sim.scenario(defaults={"create_seconds": 200})
    client = sim.start_create("orphan")
    wait_for(lambda: "orphan" in sim.state()["vms"], what="the VM record")
    client.kill()
    assert client.wait(timeout=5) == -signal.SIGKILL  # killed, not finished
    wait_for(lambda: sim.show("orphan")["provisioningState"] == "Succeeded", what="Succeeded")
    state = sim.state()
    assert len(state["succeeded_at"]["orphan"]) == 1
    assert state["succeeded_at"]["orphan"][0] == state["vms"]["orphan"]["ready_at"]


# ---------------------------------------------------------------- argument parsing

PARSE_ERRORS = [
    (["vm", "create", "-g", RG, "-n", "x", "--image", "Ubuntu2204", "--bogus-flag", "1"], 2,
     "ERROR: unrecognized arguments: --bogus-flag 1\n" + CLI_REF),
    (["vm", "create", "--image", "Ubuntu2204"], 2,
     "ERROR: the following arguments are required: --name/-n, --resource-group/-g\n" + CLI_REF),
    (["vm", "create", "-g", RG, "-n", "x", "--priority", "Bogus"], 2,
     "ERROR: az vm create: 'Bogus' is not a valid value for '--priority'. Allowed values: "
     "Regular, Low, Spot, SpotPlus.\n" + CLI_REF),
    (["vm", "wait", "-g", RG, "-n", "x", "--created", "--timeout", "abc"], 2,
     "ERROR: argument --timeout: invalid int value: 'abc'\n" + CLI_REF),
    (["vm", "bogus"], 2, "ERROR: 'bogus' is misspelled or not recognized by the system.\n"
     + CLI_REF),
    (["vm", "list", "--query", "[.bad"], 2,
     "ERROR: argument --query: invalid jmespath_type value: '[.bad'\nTo learn more about "
     "--query, please visit: 'https://learn.microsoft.com/cli/azure/query-azure-cli'\n"),
    (["vm", "show", "-n", "x"], 1, "ERROR: (--resource-group | --ids) are required\n"),
    (["vm", "delete", "-g", RG, "-n", "x"], 1, "WARNING: Unable to prompt for confirmation as "
     "no tty available. Use --yes.\nERROR: Operation cancelled.\n"),
]


@pytest.mark.parametrize(("argv", "code", "stderr"), PARSE_ERRORS,
                         ids=["unknown-flag", "missing-required", "bad-enum", "bad-int",
                              "unknown-subcommand", "bad-query", "no-rg", "delete-no-yes"])
def test_bad_invocations_print_azure_cli_errors_and_exit_codes(sim, argv, code, stderr):
    p = sim.run(*argv)
    assert (p.returncode, p.stderr, p.stdout) == (code, stderr, "")


def test_unique_prefixes_equals_signs_and_case_insensitive_enums_are_accepted(sim):
    p = sim.run("vm", "create", "--resource-gr", RG, "--name=abbrev", "--pri", "SPOT",
                "--os-disk-size", "64", "-o", "none")
    assert (p.returncode, p.stdout) == (0, ""), p.stderr
    shown = sim.show("abbrev")
    assert shown["priority"] == "Spot"
    assert shown["storageProfile"]["osDisk"]["diskSizeGB"] == 64


def test_an_ambiguous_prefix_is_rejected(sim):
    p = sim.run("vm", "create", "-g", RG, "-n", "x", "--s", "1")
    assert p.returncode == 2 and "ambiguous option: --s could match --size" in p.stderr


def test_an_ambiguous_prefix_gets_azure_clis_usage_error_and_exit_2(sim):
    p = sim.run("vm", "create", "-g", RG, "-n", "x", "--ssh-key", "k")
    assert (p.returncode, p.stdout, p.stderr) == (2, "", "ERROR: ambiguous option: --ssh-key "
                                                  "could match --ssh-key-name, --ssh-key-values\n"
                                                  + CLI_REF)
    assert sim.state()["vms"] == {}


def test_short_flags_combine_and_prefixes_take_equals_signs_as_in_argparse(sim):
    sim.create("a")
    shown = sim.ok("vm", "show", "-dg", RG, "--na=a", "--out=json", "--que", "powerState")
    assert shown == "VM running"


def test_missing_custom_data_file_is_an_error(sim, tmp_path):
    p = sim.create("x", "--custom-data", str(tmp_path / "missing.yaml"))
    assert p.returncode == 1 and "No such file or directory" in p.stderr
    assert sim.state()["vms"] == {}


# ---------------------------------------------------------------- failures


def test_async_allocation_failure_prints_the_deployment_body_and_leaves_the_vm_failed(sim):
    sim.scenario(vms=[{"match": "zonal-fail", "fail": "ZonalAllocationFailed"}])
    p = sim.create("zonal-fail", "--zone", "1")
    assert p.returncode == 1 and p.stdout == ""
    error = deployment_error(p.stderr)
    assert inner_codes(error) == ["ResourceDeploymentFailure", "ZonalAllocationFailed"]
    assert "in this zone" in error["error"]["details"][0]["details"][0]["message"]
    assert sim.show("zonal-fail")["provisioningState"] == "Failed"
    assert sim.state()["create_counts"] == {"zonal-fail": 1}


def test_preflight_sku_failure_prints_the_2_91_traceback_and_creates_no_vm(sim):
    sim.scenario(vms=[{"match": "no-sku", "fail": "SkuNotAvailable", "fail_phase": "preflight"}])
    p = sim.create("no-sku", "--size", "Standard_NC24ads_A100_v4")
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[0] == "ERROR: The command failed with an unexpected error. Here is the traceback:"
    assert "\nException Details:\t(SkuNotAvailable) The requested VM size for resource " \
           "'Following SKUs have failed for Capacity Restrictions: Standard_NC24ads_A100_v4' is " \
           "currently not available in location 'eastus'." in p.stderr
    assert lines[-1] == "To check existing issues, please visit: " \
                        "https://github.com/Azure/azure-cli/issues"
    state = sim.state()
    assert state["vms"] == {} and state["create_attempts"] == {"no-sku": 1}
    assert "no-sku" not in state["create_counts"]


@pytest.mark.parametrize("case", [1, 3, 5, 7, 8], ids=["not-found", "zonal", "sku-preflight",
                                                       "quota-preflight", "invalid-parameter"])
def test_failure_texts_equal_the_real_cli_reference_cases(sim, case):
    sim.scenario(vms=[
        {"match": "zonal-fail", "fail": "ZonalAllocationFailed"},
        {"match": "no-sku", "fail": "SkuNotAvailable", "fail_phase": "preflight"},
        {"match": "no-quota", "fail": "OperationNotAllowed", "fail_phase": "preflight"},
        {"match": "bad-param", "fail": "InvalidParameter", "fail_phase": "preflight"}])
    ref = reference("errors.json")[case]
    p = sim.run(*ref["argv"][1:])
    assert (p.returncode, p.stdout) == (ref["exit_code"], ref["stdout"])
    assert normalized(p.stderr) == normalized(ref["stderr"])


def test_a_rule_for_attempt_1_fails_only_the_first_create(sim):
    sim.scenario(vms=[{"match": "k0s-worker-*", "attempts": [1], "fail": "AllocationFailed"}])
    assert sim.create("k0s-worker-1").returncode == 1
    assert sim.show("k0s-worker-1")["provisioningState"] == "Failed"
    second = sim.create("k0s-worker-1")
    assert second.returncode == 0, second.stderr
    state = sim.state()
    assert state["create_attempts"] == {"k0s-worker-1": 2}
    assert state["vms"]["k0s-worker-1"]["provisioningState"] == "Succeeded"


def test_a_failure_with_left_failed_false_makes_the_vm_vanish_but_keeps_its_nic(sim):
    sim.scenario(vms=[{"match": "gone", "fail": "AllocationFailed", "left_failed": False}])
    assert sim.create("gone").returncode == 1
    assert sim.show("gone") is None
    nics = sim.ok("network", "nic", "list", "-g", RG)
    assert [n["name"] for n in nics] == ["goneVMNic"] and "virtualMachine" not in nics[0]


def test_a_hanging_create_never_returns_and_is_preempted_by_a_delete(sim):
    sim.scenario(vms=[{"match": "stuck", "hang": True, "delete_seconds": 10}])
    client = sim.start_create("stuck")
    wait_for(lambda: "stuck" in sim.state()["vms"], what="the VM record")
    time.sleep(0.3)  # a fixed span in which nothing may happen, not a wait for a condition
    assert client.poll() is None and sim.show("stuck")["provisioningState"] == "Creating"
    sim.run("vm", "delete", "-g", RG, "-n", "stuck", "--yes")
    _, stderr = client.communicate(timeout=10)
    assert client.returncode == 1 and "OperationPreempted" in stderr


def test_not_logged_in_makes_every_command_fail(sim):
    sim.scenario(logged_in=False)
    p = sim.run("vm", "list")
    assert (p.returncode, p.stderr) == (1, "ERROR: Please run 'az login' to setup account.\n")


def test_a_missing_resource_group_exits_3(sim):
    sim.scenario(resource_groups=["rg-a"])
    p = sim.run("group", "show", "--name", "rg-missing")
    assert p.returncode == 3
    assert p.stderr == ("ERROR: (ResourceGroupNotFound) Resource group 'rg-missing' could not "
                        "be found.\nCode: ResourceGroupNotFound\nMessage: Resource group "
                        "'rg-missing' could not be found.\n")
    assert sim.create("x").returncode == 3
    assert sim.ok("group", "show", "-n", "rg-a")["location"] == "eastus"


def test_account_show_has_the_reference_keys(sim):
    assert sorted(sim.ok("account", "show")) == sorted(reference("account-show.json"))


def test_the_first_k_matching_calls_are_throttled(sim):
    sim.scenario(throttle={"first_calls": 2, "commands": ["vm list"]})
    throttled = [sim.run("vm", "list", "-g", RG, "-d") for _ in range(2)]
    assert all(p.returncode == 1 for p in throttled)
    assert throttled[0].stderr.startswith("ERROR: (TooManyRequests) The request is being "
                                          "throttled as the limit has been reached for "
                                          "operation type - Read_30Min.")
    assert sim.run("vm", "list", "-g", RG).returncode == 0
    assert sim.run("vm", "show", "-g", RG, "-n", "x").returncode == 3  # not a throttled command
    assert sim.state()["calls"] == {"vm list": 3, "vm show": 1}


def test_after_calls_lets_the_first_matching_calls_through_before_throttling(sim):
    sim.scenario(throttle={"after_calls": 1, "first_calls": 2, "commands": ["vm show"],
                           "code": "InternalServerError", "message": "boom"})
    shows = [sim.run("vm", "show", "-g", RG, "-n", "x") for _ in range(4)]
    assert [p.returncode for p in shows] == [3, 1, 1, 3]  # through, throttled twice, through
    assert shows[1].stderr.startswith("ERROR: (InternalServerError) boom\n")
    assert sim.state()["throttled_calls_seen"] == 4


def test_a_bad_scenario_reports_every_problem(sim):
    sim.scenario_path.write_text("time_scale: -1\nbogus: 1\nvms:\n  - match: x\n    hang: 3\n")
    p = sim.run("vm", "list")
    assert p.returncode == 1
    for problem in ("unknown top-level key 'bogus'", "time_scale must be", "vms[0].hang"):
        assert problem in p.stderr


def test_random_faults_fail_before_acting_with_azures_texts(sim):
    sim.create("kept")
    sim.scenario(faults={"rate": 1.0, "retry_after": 3, "codes": [
        "SubscriptionRequestsThrottled"], "commands": ["vm create", "vm delete"]})
    create = sim.create("new-vm")
    assert create.returncode == 1
    assert ("(SubscriptionRequestsThrottled) Number of 'write' requests for subscription '"
            in create.stderr and "Please try again after '3' seconds." in create.stderr)
    delete = sim.run("vm", "delete", "-g", RG, "-n", "kept", "--yes")
    assert delete.returncode == 1
    assert delete.stderr.startswith("ERROR: (SubscriptionRequestsThrottled) Number of 'write'")
    assert "\nCode: SubscriptionRequestsThrottled\nMessage: " in delete.stderr
    assert sim.show("kept")["provisioningState"] == "Succeeded"  # reads are not faulted
    state = sim.state()
    assert sorted(state["vms"]) == ["kept"] and state["create_attempts"] == {"kept": 1}
    assert state["faults_injected"] == {"vm create": {"SubscriptionRequestsThrottled": 1},
                                        "vm delete": {"SubscriptionRequestsThrottled": 1}}


def _fault_pattern(sim, seed: int) -> list[str]:
    sim.run("sim", "reset")
    sim.scenario(faults={"rate": 0.4, "seed": seed, "commands": ["vm show"],
                         "codes": ["TooManyRequests", "InternalServerError"]})
    runs = [sim.run("vm", "show", "-g", RG, "-n", "absent") for _ in range(12)]
    assert {p.returncode for p in runs} <= {1, 3}
    return [re.match(r"ERROR: \((\w+)\)", p.stderr).group(1) for p in runs]


def test_random_faults_reproduce_per_seed_and_call_count(sim):
    first = _fault_pattern(sim, 7)
    assert {"TooManyRequests", "InternalServerError", "ResourceNotFound"} <= set(first)
    assert first == _fault_pattern(sim, 7)
    other = _fault_pattern(sim, 8)
    assert other != first
    state = sim.state()
    assert sum(state["faults_injected"]["vm show"].values()) == 12 - other.count(
        "ResourceNotFound")
    assert state["fault_calls_seen"] == 12


def test_a_bad_faults_setting_reports_every_problem(sim):
    sim.scenario(faults={"rate": 2, "seed": "x", "codes": [], "commands": "vm show", "often": 1})
    p = sim.run("vm", "list")
    assert p.returncode == 1
    for problem in ("faults: unknown key 'often'", "faults.rate must be at most 1",
                    "faults.seed must be an integer", "faults.codes must be a non-empty list",
                    "faults.commands must be a list"):
        assert problem in p.stderr


# ---------------------------------------------------------------- delete and leftovers


def test_delete_shows_deleting_and_then_the_vm_is_gone(sim):
    sim.scenario(defaults={"delete_seconds": 100})
    sim.create("doomed")
    assert sim.run("vm", "delete", "-g", RG, "-n", "doomed", "--yes", "--no-wait").returncode == 0
    assert sim.show("doomed")["provisioningState"] == "Deleting"
    wait_for(lambda: sim.show("doomed") is None, what="the VM to be gone")
    assert sim.run("vm", "delete", "-g", RG, "-n", "doomed", "--yes").returncode == 0


def test_create_while_the_vm_is_deleting_fails_as_marked_for_deletion(sim):
    sim.scenario(defaults={"delete_seconds": 1000})
    sim.create("cpu-vm-01")
    sim.run("vm", "delete", "-g", RG, "-n", "cpu-vm-01", "--yes", "--no-wait")
    p = sim.create("cpu-vm-01")
    assert p.returncode == 1
    inner = deployment_error(p.stderr)["error"]["details"][0]
    assert inner["code"] == "OperationNotAllowed" and "marked for deletion" in inner["message"]
    if (REFERENCE / "errors.json").exists():
        assert normalized(p.stderr) == normalized(reference("errors.json")[9]["stderr"])


def test_delete_without_delete_options_leaves_nic_disk_and_public_ip(sim):
    sim.create("keep")
    sim.ok("vm", "delete", "-g", RG, "-n", "keep", "--yes")
    nic, = sim.ok("network", "nic", "list", "-g", RG)
    disk, = sim.ok("disk", "list", "-g", RG)
    pip, = sim.ok("network", "public-ip", "list", "-g", RG)
    assert "virtualMachine" not in nic and "managedBy" not in disk
    assert disk["diskState"] == "Unattached" and disk["name"].startswith("keep_OsDisk_1_")
    assert pip["ipConfiguration"]["id"].startswith(nic["id"] + "/ipConfigurations/")
    blocked = sim.run("network", "public-ip", "delete", "-g", RG, "-n", "keepPublicIP")
    assert blocked.returncode == 1 and "(PublicIPAddressCannotBeDeleted)" in blocked.stderr
    sim.ok("network", "nic", "delete", "-g", RG, "-n", "keepVMNic")
    sim.ok("network", "public-ip", "delete", "-g", RG, "-n", "keepPublicIP")
    sim.ok("disk", "delete", "-g", RG, "-n", disk["name"], "--yes")
    assert sim.ok("network", "public-ip", "list", "-g", RG) == []
    assert sim.ok("disk", "list", "-g", RG) == []


def test_delete_with_delete_options_leaves_only_an_unattached_public_ip(sim):
    sim.create("tidy", "--nic-delete-option", "Delete", "--os-disk-delete-option", "Delete")
    shown = sim.show("tidy")
    assert shown["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert shown["networkProfile"]["networkInterfaces"][0]["deleteOption"] == "Delete"
    in_use = sim.run("network", "nic", "delete", "-g", RG, "-n", "tidyVMNic")
    assert in_use.returncode == 1 and "(NicInUse)" in in_use.stderr
    sim.ok("vm", "delete", "-g", RG, "-n", "tidy", "--yes")
    assert sim.ok("network", "nic", "list", "-g", RG) == []
    assert sim.ok("disk", "list", "-g", RG) == []
    pip, = sim.ok("network", "public-ip", "list", "-g", RG)
    assert "ipConfiguration" not in pip and pip["ipAddress"]
    assert sim.run("network", "public-ip", "delete", "-g", RG, "-n", "tidyPublicIP").returncode == 0
    missing = sim.run("network", "public-ip", "show", "-g", RG, "-n", "tidyPublicIP")
    assert missing.returncode == 3


def test_recreate_within_the_nic_reservation_window_fails_with_nic_reserved(sim):
    sim.scenario(nic_reservation_seconds=150, defaults={"delete_seconds": 1})
    first = json.loads(sim.create("again").stdout)
    sim.ok("vm", "delete", "-g", RG, "-n", "again", "--yes")
    p = sim.create("again")
    assert p.returncode == 1
    assert inner_codes(deployment_error(p.stderr)) == ["NicReservedForAnotherVm"]
    nic_delete = sim.run("network", "nic", "delete", "-g", RG, "-n", "againVMNic")
    assert "(NicReservedForAnotherVm)" in nic_delete.stderr
    later = wait_for(lambda: (c := sim.create("again")).returncode == 0 and c, what="re-create")
    assert json.loads(later.stdout)["privateIpAddress"] == first["privateIpAddress"]


def test_recreating_a_succeeded_vm_redeploys_in_place_but_not_with_a_new_zone(sim):
    first = json.loads(sim.create("same", "--zone", "1").stdout)
    again = sim.create("same", "--zone", "1", "--tags", "role=worker")
    assert again.returncode == 0
    assert json.loads(again.stdout)["publicIpAddress"] == first["publicIpAddress"]
    assert sim.show("same")["tags"] == {"role": "worker"}
    moved = sim.create("same", "--zone", "2")
    assert moved.returncode == 1
    assert inner_codes(deployment_error(moved.stderr)) == ["PropertyChangeNotAllowed"]


# ---------------------------------------------------------------- vm wait


def test_wait_timeout_prints_an_empty_object_and_exits_0(sim):
    sim.create("gpu-vm-01")
    p = sim.run("vm", "wait", "-g", RG, "-n", "gpu-vm-01", "--custom",
                "provisioningState=='Deleting'", "--timeout", "2", "--interval", "1")
    assert (p.returncode, p.stdout, p.stderr) == (0, "{}\n", "")


def test_wait_deleted_returns_once_the_vm_is_gone(sim):
    sim.scenario(defaults={"delete_seconds": 50})
    sim.create("bye")
    sim.run("vm", "delete", "-g", RG, "-n", "bye", "--yes", "--no-wait")
    p = sim.run("vm", "wait", "-g", RG, "-n", "bye", "--deleted", "--interval", "5")
    assert (p.returncode, p.stdout) == (0, "")
    assert sim.show("bye") is None


def test_wait_created_fails_when_provisioning_fails(sim):
    sim.scenario(vms=[{"match": "wf", "fail": "AllocationFailed"}])
    sim.create("wf", "--no-wait")
    p = sim.run("vm", "wait", "-g", RG, "-n", "wf", "--created", "--interval", "5")
    assert (p.returncode, p.stderr) == (1, "ERROR: The operation failed\n")


# ---------------------------------------------------------------- run-command


def test_run_command_output_has_the_reference_shape(sim):
    sim.create("rc")
    p = sim.invoke("rc", "echo hello")
    assert p.returncode == 0
    assert json.loads(p.stdout) == {"value": [{
        "code": "ProvisioningState/succeeded", "displayStatus": "Provisioning succeeded",
        "level": "Info", "message": "Enable succeeded: \n[stdout]\nhello\n\n[stderr]\n"}]}


def test_a_second_run_command_while_one_runs_gets_conflict(sim):
    sim.scenario(defaults={"run_command_seconds": 200})
    sim.create("busy-vm")
    first = sim.start("vm", "run-command", "invoke", "-g", RG, "-n", "busy-vm", "--command-id",
                      "RunShellScript", "--scripts", "uptime")
    wait_for(lambda: sim.state()["vms"]["busy-vm"].get("run_command_busy_until"),
             what="the run-command to start")
    second = sim.invoke("busy-vm", "uptime")
    assert (second.returncode, second.stderr) == (1, CONFLICT)
    assert first.wait(timeout=10) == 0


def test_cloud_init_error_is_reported_inside_a_succeeded_run_command(sim):
    sim.scenario(vms=[{"match": "ci-*", "cloud_init": "error"}])
    sim.create("ci-err")
    message = json.loads(sim.invoke("ci-err", "cloud-init status --long").stdout)["value"][0]
    assert message["code"] == "ProvisioningState/succeeded"
    assert message["message"] == (
        "Enable succeeded: \n[stdout]\nstatus: error\nextended_status: error\nboot_status_code: "
        "enabled-by-generator\ndetail:\nDataSourceAzure [seed=/dev/sr0]\nerrors:\n\t- "
        "('scripts_user', RuntimeError('Runparts: 1 failures (part-001) in 1 attempted "
        "commands'))\n\n[stderr]\n")


def test_cloud_init_status_wait_blocks_until_cloud_init_finishes(sim):
    sim.scenario(vms=[{"match": "ci", "cloud_init": "degraded", "cloud_init_seconds": 150}])
    sim.create("ci")
    before = json.loads(sim.invoke("ci", "test -f /var/lib/cloud/instance/boot-finished "
                                         "&& echo yes || echo no").stdout)
    assert "[stdout]\nno\n" in before["value"][0]["message"]
    started = time.monotonic()
    waited = json.loads(sim.invoke("ci", "cloud-init status --wait --long").stdout)
    text = waited["value"][0]["message"]
    assert time.monotonic() - started >= 0.5
    assert re.search(r"\[stdout\]\n\.+\nstatus: done\nextended_status: degraded done\n", text)
    assert "recoverable_errors:\nWARNING:\n\t- " in text
    after = json.loads(sim.invoke("ci", "test -f /var/lib/cloud/instance/boot-finished "
                                        "&& echo yes || echo no").stdout)
    assert "[stdout]\nyes\n" in after["value"][0]["message"]


def test_cloud_init_never_keeps_the_run_command_and_the_busy_flag_forever(sim):
    sim.scenario(vms=[{"match": "never", "cloud_init": "never"}])
    sim.create("never")
    client = sim.start("vm", "run-command", "invoke", "-g", RG, "-n", "never", "--command-id",
                       "RunShellScript", "--scripts", "cloud-init status --wait")
    wait_for(lambda: sim.state()["vms"]["never"].get("run_command_busy_until"),
             what="the run-command to start")
    time.sleep(0.3)  # a fixed span in which the call must not return
    assert client.poll() is None
    client.kill()
    client.wait(timeout=5)
    assert sim.invoke("never", "uptime").stderr == CONFLICT


# ---------------------------------------------------------------- output formats


def test_tsv_output_and_query_projections(sim):
    sim.create("a", "--zone", "3", "--tags", "role=cp")
    sim.create("b", "--size", "Standard_D4s_v5")
    rows = sim.run("vm", "list", "-g", RG, "-d", "-o", "tsv", "--query",
                   "[].{name:name, state:provisioningState, zone:zones[0]}").stdout
    assert rows == "a\tSucceeded\t3\nb\tSucceeded\tNone\n"
    sizes = sim.run("vm", "list", "--query", "[?name=='b'].hardwareProfile.vmSize", "-o", "tsv")
    assert sizes.stdout == "Standard_D4s_v5\n"
    assert sim.ok("vm", "show", "-g", RG, "-n", "a", "--query", "{z:zones, t:tags.role}") == \
        {"t": "cp", "z": ["3"]}
    assert sim.ok("vm", "list", "--query", "[].hardwareProfile.vmSize") == \
        ["Standard_D2s_v5", "Standard_D4s_v5"]
    assert sim.run("vm", "show", "-g", RG, "-n", "a", "-o", "tsv", "--query",
                   "storageProfile.osDisk.diskSizeGB").stdout == "30\n"
    assert sim.run("vm", "show", "-g", RG, "-n", "a", "-o", "none").stdout == ""


def test_queries_use_jmespath_functions_slices_and_expression_references(sim):
    sim.create("a", "--tags", "role=cp", "tier=1")
    sim.create("b", "--size", "Standard_D4s_v5")
    assert sim.ok("vm", "list", "--query", "length(@)") == 2
    assert sim.ok("vm", "list", "--query",
                  "sort_by(@, &hardwareProfile.vmSize)[::-1].name | join(', ', @)") == "b, a"
    first = sim.run("vm", "list", "-o", "tsv", "--query", "[?starts_with(name, 'b')] | [0].name")
    assert first.stdout == "b\n"
    assert sim.ok("vm", "show", "-g", RG, "-n", "a", "--query", "keys(tags) | sort(@)") == \
        ["role", "tier"]


def test_a_query_that_fails_while_evaluating_gets_azure_clis_error_and_exit_1(sim):
    sim.create("a")
    p = sim.run("vm", "show", "-g", RG, "-n", "a", "--query", "length(nothing)")
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == ("ERROR: Invalid jmespath query supplied for `--query`: In function "
                        "length(), invalid type for value: None, expected one of: ['string', "
                        "'array', 'object'], received: \"null\"\n" + QUERY_REF)


def test_an_invalid_query_is_quoted_as_argparse_quotes_it(sim):
    p = sim.run("vm", "list", "--query", "[?name=='b'")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == ("ERROR: argument --query: invalid jmespath_type value: \"[?name=='b'\"\n"
                        + QUERY_REF)


def test_wait_custom_is_a_jmespath_query_on_the_instance_view(sim):
    sim.create("a")
    p = sim.run("vm", "wait", "-g", RG, "-n", "a", "--interval", "1", "--timeout", "5",
                "--custom", "length(instanceView.statuses[?starts_with(code, 'PowerState/')])"
                " == `1`")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    bad = sim.run("vm", "wait", "-g", RG, "-n", "a", "--custom", "length(@, @)")
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr.startswith("ERROR: Invalid jmespath query supplied for `--query`: ")
    assert bad.stderr.endswith(QUERY_REF)


# ---------------------------------------------------------------- concurrency and entry


def test_twenty_concurrent_creates_all_succeed_with_distinct_ips(sim):
    names = [f"k0s-worker-{i}" for i in range(20)]
    clients = [sim.start_create(n, "--zone", str(1 + i % 3)) for i, n in enumerate(names)]
    outputs = [c.communicate(timeout=30) for c in clients]
    assert [c.returncode for c in clients] == [0] * 20, [err for _, err in outputs]
    created = [json.loads(out) for out, _ in outputs]
    assert len({c["publicIpAddress"] for c in created}) == 20
    assert len({c["privateIpAddress"] for c in created}) == 20
    state = sim.state()
    assert state["create_counts"] == dict.fromkeys(names, 1)
    assert {v["name"] for v in sim.ok("vm", "list", "-g", RG)} == set(names)


def test_a_yaml_scenario_is_read(sim, tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("time_scale: 0.01\nlocation: westeurope\n")
    sim.env["AZ_SIM_SCENARIO"] = str(path)
    assert json.loads(sim.create("y").stdout)["location"] == "westeurope"


def test_the_python_client_runs_the_simulator_with_the_venv_python_when_yaml_is_missing(sim):
    # -S hides site-packages, so yaml cannot be found by this python: the client must run
    # the server (or the call) with the venv's.
    client = AZ_SIM.parent / "azsim" / "client.py"
    p = subprocess.run([sys.executable, "-S", str(client), "version"], env=sim.env,
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["azure-cli"] == "2.91.0"
