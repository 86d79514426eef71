"""The az simulator's error type, and its error texts worded as azure-cli 2.91.0 and ARM print them.
"""

from __future__ import annotations

import json
import re

from .resources import ARM, SUBSCRIPTION, guid, random_hex, vm_id

CLI_REF = "\nhttps://aka.ms/cli_ref\nRead more about the command in reference docs\n"
QUERY_REF = (
    "To learn more about --query, please visit: "
    "'https://learn.microsoft.com/cli/azure/query-azure-cli'\n"
)


class AzError(Exception):
    """A failed command: `text` is the whole stderr, `exit_code` what az returns."""

    def __init__(self, text: str, exit_code: int = 1) -> None:
        super().__init__(text)
        self.text = text if text.endswith("\n") else text + "\n"
        self.exit_code = exit_code


class UsageError(AzError):
    """An argparse error: azure-cli prints it with a recommendation and exits 2."""

    def __init__(self, message: str, *, recommendation: str = CLI_REF) -> None:
        super().__init__(f"ERROR: {message}\n{recommendation}", 2)


def http_error(code: str, message: str, *, exit_code: int = 1) -> AzError:
    """An ARM error as azure-core's HttpResponseError prints it."""
    return AzError(f"ERROR: ({code}) {message}\nCode: {code}\nMessage: {message}\n", exit_code)


DEPLOY_MESSAGE = ("At least one resource deployment operation failed. Please list deployment "
                  "operations for details. Please see https://aka.ms/arm-deployment-operations "
                  "for usage details.")
TERMINAL_FAILED = ("The resource write operation failed to complete successfully, because it "
                   "reached terminal provisioning state 'Failed'.")
ALLOCATION = ("Allocation failed. We do not have sufficient capacity for the requested VM size "
              "in this {where}. Read more about improving likelihood of allocation success at "
              "http://aka.ms/allocation-guidance")
SITE = "/opt/az/lib/python3.13/site-packages"
TRACEBACK_HEAD = (
    "ERROR: The command failed with an unexpected error. Here is the traceback:\n"
    "ERROR: The content for this response was already consumed\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/__init__.py", line 706, in _run_job\n'
    "    result = cmd_copy(params)\n"
    f'  File "{SITE}/azure/cli/command_modules/vm/custom.py", line 1248, in create_vm\n'
    "    LongRunningOperation(cmd.cli_ctx)(client.begin_create_or_update(resource_group_name, "
    "deployment_name, deployment))\n"
    f'  File "{SITE}/azure/mgmt/resource/resources/v2025_04_01/operations/_operations.py", '
    "line 11174, in _create_or_update_initial\n"
    "    raise HttpResponseError(response=response, error_format=ARMErrorFormat)\n"
    "azure.core.exceptions.HttpResponseError: ")
TRACEBACK_TAIL = (
    "\nDuring handling of the above exception, another exception occurred:\n\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/arm.py", line 109, in '
    "handle_template_based_exception\n"
    "    raise CLIError(ex.inner_exception.error.message)\n"
    "AttributeError: 'NoneType' object has no attribute 'error'\n"
    "\nDuring handling of the above exception, another exception occurred:\n\n"
    "Traceback (most recent call last):\n"
    f'  File "{SITE}/azure/cli/core/commands/arm.py", line 112, in '
    "handle_template_based_exception\n"
    "    raise_subdivision_deployment_error(ex.response.internal_response.text, ex.error.code "
    "if ex.error else None)\n"
    f'  File "{SITE}/requests/models.py", line 1037, in content\n'
    '    raise RuntimeError("The content for this response was already consumed")\n'
    "RuntimeError: The content for this response was already consumed\n"
    "To check existing issues, please visit: https://github.com/Azure/azure-cli/issues\n")


def not_found(kind: str, rg: str, name: str) -> AzError:
    return http_error("ResourceNotFound", f"The Resource '{kind}/{name}' under resource group "
                      f"'{rg}' was not found. For more details please go to "
                      "https://aka.ms/ARMResourceNotFoundFix", exit_code=3)


def rg_not_found(rg: str) -> AzError:
    return http_error("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.",
                      exit_code=3)


