"""Tests for azcli: the error table, the argv builders, and the runner against real scripts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import DATA, REPO

from vmlaunch.azure import argv, azcli, failures
from vmlaunch.azure.azcli import (
    READ_NICENESS,
    AzCli,
    AzResult,
    FailureKind,
    TokenBucket,
    classify,
)
from vmlaunch.host import procs
from vmlaunch.schema.vmspec import VMSpec

REPO_ROOT = REPO
T, C, L, P = (FailureKind.TRANSIENT, FailureKind.CAPACITY, FailureKind.LOOK,
              FailureKind.PERMANENT)
ERROR_CASES = json.loads((DATA / "azcli/errors.json").read_text())
COMMON = ["--output", "json", "--only-show-errors"]


# --- classify: the real stderr samples ------------------------------------------------------

# case name -> (code, kind, start of the message)
EXPECTED = {
    "vm list throttled (first call)": ("TooManyRequests", T, "The request is being throttled"),
    "vm show: VM missing": ("ResourceNotFound", P, "The Resource 'Microsoft.Compute/"),
    "group show: group missing": ("ResourceGroupNotFound", P, "Resource group 'rg-missing'"),
    "vm create: ZonalAllocationFailed (async, record left Failed)":
        ("ZonalAllocationFailed", C, "Allocation failed. We do not have sufficient capacity"),
    "vm create: AllocationFailed (async)":
        ("AllocationFailed", C, "Allocation failed. We do not have sufficient capacity"),
    "vm create: SkuNotAvailable (preflight 4xx) as azure-cli 2.91.0 prints it":
        ("SkuNotAvailable", C, "The requested VM size for resource 'Following SKUs"),
    "vm create: SkuNotAvailable (preflight), intended format (older/fixed CLI)":
        ("SkuNotAvailable", C, "The requested VM size for resource 'Following SKUs"),
    "vm create: quota (OperationNotAllowed, preflight)":
        ("OperationNotAllowed", P, "Operation could not be completed as it results in exceed"),
    "vm create: InvalidParameter (preflight)":
        ("InvalidParameter", P, "The value of parameter linuxConfiguration.ssh"),
    "vm create while the same name is being deleted":
        ("OperationNotAllowed", T, "Operation 'Create or Update VM' is not allowed"),
    "vm run-command invoke while another run-command runs":
        ("Conflict", T, "Run command extension execution is in progress"),
    "unrecognized argument": ("ArgumentError", P, "unrecognized arguments: --bogus-flag 1"),
    "missing required argument": ("ArgumentError", P, "the following arguments are required"),
    "invalid choice": ("ArgumentError", P, "az vm create: 'Bogus' is not a valid value"),
    "missing --resource-group on show": ("ArgumentError", P, "(--resource-group | --ids)"),
    "delete without --yes, no tty": ("Cancelled", P, "Operation cancelled."),
}
FAILED_CASES = [case for case in ERROR_CASES if case["exit_code"] != 0]


def test_every_failure_sample_has_an_expectation() -> None:
    assert {case["case"] for case in FAILED_CASES} == set(EXPECTED)


@pytest.mark.parametrize("case", FAILED_CASES, ids=[case["case"] for case in FAILED_CASES])
def test_classify_finds_the_most_specific_code_in_real_stderr(case: dict) -> None:
    code, kind, message = EXPECTED[case["case"]]
    error = classify(case["exit_code"], case["stderr"])
    assert (error.code, error.kind) == (code, kind)
    assert error.message.startswith(message)
    assert "\n" not in error.message


# --- classify: one synthetic case per table row ---------------------------------------------

def http_error(code: str, message: str, *, inner: tuple[str, str] | None = None) -> str:
    """The azure-core HttpResponseError format, with its missing newline before details."""
    text = f"ERROR: ({code}) {message}\nCode: {code}\nMessage: {message}\n"
    if inner:
        text += (f"Exception Details:\t({inner[0]}) {inner[1]}\n\tCode: {inner[0]}\n"
                 f"\tMessage: {inner[1]}\n")
    return text


def deployment_failed(code: str, message: str) -> str:
    """The raw body `vm create` prints when the deployment fails asynchronously."""
    inner = {"code": "ResourceDeploymentFailure", "message": "terminal provisioning state",
             "details": [{"code": code, "message": message}]}
    body = {"status": "Failed", "error": {"code": "DeploymentFailed", "message": "At least one",
                                          "details": [inner]}}
    return "ERROR: " + json.dumps(body, separators=(",", ":")) + "\n"


def preflight(code: str, message: str) -> str:
    """The intended `vm create` output for a synchronous 4xx."""
    body = {"error": {"code": "InvalidTemplateDeployment", "message": "not valid",
                      "details": [{"code": code, "message": message}]}}
    return "ERROR: " + json.dumps(body) + "\n"


SKU_CAPACITY = ("The requested VM size for resource 'Following SKUs have failed for Capacity "
                "Restrictions: Standard_D4s_v5' is currently not available in location 'eastus'.")
SKU_NOT_OFFERED = ("The requested size for resource '/subscriptions/x/resourceGroups/rg/providers/"
                   "Microsoft.Compute/virtualMachines/vm1' is currently not available in location "
                   "'westus' zones '1' for subscription 'x'. Please try another size.")
QUOTA = "Operation could not be completed as it results in exceeding approved Cores quota."
NIC_RESERVED = ("Nic(s) in request is reserved for another Virtual Machine for 180 seconds. Please"
                " provide another nic(s) or retry after 180 seconds. Reserved VM: /subscriptions/x")
MSAL_LOCK = ("ERROR: [Errno 13] Permission denied: "
             "'/home/ops/.azure/msal_token_cache.bin.lockfile'\n")

SYNTHETIC = [
    # id, exit code, stderr, code, kind, retry_after
    ("throttled", 1, http_error("TooManyRequests", "throttled"), "TooManyRequests", T, None),
    ("throttled-retry-after-header", 1,
     http_error("TooManyRequests", "throttled. Retry-After: 17"), "TooManyRequests", T, 17.0),
    ("throttled-retry-after-seconds", 1,
     http_error("TooManyRequests", "Please retry after 30 seconds."), "TooManyRequests", T, 30.0),
    ("internal-server-error", 1, http_error("InternalServerError", "x"),
     "InternalServerError", T, None),
    ("service-unavailable", 1, http_error("ServiceUnavailable", "x"), "ServiceUnavailable", T,
     None),
    ("internal-execution-error", 1, deployment_failed("InternalExecutionError", "x"),
     "InternalExecutionError", T, None),
    ("gateway-timeout", 1, http_error("GatewayTimeout", "x"), "GatewayTimeout", T, None),
    ("another-operation", 1, deployment_failed("AnotherOperationInProgress", "x"),
     "AnotherOperationInProgress", T, None),
    ("preempted", 1, deployment_failed("OperationPreempted", "x"), "OperationPreempted", T, None),
    ("msal-lockfile", 1, MSAL_LOCK, "TokenCacheLocked", T, None),
    ("nic-reserved", 1, http_error("NicReservedForAnotherVm", NIC_RESERVED),
     "NicReservedForAnotherVm", T, 180.0),
    ("unknown-crash", 1, "Traceback (most recent call last):\nKeyError: 'x'\n", "Unknown", T,
     None),
    ("empty-stderr", 1, "", "Unknown", T, None),
    ("zonal-allocation", 1, deployment_failed("ZonalAllocationFailed", "x"),
     "ZonalAllocationFailed", C, None),
    ("overconstrained", 1, deployment_failed("OverconstrainedAllocationRequest", "x"),
     "OverconstrainedAllocationRequest", C, None),
    ("overconstrained-zonal", 1, deployment_failed("OverconstrainedZonalAllocationRequest", "x"),
     "OverconstrainedZonalAllocationRequest", C, None),
    ("sku-capacity", 1, preflight("SkuNotAvailable", SKU_CAPACITY), "SkuNotAvailable", C, None),
    ("sku-not-offered", 1, preflight("SkuNotAvailable", SKU_NOT_OFFERED), "SkuNotAvailable", P,
     None),
    ("os-provisioning-timed-out", 1, deployment_failed("OSProvisioningTimedOut", "x"),
     "OSProvisioningTimedOut", L, None),
    ("quota-operation-not-allowed", 1, preflight("OperationNotAllowed", QUOTA),
     "OperationNotAllowed", P, None),
    ("quota-exceeded", 1, preflight("QuotaExceeded", QUOTA), "QuotaExceeded", P, None),
    ("authorization", 1, http_error("AuthorizationFailed", "no"), "AuthorizationFailed", P, None),
    ("property-change", 1, deployment_failed("PropertyChangeNotAllowed", "x"),
     "PropertyChangeNotAllowed", P, None),
    ("invalid-template-alone", 1, http_error("InvalidTemplateDeployment", "bad"),
     "InvalidTemplateDeployment", P, None),
    ("invalid-template-with-inner", 1, http_error(
        "InvalidTemplateDeployment", "bad", inner=("InvalidParameter", "param")),
     "InvalidParameter", P, None),
    ("deployment-failed-alone", 1, deployment_failed("ResourceDeploymentFailure", "x"),
     "ResourceDeploymentFailure", T, None),
    ("unknown-azure-code", 1, deployment_failed("BrandNewCode", "x"), "BrandNewCode", P, None),
    ("argument-error", 2, "ERROR: argument --timeout: invalid int value: 'abc'\n",
     "ArgumentError", P, None),
    ("not-logged-in", 1, "ERROR: Please run 'az login' to setup account.\n", "NotLoggedIn", P,
     None),
    ("not-found-with-code", 3, http_error("ResourceNotFound", "gone"), "ResourceNotFound", P,
     None),
    ("not-found-without-code", 3, "ERROR: Not Found\n", "ResourceNotFound", P, None),
]


@pytest.mark.parametrize(("exit_code", "stderr", "code", "kind", "retry_after"),
                         [row[1:] for row in SYNTHETIC], ids=[row[0] for row in SYNTHETIC])
def test_classify_follows_the_table(exit_code: int, stderr: str, code: str, kind: FailureKind,
                                    retry_after: float | None) -> None:
    error = classify(exit_code, stderr)
    assert (error.code, error.kind, error.retry_after) == (code, kind, retry_after)
    assert error.message


ARM_THROTTLE = ("Number of 'write' requests for subscription 'sub' actually exceeded the limit "
                "of '1200' for time interval '01:00:00'. Please try again after '{n}' seconds.")
COMPUTE_THROTTLE = ("The request is being throttled as the limit has been reached for operation "
                    "type - Read_30Min. For more information, see - https://aka.ms/computethrottling")

# azure-cli.md §6: every throttle and 5xx code is transient, whatever command printed it.
THROTTLE_AND_5XX = [
    pytest.param(http_error("SubscriptionRequestsThrottled", ARM_THROTTLE.format(n=17)),
                 "SubscriptionRequestsThrottled", 17.0, id="subscription-throttled"),
    pytest.param(http_error("ResourceGroupRequestsThrottled", ARM_THROTTLE.format(n=5)),
                 "ResourceGroupRequestsThrottled", 5.0, id="resource-group-throttled"),
    pytest.param(http_error("TenantRequestsThrottled", ARM_THROTTLE.format(n=30)),
                 "TenantRequestsThrottled", 30.0, id="tenant-throttled"),
    pytest.param(http_error("TooManyRequests", COMPUTE_THROTTLE), "TooManyRequests", None,
                 id="compute-throttled"),
    pytest.param(preflight("SubscriptionRequestsThrottled", ARM_THROTTLE.format(n=8)),
                 "SubscriptionRequestsThrottled", 8.0, id="throttled-create-preflight"),
    pytest.param(http_error("TooManyRequests", "throttled\nRetry-After: 12"), "TooManyRequests",
                 12.0, id="retry-after-value"),
    pytest.param(http_error("TooManyRequests", "Retry-After: 3. " + ARM_THROTTLE.format(n=9)),
                 "TooManyRequests", 9.0, id="both-hints-the-longer-wins"),
    pytest.param(http_error("ServerTimeout", "The server timed out."), "ServerTimeout", None,
                 id="server-timeout"),
    pytest.param(deployment_failed("NetworkingInternalOperationError", "An error occurred."),
                 "NetworkingInternalOperationError", None, id="networking-internal"),
    pytest.param(http_error("InternalServerError", "Encountered internal server error."),
                 "InternalServerError", None, id="internal-server-error"),
    pytest.param(http_error("RetryableError", "A retryable error occurred."), "RetryableError",
                 None, id="retryable-error"),
    pytest.param(http_error("GatewayTimeout", "The gateway did not receive a response."),
                 "GatewayTimeout", None, id="gateway-timeout"),
    pytest.param(http_error("ServiceUnavailable", "Service is unavailable."),
                 "ServiceUnavailable", None, id="service-unavailable"),
    pytest.param(http_error("InternalExecutionError", "An internal execution error occurred."),
                 "InternalExecutionError", None, id="internal-execution-error"),
]


@pytest.mark.parametrize(("stderr", "code", "retry_after"), THROTTLE_AND_5XX)
def test_every_throttle_and_server_error_is_transient_with_its_retry_after(
        stderr: str, code: str, retry_after: float | None) -> None:
    error = classify(1, stderr)
    assert (error.code, error.kind, error.retry_after) == (code, T, retry_after)


def test_classify_gives_each_code_its_own_message() -> None:
    error = classify(1, deployment_failed("ZonalAllocationFailed", "no room in zone 2"))
    assert error.message == "no room in zone 2"
    assert classify(1, "").message == "az exited with code 1"


def test_a_parenthesised_word_is_not_a_code_unless_a_code_line_confirms_it() -> None:
    error = classify(1, "ERROR: request failed (Minimum) and more\n")
    assert (error.code, error.message) == ("Unknown", "request failed (Minimum) and more")


# --- AzResult --------------------------------------------------------------------------------

def result(exit_code: int = 0, *, stderr: str = "", timed_out: bool = False) -> AzResult:
    return AzResult(argv=["az", "vm", "show"], exit_code=exit_code, stdout="", stderr=stderr,
                    duration=2.0, data=None, timed_out=timed_out)


def test_a_result_with_stderr_but_exit_zero_is_ok() -> None:
    ok = result(stderr="WARNING: costs may apply\n")
    assert ok.ok and ok.error is None and not ok.not_found


def test_a_timed_out_result_is_a_transient_timeout_error() -> None:
    error = result(timed_out=True).error
    assert error is not None and (error.code, error.kind) == ("Timeout", T)
    assert "vm show" in error.message


def test_exit_three_is_not_found() -> None:
    missing = result(3, stderr=http_error("ResourceNotFound", "gone"))
    assert missing.not_found and not missing.ok
    assert missing.error == classify(3, missing.stderr)


# --- argv builders ---------------------------------------------------------------------------

FULL_SPEC = VMSpec(
    name="gpu-01", resource_group="rg-gpu", image="Ubuntu2204", location="eastus",
    size="Standard_NC24ads_A100_v4", zone="2", priority="Spot", eviction_policy="Delete",
    admin_username="ops", ssh_key_name="ci-key", vnet_name="vnet1", subnet="default",
    nsg="nsg1", public_ip_sku="Standard", custom_data="#cloud-config\n", os_disk_size_gb=128,
    tags={"team": "ml"}, extra_args=["--accelerated-networking", "true"], max_attempts=5,
)


def test_vm_create_args_maps_every_flag_of_a_full_spec() -> None:
    args = azcli.vm_create_args(FULL_SPEC, deployment_id="dep-1", custom_data_path="/tmp/cd")
    assert args == [
        "vm", "create", "--resource-group", "rg-gpu", "--name", "gpu-01",
        "--location", "eastus", "--image", "Ubuntu2204", "--size", "Standard_NC24ads_A100_v4",
        "--priority", "Spot", "--admin-username", "ops", "--public-ip-sku", "Standard",
        "--zone", "2", "--eviction-policy", "Delete", "--ssh-key-name", "ci-key",
        "--vnet-name", "vnet1", "--subnet", "default", "--nsg", "nsg1",
        "--custom-data", "/tmp/cd", "--os-disk-size-gb", "128",
        "--tags", "team=ml", "vmlaunch-deployment=dep-1", "managed-by=azure-vm-launch-manager",
        "--nic-delete-option", "Delete", "--os-disk-delete-option", "Delete",
        *COMMON, "--accelerated-networking", "true",
    ]


def test_vm_create_args_of_a_minimal_spec_has_no_optional_flags() -> None:
    spec = VMSpec(name="vm1", resource_group="rg", image="Ubuntu2204", location="westus",
                  ssh_public_key="ssh-ed25519 AAAAC3 ops@host")
    args = azcli.vm_create_args(spec, deployment_id="d", custom_data_path=None)
    assert args == [
        "vm", "create", "--resource-group", "rg", "--name", "vm1", "--location", "westus",
        "--image", "Ubuntu2204", "--size", "Standard_D2s_v5", "--priority", "Regular",
        "--admin-username", "azureuser", "--public-ip-sku", "Standard",
        "--ssh-key-values", "ssh-ed25519 AAAAC3 ops@host",
        "--tags", "vmlaunch-deployment=d", "managed-by=azure-vm-launch-manager",
        "--nic-delete-option", "Delete", "--os-disk-delete-option", "Delete", *COMMON,
    ]
    assert "--zone" not in args and "--custom-data" not in args


def test_vm_create_args_refuses_a_spec_without_location() -> None:
    with pytest.raises(ValueError, match="location"):
        azcli.vm_create_args(FULL_SPEC.replace(location=None), deployment_id="d",
                             custom_data_path="/tmp/cd")


def test_vm_create_args_refuses_custom_data_content_without_a_path() -> None:
    with pytest.raises(ValueError, match="custom data"):
        azcli.vm_create_args(FULL_SPEC, deployment_id="d", custom_data_path=None)


def test_vm_create_command_keeps_the_custom_data_file_for_the_block_only() -> None:
    with argv.vm_create_command(FULL_SPEC, deployment_id="d") as args:
        path = Path(args[args.index("--custom-data") + 1])
        assert path.read_text() == FULL_SPEC.custom_data
        assert path.stat().st_mode & 0o777 == 0o600
    assert not path.exists()
    with argv.vm_create_command(FULL_SPEC.replace(custom_data=None), deployment_id="d") as args:
        assert "--custom-data" not in args


@pytest.mark.parametrize(("args", "expected"), [
    (azcli.vm_show_args("rg", "vm1"), ["vm", "show", "-g", "rg", "-n", "vm1", "-d"]),
    (azcli.vm_list_args("rg"), ["vm", "list", "-g", "rg", "-d"]),
    (azcli.vm_list_args("rg", details=False), ["vm", "list", "-g", "rg"]),
    (azcli.vm_list_args("rg", details=False, tracked_fields=True),
     ["vm", "list", "-g", "rg", "--query", argv.TRACKED_FIELDS]),
    (argv.vm_instance_view_args("rg", "vm1"),
     ["vm", "get-instance-view", "-g", "rg", "-n", "vm1"]),
    (azcli.vm_delete_args("rg", "vm1"), ["vm", "delete", "-g", "rg", "-n", "vm1", "--yes"]),
    (azcli.vm_delete_args("rg", "vm1", no_wait=True),
     ["vm", "delete", "-g", "rg", "-n", "vm1", "--yes", "--no-wait"]),
    (azcli.vm_wait_args("rg", "vm1", condition="deleted", timeout=60, interval=5),
     ["vm", "wait", "-g", "rg", "-n", "vm1", "--deleted", "--timeout", "60", "--interval", "5"]),
    (azcli.run_shell_args("rg", "vm1", "cloud-init status"),
     ["vm", "run-command", "invoke", "-g", "rg", "-n", "vm1", "--command-id", "RunShellScript",
      "--scripts", "cloud-init status"]),
    (azcli.public_ip_delete_args("rg", "vm1PublicIP"),
     ["network", "public-ip", "delete", "-g", "rg", "-n", "vm1PublicIP"]),
    (azcli.group_show_args("rg"), ["group", "show", "--name", "rg"]),
], ids=["show", "list", "list-no-details", "list-tracked-fields", "instance-view", "delete",
        "delete-no-wait", "wait", "run-shell", "public-ip", "group"])
def test_builders_give_exact_argv(args: list[str], expected: list[str]) -> None:
    assert args == [*expected, *COMMON]


def test_a_no_wait_create_adds_the_flag_before_the_output_options() -> None:
    plain = argv.vm_create_args(FULL_SPEC, deployment_id="d", custom_data_path="/f")
    no_wait = argv.vm_create_args(FULL_SPEC, deployment_id="d", custom_data_path="/f",
                                  no_wait=True)
    at = plain.index("--output")
    assert no_wait == [*plain[:at], "--no-wait", *plain[at:]]


def instance_view(*statuses: dict) -> dict:
    return {"name": "vm1", "provisioningState": "Failed",
            "instanceView": {"statuses": list(statuses)}}


@pytest.mark.parametrize(("code", "message", "kind"), [
    ("ZonalAllocationFailed", "Allocation failed. We do not have sufficient capacity.",
     FailureKind.CAPACITY),
    ("InternalServerError", "An internal error occurred.", FailureKind.TRANSIENT),
    ("OSProvisioningTimedOut", "OS Provisioning did not finish.", FailureKind.LOOK),
    ("SomethingNew", "A code the table does not know.", FailureKind.PERMANENT),
])
def test_a_failed_instance_view_gives_its_code_through_the_failure_table(
        code: str, message: str, kind: FailureKind) -> None:
    vm = instance_view({"code": f"ProvisioningState/failed/{code}", "level": "Error",
                        "displayStatus": "Provisioning failed", "message": message},
                       {"code": "PowerState/deallocated", "level": "Info"})
    failure = failures.provisioning_failure(vm)
    assert failure is not None
    assert (failure.code, failure.message, failure.kind) == (code, message, kind)


@pytest.mark.parametrize("vm", [
    instance_view({"code": "ProvisioningState/succeeded"}), instance_view(), {}, None, [],
    instance_view({"code": "ProvisioningState/failed/"}), {"instanceView": {"statuses": "x"}},
], ids=["succeeded", "no-statuses", "empty", "none", "list", "no-code", "bad-statuses"])
def test_an_instance_view_without_a_failed_status_gives_no_failure(vm: object) -> None:
    assert failures.provisioning_failure(vm) is None


def test_vm_wait_args_refuses_an_unknown_condition() -> None:
    with pytest.raises(ValueError, match="created"):
        azcli.vm_wait_args("rg", "vm1", condition="running", timeout=1, interval=1)


@pytest.mark.parametrize(("args", "key"), [
    (["vm", "create", "-g", "rg"], "vm create"),
    (["vm", "run-command", "invoke"], "vm run-command"),
    (["network", "public-ip", "delete"], "network public-ip"),
    (["group", "show", "--name", "rg"], "group show"),
    (["--version"], ""),
])
def test_command_key_is_the_first_two_words(args: list[str], key: str) -> None:
    assert azcli.command_key(args) == key


def test_redact_elides_ssh_key_values() -> None:
    assert azcli.redact(["vm", "create", "--ssh-key-values", "ssh-rsa AAAA"]) == [
        "vm", "create", "--ssh-key-values", "<12 chars elided>"]


# --- AzCli against real scripts -------------------------------------------------------------

def script(tmp_path: Path, body: str, *, name: str = "az") -> str:
    """An executable stand-in for az; `body` is Python unless it starts with a shebang."""
    path = tmp_path / name
    path.write_text(body if body.startswith("#!") else f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing reaps orphans in this container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def all_gone(pids: list[int], *, timeout: float = 5.0) -> bool:
    """Signals are delivered asynchronously: give a SIGKILLed process a moment."""
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return all(gone(pid) for pid in pids)


async def wait_for_file(path: Path, *, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)
    return path.read_text()


ECHO = "import json, sys\nprint(json.dumps({'argv': sys.argv[1:]}))\n"


async def test_run_parses_json_and_keeps_stderr(tmp_path: Path) -> None:
    body = ECHO + "print('WARNING: cost hint', file=sys.stderr)\n"
    az = AzCli(executable=script(tmp_path, body))
    res = await az.run(["vm", "show", "-g", "rg"], timeout=10)
    assert res.ok and res.error is None
    assert res.data == {"argv": ["vm", "show", "-g", "rg"]}
    assert res.stderr == "WARNING: cost hint\n"
    assert res.argv[1:] == ["vm", "show", "-g", "rg"] and res.duration > 0


async def test_run_gives_none_data_for_empty_or_non_json_stdout(tmp_path: Path) -> None:
    az = AzCli(executable=script(tmp_path, "print('not json')\n"))
    assert (await az.run(["vm", "show"])).data is None
    assert (await AzCli(executable="/bin/true").run(["vm", "delete"])).data is None


async def test_run_reports_exit_three_as_not_found(tmp_path: Path) -> None:
    stderr = http_error("ResourceNotFound", "The Resource 'vm1' was not found.")
    body = f"import sys\nsys.stderr.write({stderr!r})\nsys.exit(3)\n"
    res = await AzCli(executable=script(tmp_path, body)).show_vm("rg", "vm1")
    assert res.not_found and not res.ok
    assert res.error is not None and res.error.code == "ResourceNotFound"


async def test_run_sets_the_telemetry_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMLAUNCH_PASSED_THROUGH", "yes")
    body = "import json, os\nprint(json.dumps(dict(os.environ)))\n"
    res = await AzCli(executable=script(tmp_path, body)).run(["group", "show"])
    assert res.data["AZURE_CORE_COLLECT_TELEMETRY"] == "no"
    assert res.data["AZURE_EXTENSION_USE_DYNAMIC_INSTALL"] == "no"
    assert res.data["VMLAUNCH_PASSED_THROUGH"] == "yes"


async def test_run_process_runs_any_command_as_a_result() -> None:
    failed = await procs.run_process(["false"], timeout=10)
    assert (failed.ok, failed.exit_code, failed.argv) == (False, 1, ["false"])
    slow = await procs.run_process(["sleep", "30"], timeout=0.2, kill_grace=0.5)
    assert slow.timed_out and not slow.ok
    assert 0.2 <= slow.duration < 5


def test_the_executable_comes_from_az_cli_then_defaults_to_az(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZ_CLI", "/opt/az-sim")
    assert AzCli().executable == "/opt/az-sim"
    assert AzCli("/usr/bin/az").executable == "/usr/bin/az"
    monkeypatch.delenv("AZ_CLI")
    assert AzCli().executable == "az"


async def test_calls_are_counted_per_subcommand() -> None:
    az = AzCli(executable="/bin/true")
    await az.show_vm("rg", "a")
    await az.show_vm("rg", "b")
    await az.delete_public_ip("rg", "a")
    await az.run_shell("rg", "a", "true", timeout=10)
    await az.group_show("rg")
    await az.delete_vm("rg", "a")
    assert az.calls == {"vm show": 2, "network public-ip": 1, "vm run-command": 1,
                        "group show": 1, "vm delete": 1}


STAT_CUSTOM_DATA = """import json, os, sys
path = sys.argv[sys.argv.index('--custom-data') + 1]
print(json.dumps({'argv': sys.argv[1:], 'path': path, 'mode': oct(os.stat(path).st_mode & 0o777),
                  'content': open(path).read()}))
