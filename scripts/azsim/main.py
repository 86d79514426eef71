"""Azure CLI simulator: behaves like `az` 2.91.0 from outside, for the VM commands we use.

This module is the entry point and the command table; scripts/az-sim calls its `main`. The
other modules of the package hold the scenario, the shared state, the resource shapes, the
error texts and the command handlers. See docs/az-simulator.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .budget import budget_view
from .cli import Opt, parse_args, parser_for
from .context import Ctx
from .errors import AzError, UsageError, throttle_error
from .output import WithResourceGroups, add_resource_group, format_output
from .query import search
from .resource_commands import (
    cmd_account_show,
    cmd_group_show,
    cmd_version,
    deleter,
    lister,
    shower,
)
from .scenario import Scenario, ScenarioError, load_scenario
from .state import StateStore, bump, materialize, power_state, provisioning_state
from .vm_commands import (
    cmd_run_command,
    cmd_vm_delete,
    cmd_vm_get_instance_view,
    cmd_vm_list,
    cmd_vm_list_ip_addresses,
    cmd_vm_show,
    cmd_vm_wait,
)
from .vm_create import cmd_vm_create


def _ref_opts() -> list[Opt]:
    return [Opt("--name", "-n"), Opt("--resource-group", "-g"), Opt("--ids", kind="list")]


ENUM_DELETE = ["Delete", "Detach"]
CREATE_OPTS = [
    Opt("--name", "-n", required=True), Opt("--resource-group", "-g", required=True),
    Opt("--location", "-l"), Opt("--image"), Opt("--size", default="Standard_D2s_v5"),
    Opt("--zone", "-z"), Opt("--priority", choices=["Regular", "Low", "Spot", "SpotPlus"]),
    Opt("--eviction-policy", choices=["Deallocate", "Delete"]), Opt("--max-price", type=float),
    Opt("--admin-username"), Opt("--admin-password"), Opt("--ssh-key-name"),
    Opt("--ssh-key-values", kind="list"), Opt("--generate-ssh-keys", kind="flag"),
    Opt("--authentication-type", choices=["ssh", "password", "all"]), Opt("--vnet-name"),
    Opt("--subnet"), Opt("--nsg"), Opt("--public-ip-sku", choices=["Basic", "Standard"]),
    Opt("--public-ip-address"), Opt("--custom-data"), Opt("--os-disk-size-gb", type=int),
    Opt("--tags", kind="list"), Opt("--nic-delete-option", choices=ENUM_DELETE),
    Opt("--os-disk-delete-option", choices=ENUM_DELETE), Opt("--no-wait", kind="flag"),
    Opt("--accelerated-networking", kind="bool"), Opt("--storage-sku"), Opt("--computer-name"),
]
DETAILS = Opt("--show-details", "-d", kind="flag")
COMMANDS = {
    "vm create": (CREATE_OPTS, cmd_vm_create),
    "vm show": ([*_ref_opts(), DETAILS], cmd_vm_show),
    "vm get-instance-view": (_ref_opts(), cmd_vm_get_instance_view),
    "vm list": ([Opt("--resource-group", "-g"), DETAILS], cmd_vm_list),
    "vm list-ip-addresses": ([Opt("--resource-group", "-g"), Opt("--name", "-n")],
                             cmd_vm_list_ip_addresses),
    "vm delete": ([*_ref_opts(), Opt("--yes", "-y", kind="flag"), Opt("--no-wait", kind="bool"),
                   Opt("--force-deletion", kind="bool")], cmd_vm_delete),
    "vm wait": ([*_ref_opts(), Opt("--created", kind="flag"), Opt("--deleted", kind="flag"),
                 Opt("--exists", kind="flag"), Opt("--updated", kind="flag"), Opt("--custom"),
                 Opt("--timeout", type=int, default=3600), Opt("--interval", type=int, default=30)],
                cmd_vm_wait),
    "vm run-command invoke": ([Opt("--command-id", required=True), *_ref_opts(),
                               Opt("--scripts", kind="list"), Opt("--parameters", kind="list")],
                              cmd_run_command),
    "network public-ip list": ([Opt("--resource-group", "-g")], lister("public_ips")),
    "network public-ip show": (_ref_opts(), shower("public_ips")),
    "network public-ip delete": (_ref_opts(), deleter("public_ips")),
    "network nic list": ([Opt("--resource-group", "-g")], lister("nics")),
    "network nic show": (_ref_opts(), shower("nics")),
    "network nic delete": (_ref_opts(), deleter("nics")),
    "disk list": ([Opt("--resource-group", "-g", required=True)], lister("disks")),
    "disk show": (_ref_opts(), shower("disks")),
    "disk delete": ([*_ref_opts(), Opt("--yes", "-y", kind="flag"), Opt("--no-wait", kind="bool")],
                    deleter("disks")),
    "group show": ([Opt("--name", "--resource-group", "-g", "-n", required=True)], cmd_group_show),
    "account show": ([], cmd_account_show),
    "version": ([], cmd_version),
}


# ================================================================ entry


def state_path() -> str:
    return os.environ.get("AZ_SIM_STATE") or os.path.expanduser("~/.az-sim/state")


def resolve_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split argv into a command of COMMANDS and its arguments; (None, group words) for help."""
    words: list[str] = []
    for token in argv:
        if token.startswith("-"):
            break
        candidate = " ".join([*words, token])
        if candidate in COMMANDS:
            return candidate, argv[len(words) + 1:]
        if not any(c.startswith(candidate + " ") for c in COMMANDS):
            raise UsageError(f"'{token}' is misspelled or not recognized by the system.")
        words.append(token)
    return None, words