def failure_message(code: str, spec: dict) -> str:
    """Azure's text for a failure code (from public issues), filled in for this VM."""
    size, loc = spec["size"], spec["location"]
    digits = re.search(r"\d+", size)
    cores = int(digits.group()) if digits else 4
    family = "standard" + re.sub(r"^Standard_([A-Z]+).*", r"\1", size) + "Family"
    texts = {
        "ZonalAllocationFailed": ALLOCATION.format(where="zone"),
        "AllocationFailed": ALLOCATION.format(where="region"),
        "OverconstrainedAllocationRequest": "Allocation failed. VM(s) with the following "
        "constraints cannot be allocated, because the condition is too restrictive. Please "
        "remove some constraints and try again.",
        "SkuNotAvailable": "The requested VM size for resource 'Following SKUs have failed for "
        f"Capacity Restrictions: {size}' is currently not available in location '{loc}'. Please "
        "try another size or deploy to a different location or different zone. See "
        "https://aka.ms/azureskunotavailable for details.",
        "OperationNotAllowed": "Operation could not be completed as it results in exceeding "
        f"approved {family} Cores quota. Additional details - Deployment Model: Resource "
        f"Manager, Location: {loc}, Current Limit: 24, Current Usage: 24, Additional Required: "
        f"{cores}, (Minimum) New Limit Required: {24 + cores}. Submit a request for Quota "
        "increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/"
        "UsageAndQuota.ReactView by specifying parameters listed in the 'Details' section for "
        "deployment to succeed. Please read more about quota limits at "
        "https://docs.microsoft.com/en-us/azure/azure-supportability/per-vm-quota-requests",
        "InvalidParameter": "The value of parameter linuxConfiguration.ssh.publicKeys.keyData "
        "is invalid.",
        "OSProvisioningTimedOut": f"OS Provisioning for VM '{spec['name']}' did not finish in "
        "the allotted time. The VM may still finish provisioning successfully. Please check "
        "provisioning state later.",
        "InternalServerError": "An unexpected error occured while processing the network "
        "profile of the VM. Please retry later.",
    }
    texts["QuotaExceeded"] = texts["OperationNotAllowed"]
    texts["OverconstrainedZonalAllocationRequest"] = texts["OverconstrainedAllocationRequest"]
    return texts.get(code, f"The operation failed with error code '{code}'.")


def deployment_error(rg: str, name: str, code: str, message: str, *, nested: bool) -> AzError:
    """An async deployment failure: azure-cli prints ARM's raw body on one line."""
    inner = [{"code": code, "message": message}]
    if nested:  # the VM resource exists and reached the terminal state Failed
        inner = [{"code": "ResourceDeploymentFailure", "target": vm_id(rg, name),
                  "message": TERMINAL_FAILED, "details": inner}]
    body = {"status": "Failed", "error": {
        "code": "DeploymentFailed",
        "target": f"{ARM}/{rg}/providers/Microsoft.Resources/deployments/vm_deploy_{random_hex()}",
        "message": DEPLOY_MESSAGE, "details": inner}}
    return AzError("ERROR: " + json.dumps(body, separators=(",", ":")) + "\n")


def traceback_error(code: str, message: str, inner: tuple[str, str] | None = None) -> AzError:
    """A synchronous 4xx on the deployment PUT, as azure-cli 2.91.0 crashes printing it."""
    text = f"{TRACEBACK_HEAD}({code}) {message}\nCode: {code}\nMessage: {message}\n"
    if inner is not None:
        icode, imsg = inner
        text += f"Exception Details:\t({icode}) {imsg}\n\tCode: {icode}\n\tMessage: {imsg}\n"
        if icode == "InvalidParameter":
            text += "\tTarget: linuxConfiguration.ssh.publicKeys.keyData\n"
    return AzError(text + TRACEBACK_TAIL)


def preflight_error(code: str, message: str) -> AzError:
    dep = f"vm_deploy_{random_hex()}"
    outer = (f"The template deployment '{dep}' is not valid according to the validation "
             f"procedure. The tracking id is '{guid(random_hex())}'. See inner errors for details.")
    return traceback_error("InvalidTemplateDeployment", outer, (code, message))


WRITE_COMMANDS = ("vm create", "vm delete", "network public-ip delete", "network nic delete",
                  "disk delete", "vm run-command invoke")