"""


async def test_create_vm_passes_custom_data_in_a_private_file_removed_after(
        tmp_path: Path) -> None:
    spec = FULL_SPEC.replace(custom_data="#cloud-config\npassword: s3cret\n", ssh_key_name=None,
                             ssh_public_key="ssh-ed25519 AAAAC3 ops@host")
    az = AzCli(executable=script(tmp_path, STAT_CUSTOM_DATA))
    res = await az.create_vm(spec, deployment_id="dep-1", timeout=10)
    assert res.ok, res.stderr
    assert res.data["mode"] == "0o600"
    assert res.data["content"] == spec.custom_data
    assert not Path(res.data["path"]).exists()
    assert "s3cret" not in " ".join(res.argv) and "AAAAC3" not in " ".join(res.argv)
    assert res.data["path"] in res.argv
    assert az.calls == {"vm create": 1}


async def test_logs_name_the_custom_data_path_but_never_secrets(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="azcli")
    spec = FULL_SPEC.replace(custom_data="password: s3cret\n", ssh_key_name=None,
                             ssh_public_key="ssh-ed25519 AAAAC3 ops@host")
    res = await AzCli(executable=script(tmp_path, STAT_CUSTOM_DATA)).create_vm(
        spec, deployment_id="d", timeout=10)
    assert res.data["path"] in caplog.text and "vm create" in caplog.text
    assert "s3cret" not in caplog.text and "AAAAC3" not in caplog.text


async def test_create_vm_removes_custom_data_after_a_timeout(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    body = (f"import sys, time\nopen({str(seen)!r}, 'w').write("
            "sys.argv[sys.argv.index('--custom-data') + 1] + '\\n')\ntime.sleep(60)\n")
    az = AzCli(executable=script(tmp_path, body), kill_grace=1)
    res = await az.create_vm(FULL_SPEC, deployment_id="d", timeout=1)
    assert res.timed_out and res.error is not None and res.error.code == "Timeout"
    assert not Path(seen.read_text().strip()).exists()


async def test_wait_vm_reports_azs_silent_timeout_as_timed_out(tmp_path: Path) -> None:
    sample = next(case for case in ERROR_CASES if case["case"] == "vm wait timeout")
    body = ("import json, sys\nopen(sys.argv[0] + '.args', 'w').write(json.dumps(sys.argv[1:]))\n"
            f"sys.stdout.write({sample['stdout']!r})\nsys.exit({sample['exit_code']})\n")
    exe = script(tmp_path, body)
    res = await AzCli(executable=exe).wait_vm("rg", "vm1", condition="created", timeout=4.5,
                                              interval=0.5)
    assert res.timed_out and not res.ok and res.error.code == "Timeout"
    assert json.loads(Path(exe + ".args").read_text())[6:11] == [
        "--created", "--timeout", "5", "--interval", "1"]


TREE = """#!/bin/bash
{trap}
sleep 1000 &
echo "$$ $!" > {pidfile}
{tail}
"""


@pytest.mark.parametrize(("trap", "tail", "times_out"), [
    ("", "wait", True),
    ("trap '' TERM", "while true; do sleep 0.05; done", True),
    # procguard ends what the command left in its group when the command exits, so the
    # straggler holding stdout is killed then and the call ends with the command's exit.
    ("", "exit 0", False),
], ids=["terminates", "ignores-sigterm", "parent-exits-child-holds-stdout"])
@pytest.mark.timeout(10)
async def test_a_timeout_kills_the_whole_tree(tmp_path: Path, trap: str, tail: str,
                                              times_out: bool) -> None:
    pidfile = tmp_path / "pids"
    exe = script(tmp_path, TREE.format(trap=trap, pidfile=pidfile, tail=tail))
    started = time.monotonic()
    res = await AzCli(executable=exe, kill_grace=0.5).run(["vm", "show"], timeout=0.5)
    assert res.timed_out is times_out and res.ok is not times_out
    assert time.monotonic() - started < 5
    assert await all_gone([int(pid) for pid in pidfile.read_text().split()])


@pytest.mark.timeout(10)
async def test_cancelling_run_kills_the_tree_and_propagates(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    exe = script(tmp_path, TREE.format(trap="", pidfile=pidfile, tail="wait"))
    task = asyncio.create_task(AzCli(executable=exe, kill_grace=0.5).run(["vm", "create"]))
    pids = (await wait_for_file(pidfile)).split()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await all_gone([int(pid) for pid in pids])


@pytest.mark.timeout(15)
@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_cancelling_while_az_is_being_spawned_leaves_nothing_behind(
        tmp_path: Path, yields: int) -> None:
    pidfile = tmp_path / "pids"
    exe = script(tmp_path, TREE.format(trap="", pidfile=pidfile, tail="wait"))
    task = asyncio.create_task(AzCli(executable=exe, kill_grace=0.5).run(["vm", "show"]))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # a script that was never killed would write its pids by now
    if pidfile.exists():
        assert await all_gone([int(pid) for pid in pidfile.read_text().split()])


async def test_token_bucket_spaces_calls() -> None:
    bucket = TokenBucket(rate=20, burst=1)
    started = time.monotonic()
    for _ in range(5):
        await bucket.acquire()
    assert 0.18 <= time.monotonic() - started < 1.0


async def test_quick_reads_run_at_our_priority_and_the_other_commands_nicer(
        tmp_path: Path) -> None:
    """A listing is what every report waits for: it must not queue for the CPU behind the
    creates (which run 19 nicer, as does everything else az does)."""
    az = AzCli(executable=script(tmp_path, '#!/bin/bash\necho "[$(nice)]"\n'))
    ours = os.nice(0)
    for read in (["vm", "list", "-g", "rg"], ["vm", "list-ip-addresses", "-g", "rg"]):
        assert (await az.run(read, timeout=30)).data == [ours + READ_NICENESS]
    for other in (["vm", "create", "-n", "x"], ["vm", "run-command", "invoke"]):
        assert (await az.run(other, timeout=30)).data == [min(19, ours + procs.COMMAND_NICENESS)]


async def test_only_deletes_are_rate_limited_creates_are_left_to_the_write_budget() -> None:
    az = AzCli(executable="/bin/true", write_rate=2)  # burst 2, then one every 0.5 s
    spec = VMSpec(name="vm1", resource_group="rg", image="Debian12", location="westus2")
    for _ in range(8):
        await az.show_vm("rg", "vm1")
        await az.create_vm(spec, deployment_id="dep", timeout=10, no_wait=True)
    assert az._bucket._tokens == az._bucket.burst  # reads and creates take no token
    started = time.monotonic()
    for _ in range(6):
        await az.delete_vm("rg", "vm1")
    # The 4 deletes past the burst cannot start sooner than 4 x 0.5 s after the first,
    # however loaded the machine (the bucket refills while the processes run); six
    # unthrottled /bin/true runs take a fraction of that.
    assert time.monotonic() - started >= 2.0 - 0.01


PARENT = """import asyncio, sys
sys.path.insert(0, {root!r})
from vmlaunch.azure.azcli import AzCli
asyncio.run(AzCli(executable=sys.argv[1]).run(["vm", "create"], timeout=60))
"""


LAUNCHERS = {
    # az-sim and pip-style launchers exec the CLI; the deb/rpm `az` is a bash wrapper that
    # starts python as a grandchild, which PR_SET_PDEATHSIG alone would not reach.
    "exec": "#!/bin/bash\necho $$ > {pidfile}\nexec sleep 1000\n",
    "fork": "#!/bin/bash\nsleep 1000 &\necho $! > {pidfile}\nwait\n",
}


@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
async def test_az_dies_with_its_parent_even_on_sigkill(tmp_path: Path, launcher: str) -> None:
    pidfile = tmp_path / "pid"
    child = script(tmp_path, launcher.format(pidfile=pidfile))
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=str(REPO_ROOT)), child])
    pid = 0
    try:
        pid = int(await wait_for_file(pidfile, timeout=10))
        assert parent.pid in [p.pid for p in psutil.Process(pid).parents()]
        parent.kill()
        parent.wait()
        assert await all_gone([pid])
    finally:
        parent.kill()
        parent.wait()
        if pid and not gone(pid):
            os.kill(pid, 9)