def build_parsers() -> None:
    """Every command's parser, built now: the fork server does it once, before it forks."""
    for command, (opts, _) in COMMANDS.items():
        parser_for(f"az {command}", opts)


def _applies(settings: dict, command: str) -> bool:
    commands = settings.get("commands")
    return bool(settings) and not (commands and command not in commands)


def _count_call(store: StateStore, command: str, scn: Scenario, *,
                throttle: bool) -> dict | None:
    """Count the invocation; the throttle or fault that makes this one fail, if any.

    Counting takes no lock (state.py); what a throttle or fault counts is read-modified-
    written under the counters' own lock, never the state's, by the calls they apply to."""
    store.tally(command)
    if not throttle or not (_applies(scn.throttle, command) or _applies(scn.faults, command)):
        return None
    with store.counters().transaction() as st:
        if _applies(scn.throttle, command):
            st["throttle_seen"] += 1
            after = scn.throttle.get("after_calls", 0)
            if after < st["throttle_seen"] <= after + scn.throttle.get("first_calls", 0):
                return scn.throttle
        if not _applies(scn.faults, command):
            return None
        st["fault_calls_seen"] += 1
        fault = scn.fault(st["fault_calls_seen"])
        if fault is not None:
            bump(st["faults_injected"].setdefault(command, {}), fault["code"])
        return fault


def _help(command: str | None, words: list[str]) -> str:
    if command is None:
        prefix = " ".join(words)
        subs = sorted({c[len(prefix):].split()[0] for c in COMMANDS if c.startswith(prefix)})
        return f"Group\n    {f'az {prefix}'.strip()}\n\nSubgroups and commands:\n" + "".join(
            f"    {s}\n" for s in subs)
    opts = COMMANDS[command][0]
    return f"Command\n    az {command}\n\nArguments\n" + "".join(
        f"    {o.label}{' [Required]' if o.required else ''}\n" for o in opts)


def run_az(argv: list[str]) -> int:
    scn = load_scenario(os.environ.get("AZ_SIM_SCENARIO"))
    store = StateStore(state_path())
    command, rest = resolve_command(argv)
    if command is None:
        sys.stdout.write(_help(None, rest))
        return 0
    opts, handler = COMMANDS[command]
    try:
        args = parse_args(f"az {command}", opts, rest)
    except UsageError:
        _count_call(store, command, scn, throttle=False)
        raise
    if args is None:
        sys.stdout.write(_help(command, []))
        return 0
    throttled = _count_call(store, command, scn, throttle=scn.logged_in)
    if not scn.logged_in:
        raise AzError("ERROR: Please run 'az login' to setup account.")
    if throttled is not None:
        raise throttle_error(command, throttled, args.get("resource_group"))
    result = handler(Ctx(scn, store, args), args)
    if result is not None:
        if type(result) is WithResourceGroups:
            result = result.value
        else:
            add_resource_group(result)
        if args["query"] is not None:
            result = search(args["query"], result)
        sys.stdout.write(format_output(result, args["output"]))
    return 0


def sim_state(store: StateStore, scn: Scenario) -> dict:
    """The inspection view: raw records plus the states computed for now."""
    t = time.time()
    st = materialize(store.read(), t)
    counted = store.counters().read()
    vms = {name: {**vm, "provisioningState": provisioning_state(vm, t),
                  "powerState": power_state(vm, t)} for name, vm in st["vms"].items()}
    succeeded = {name: [x for x in times if x <= t] for name, times in st["succeeded_at"].items()}
    return {"vms": vms, "create_counts": st["create_counts"],
            "create_attempts": st["create_attempts"],
            "succeeded_at": {k: v for k, v in succeeded.items() if v},
            "calls": store.tallied(), "nics": dict(st["nics"]),
            "public_ips": dict(st["public_ips"]), "disks": dict(st["disks"]),
            "throttled_calls_seen": counted["throttle_seen"],
            "fault_calls_seen": counted["fault_calls_seen"],
            "faults_injected": counted["faults_injected"],
            "put_vm_budget": budget_view(st, scn, t), "now": t}


def run_sim(argv: list[str]) -> int:
    store = StateStore(state_path())
    if argv == ["state"]:
        scn = load_scenario(os.environ.get("AZ_SIM_SCENARIO"))
        sys.stdout.write(json.dumps(sim_state(store, scn), indent=2, sort_keys=True) + "\n")
        return 0
    if argv == ["reset"]:
        for part in (store, store.counters()):
            with part.transaction() as st:
                st.clear()
                st.update(part.empty())
        store.forget_calls()
        return 0
    sys.stderr.write("usage: az-sim sim state | az-sim sim reset\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_sim(argv[1:]) if argv[:1] == ["sim"] else run_az(argv)
    except AzError as e:
        sys.stderr.write(e.text)
        return e.exit_code
    except ScenarioError as e:
        sys.stderr.write(f"ERROR: az-sim: bad AZ_SIM_SCENARIO {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