ARM_LIMIT = ("Number of '{kind}' requests for {scope} actually exceeded the limit of '{limit}' "
             "for time interval '01:00:00'. Please try again after '{after}' seconds.")
DIAGNOSTIC = ("Diagnostic information: timestamp '20260101T000000Z', subscription id "
              f"'{SUBSCRIPTION}', tracking id '{{tracking}}', request correlation id "
              "'{tracking}'.")
# Throttle and transient 5xx texts (azure-cli.md section 6); {op}, {kind}, {limit}, {after},
# {rg} and {tracking} are filled in per call.
THROTTLE_MESSAGES = {
    "TooManyRequests": "The request is being throttled as the limit has been reached for "
    "operation type - {op}. For more information, see - https://aka.ms/computethrottling",
    "SubscriptionRequestsThrottled": ARM_LIMIT.replace(
        "{scope}", f"subscription '{SUBSCRIPTION}'"),
    "ResourceGroupRequestsThrottled": ARM_LIMIT.replace(
        "{scope}", f"subscription '{SUBSCRIPTION}' and resource group '{{rg}}'"),
    "TenantRequestsThrottled": ARM_LIMIT.replace("{scope}", "tenant"),
    "InternalServerError": f"Encountered internal server error. {DIAGNOSTIC}",
    "ServerTimeout": f"The request timed out. {DIAGNOSTIC}",
    "GatewayTimeout": "The gateway did not receive a response from 'Microsoft.Compute' within "
    "the specified time period.",
    "ServiceUnavailable": "The service is currently unavailable. Please try again later.",
    "NetworkingInternalOperationError": "An unknown error occurred.",
    "RetryableError": "A retryable error occurred.",
}


def throttle_error(command: str, throttle: dict, rg: str | None = None) -> AzError:
    """A throttled or transiently failed call, before it did anything; a `vm create` fails on
    the deployment PUT, which azure-cli 2.91.0 prints as its crash traceback."""
    code = throttle.get("code", "TooManyRequests")
    write = command in WRITE_COMMANDS
    default = THROTTLE_MESSAGES.get(code, "Number of requests for subscription "
                                    f"'{SUBSCRIPTION}' exceeded the limit.")
    message = throttle.get("message") or default.format(
        op="PutVM3Min" if command == "vm create" else "Read_30Min",
        kind="write" if write else "read", limit=1200 if write else 12000,
        after=f"{throttle.get('retry_after', 5):g}", rg=rg or "", tracking=guid(random_hex()))
    if command == "vm create":
        return traceback_error(code, message)
    return http_error(code, message)


SDK_DEBUG = "DEBUG: cli.azure.cli.core.sdk.policies: "


def put_vm_throttled(op: str, retry_after: int, remaining: str, *, debug: bool) -> AzError:
    """The Compute RP's 429 on a VM PUT. Its Retry-After is a response header, which azure-cli
    shows only in the --debug log of the response, never in the error text."""
    message = THROTTLE_MESSAGES["TooManyRequests"].format(op=op)
    error = traceback_error("TooManyRequests", message)
    if debug:
        error.text = (f"{SDK_DEBUG}Response status: 429\n{SDK_DEBUG}Response headers:\n"
                      f"{SDK_DEBUG}    'Retry-After': '{retry_after}'\n"
                      f"{SDK_DEBUG}    'x-ms-ratelimit-remaining-resource': '{remaining}'\n"
                      + error.text)
    return error


CONFLICT = ("Run command extension execution is in progress. Please wait for completion "
            "before invoking a run command.")
PREEMPTED = "Operation execution has been preempted by a more recent operation."
MARKED_FOR_DELETION = ("Operation 'Create or Update VM' is not allowed on VM '{name}' since the "
                       "VM is marked for deletion. You can only retry the Delete operation (or "
                       "wait for an ongoing one to complete).")
NO_TTY = "WARNING: Unable to prompt for confirmation as no tty available. Use --yes.\n"


def nic_reserved_message(nic: dict, reservation_seconds: float) -> str:
    secs = f"{reservation_seconds:g}"
    return (f"Nic(s) in request is reserved for another Virtual Machine for {secs} seconds. "
            f"Please provide another nic(s) or retry after {secs} seconds. Reserved VM: "
            f"{vm_id(nic['resource_group'], nic.get('reserved_for') or '')}")
