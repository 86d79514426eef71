"""Self-tests of what keeps the simulator cheap per call without changing what it shows: the
per-call counters in their own file, each record of the state decoded only when a call reads
it, `-o json` written byte for byte as json.dumps would, and azure-cli's `resourceGroup` added
as its recursive walk adds it.
Real `scripts/az-sim` subprocesses, as in tests/sim/test_az_sim.py.
"""

from __future__ import annotations

import copy
import fcntl
import json
import marshal
import os
import subprocess
import sys
import time
from pathlib import Path

import jmespath
import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from test_az_sim import AZ_SIM, RG, sim_fixture  # noqa: F401 (the fixture `sim`)

from vmlaunch.azure.argv import IP_FIELDS, TRACKED_FIELDS

sys.path.insert(0, str(REPO / "scripts"))
import azsim.cli
from azsim.cli import parse_args
from azsim.errors import AzError, UsageError
from azsim.main import COMMANDS, build_parsers
from azsim.output import add_resource_group, format_output
from azsim.query import OrderedHash, search
from azsim.resources import vm_resource
from azsim.state import StateStore, materialize

pytestmark = pytest.mark.timeout(60)


def knack_json(value) -> str:
    """What azure-cli (knack) prints for -o json."""
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True,
                      separators=(",", ": ")) + "\n"


def finished(clients) -> list[int]:
    for c in clients:
        c.communicate(timeout=30)
    return [c.returncode for c in clients]


# ---------------------------------------------------------------- the counters file


def test_a_read_only_call_is_counted_without_rewriting_the_state_file(sim):
    assert sim.create("a").returncode == 0
    before = sim.state_path.stat()
    assert sim.run("vm", "show", "-g", RG, "-n", "a").returncode == 0
    assert sim.run("vm", "list", "-g", RG).returncode == 0
    after = sim.state_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    tally = Path(f"{sim.state_path}.calls.log").read_text().splitlines()
    assert tally == ["vm create", "vm show", "vm list"]
    assert sim.state()["calls"] == {"vm create": 1, "vm show": 1, "vm list": 1}


def test_a_call_is_counted_without_waiting_for_anothers_lock(sim):
    """No call waits for another to count itself: a listing waited for a create, 19 nicer,
    that held the counters' lock (up to ~160 ms at 500 VMs)."""
    assert sim.create("a").returncode == 0
    for held in (f"{sim.state_path}.calls.json.lock", f"{sim.state_path}.lock"):
        fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            shown = sim.start("vm", "show", "-g", RG, "-n", "a")
            try:
                assert shown.wait(timeout=20) == 0
            except subprocess.TimeoutExpired:
                pytest.fail(f"vm show waited for {held}")
        finally:
            os.close(fd)
    assert sim.state()["calls"] == {"vm create": 1, "vm show": 2}


def test_concurrent_calls_are_all_counted(sim):
    assert sim.create("a").returncode == 0
    shows = [sim.start("vm", "show", "-g", RG, "-n", "a") for _ in range(12)]
    lists = [sim.start("vm", "list", "-g", RG) for _ in range(8)]
    assert finished(shows + lists) == [0] * 20
    assert sim.state()["calls"] == {"vm create": 1, "vm show": 12, "vm list": 8}


def test_the_throttle_window_is_exact_under_concurrent_calls(sim):
    sim.scenario(throttle={"after_calls": 3, "first_calls": 5, "commands": ["vm list"]})
    codes = finished([sim.start("vm", "list", "-g", RG) for _ in range(16)])
    assert sorted(codes) == [0] * 11 + [1] * 5
    assert sim.state()["throttled_calls_seen"] == 16


def test_sim_reset_clears_the_counters_too(sim):
    sim.scenario(throttle={"first_calls": 1, "commands": ["vm list"]},
                 faults={"rate": 1.0, "commands": ["vm show"]})
    assert sim.run("vm", "list", "-g", RG).returncode == 1
    assert sim.run("vm", "show", "-g", RG, "-n", "a").returncode == 1
    assert sim.state()["fault_calls_seen"] == 1
    assert sim.run("sim", "reset").returncode == 0
    state = sim.state()
    assert (state["calls"], state["throttled_calls_seen"], state["fault_calls_seen"],
            state["faults_injected"]) == ({}, 0, 0, {})
    assert sim.run("vm", "list", "-g", RG).returncode == 1  # the throttle's window starts over


# ---------------------------------------------------------------- records decoded on use


def packed_vms(path: Path) -> dict:
    return marshal.loads(path.read_bytes())["vms"]


def test_a_transaction_decodes_and_rewrites_only_the_records_it_reads(tmp_path):
    path = tmp_path / "state"
    store = StateStore(str(path))
    with store.transaction() as state:
        state["vms"].update(a={"name": "a"}, b={"name": "b"})
    raw = packed_vms(path)
    raw["b"] = (None, b"not marshal")  # decoding b now would fail the transaction
    path.write_bytes(marshal.dumps({**marshal.loads(path.read_bytes()), "vms": raw}))
    with store.transaction() as state:
        state["vms"]["a"]["size"] = "big"  # changed in place
        state["vms"]["c"] = {"name": "c"}
    after = packed_vms(path)
    assert after["b"] == (None, b"not marshal")
    assert marshal.loads(after["a"][1]) == {"name": "a", "size": "big"}
    assert list(after) == ["a", "b", "c"]
    with store.transaction() as state:
        del state["vms"]["b"]
    assert StateStore(str(path)).read()["vms"] == {"a": {"name": "a", "size": "big"},
                                                   "c": {"name": "c"}}


def test_a_vm_is_removed_once_gone_whether_or_not_its_record_was_read(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as state:
        for name, gone in (("early", 10.0), ("late", 30.0), ("kept", None)):
            state["vms"][name] = {"name": name, "gone_at": gone, "nic": f"{name}-nic",
                                  "os_disk": f"{name}-disk", "nic_delete_option": "Delete",
                                  "os_disk_delete_option": "Delete"}
    state = store.read()
    state["vms"]["late"]["gone_at"] = 15.0  # read, and changed in place since it was stored
    assert sorted(materialize(state, 20.0)["vms"]) == ["kept"]
    assert sorted(materialize(store.read(), 20.0)["vms"]) == ["kept", "late"]


# ---------------------------------------------------------------- -o json, byte for byte


SHAPES = [
    [None], True, False, 0, -7, 10**30, 1.5, -0.0, 1e300, 1e-7, float("nan"), float("inf"),
    float("-inf"), "", "plain", "é ☃ 😀 \u2028", "quote \" backslash \\ \\\" tab\t nl\n \x01",
    "{\"not\": [\"json\", 1]},", [], {}, [[]], [{}], [[], {}, [[[]]]], {"a": [], "b": {}},
    {"z": 1, "a": {"m": [1, 2.5, None, True, "x"], "b": {"c": {"d": {}}}}},
    {"{}": "[]", "": {"": ""}, "\\": ["\\\\", "\"", "}\",{"], "é": "ü"},
    OrderedHash(zeta=1, alpha=[OrderedHash(b=2, a=1)]), (1, (2, "three")),
    {"int keys": {2: "b", 1: "a"}}, {"float keys": {1.5: "x", 0.5: "y"}},
    [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],
]


@pytest.mark.parametrize("value", SHAPES, ids=range(len(SHAPES)))
def test_json_output_is_byte_identical_to_json_dumps(value):
    assert format_output(value, "json") == knack_json(value)
    assert format_output(value, "jsonc") == knack_json(value)


def test_json_output_rejects_what_json_dumps_rejects():
    with pytest.raises(TypeError, match="not JSON serializable"):
        format_output({"a": object()}, "json")
    with pytest.raises(TypeError, match="not supported between"):
        format_output({"k": {None: 1, 1.5: 2}}, "json")


def test_a_listed_fleet_prints_exactly_as_json_dumps_would(sim):
    for i, tag in enumerate(["owner=é☃", "note={\"a\": [1]},", "path=C:\\x\\\"y\""]):
        assert sim.create(f"vm{i}", "--tags", tag, "--zone", "1").returncode == 0
    listed = sim.run("vm", "list", "-g", RG, "-d")
    assert listed.returncode == 0
    assert listed.stdout == knack_json(json.loads(listed.stdout))
    shown = sim.run("vm", "get-instance-view", "-g", RG, "-n", "vm1")
    assert shown.stdout == knack_json(json.loads(shown.stdout))


def azure_cli_adds_resource_group(obj) -> None:
    """azure-cli's own walk (knack's result transform), written plainly: the reference."""
    if isinstance(obj, dict):
        if isinstance(obj.get("id"), str) and "resourcegroup" not in (k.lower() for k in obj):
            parts = obj["id"].split("/")
            lowered = [p.lower() for p in parts]
            if "resourcegroups" in lowered and lowered.index("resourcegroups") + 1 < len(parts):
                obj["resourceGroup"] = parts[lowered.index("resourcegroups") + 1]
        values = list(obj.values())
    else:
        values = obj if isinstance(obj, list) else []
    for value in values:
        azure_cli_adds_resource_group(value)


IDS = st.sampled_from([
    "/subscriptions/s/resourceGroups/rg-1/providers/x/vm-1", "/subscriptions/s/RESOURCEGROUPS/Rg",
    "/subscriptions/s/resourceGroups", "/subscriptions/s/resourceGroups//x", "no-slashes",
    "resourcegroups/first/resourceGroups/second", "/a/resourcegroupsX/b", ""])
TREES = st.recursive(
    st.none() | st.integers() | IDS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "name", "ResourceGroup", "nested", "items"]), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(tree=TREES)
def test_resource_group_is_added_exactly_where_azure_cli_adds_it(tree) -> None:
    expected, ours = copy.deepcopy(tree), copy.deepcopy(tree)
    azure_cli_adds_resource_group(expected)
    add_resource_group(ours)
    assert ours == expected


def without_resource_groups(value):
    """`value` without the resourceGroup of each mapping that has an id (which the walk
    adds), keeping the others' (which ARM or azure-cli's own code gives)."""
    if isinstance(value, dict):
        return {k: without_resource_groups(v) for k, v in value.items()
                if k != "resourceGroup" or "id" not in value}
    if isinstance(value, list):
        return [without_resource_groups(v) for v in value]
    return value


def test_a_rendered_vm_has_resource_groups_exactly_where_azure_cli_adds_them(sim):
    """...so that `vm list` may skip the walk (WithResourceGroups)."""
    assert sim.create("plain").returncode == 0
    assert sim.create("spot", "--zone", "2", "--priority", "Spot", "--nic-delete-option",
                      "Delete", "--os-disk-delete-option", "Delete").returncode == 0
    now = time.time()
    vms = materialize(StateStore(str(sim.state_path)).read(), now)["vms"]
    for name in ("plain", "spot"):
        for details in (False, True):
            rendered = vm_resource(vms[name], now, details=details)
            walked = without_resource_groups(rendered)
            azure_cli_adds_resource_group(walked)
            assert rendered == walked
    shown = [sim.ok("vm", "show", "-g", RG, "-n", name, "-d") for name in ("plain", "spot")]
    assert sim.ok("vm", "list", "-g", RG, "-d") == shown


def test_an_ip_listing_has_resource_groups_exactly_where_azure_cli_adds_them(sim):
    """...so that `vm list-ip-addresses` may skip the walk too."""
    assert sim.create("standard").returncode == 0
    assert sim.create("basic", "--public-ip-sku", "Basic").returncode == 0
    assert sim.create("none", "--public-ip-address", "").returncode == 0
    listed = sim.ok("vm", "list-ip-addresses", "-g", RG)
    assert [len(e["virtualMachine"]["network"]["publicIpAddresses"]) for e in listed] == [1, 0, 1]
    walked = without_resource_groups(listed)
    azure_cli_adds_resource_group(walked)
    assert listed == walked


# ---------------------------------------------------------------- --query closures


QUERIES = [
    TRACKED_FIELDS, IP_FIELDS, "@", "name", "a.b.c", "[].name", "[*].a", "a[].b[].c", "*.a",
    "[].{n: name, t: tags.role, z: zones[0]}", "{a: a, b: {c: b.c}}", "[][]", "a[]",
    "[?name=='b'].a", "a[0].b", "[1:]", "length(@)", "[].length(name)", "keys(@)",
    "a || b", "!a", "a && b", "[].[name, a]", "a | b", "a.*.b", "`1`", "'x'",
    "[].{n: name}[?n != null]", "sort_by(@, &name)[].name", "[-1]",
]
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "b"])
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "a", "b", "c", "tags", "role", "zones", "id",
                         "provisioningState", "hardwareProfile", "vmSize", "virtualMachine",
                         "network", "privateIpAddresses", "publicIpAddresses", "ipAddress"]),
        inner, max_size=5),
    max_leaves=40)


def jmespath_answer(query: str, doc):
    """What jmespath's own interpreter gives, or the type of what it raises."""
    try:
        return jmespath.search(query, doc, jmespath.Options(dict_cls=OrderedHash))
    except jmespath.exceptions.JMESPathError as e:
        return type(e)


@settings(max_examples=300, deadline=None)
@given(doc=DOCS, query=st.sampled_from(QUERIES))
def test_a_query_answers_exactly_as_jmespaths_interpreter(doc, query) -> None:
    expected = jmespath_answer(query, doc)
    try:
        ours = search(query, doc)
    except AzError:
        ours = jmespath.exceptions.JMESPathError
    if isinstance(expected, type):
        assert ours is jmespath.exceptions.JMESPathError
    else:
        assert ours == expected
        assert json.dumps(ours) == json.dumps(expected)  # the same key order too
        assert str(type_tree(ours)) == str(type_tree(expected))  # OrderedHash: -o tsv's order


def type_tree(value):
    if isinstance(value, dict):
        return (type(value).__name__, [(k, type_tree(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [type_tree(v) for v in value]
    return type(value).__name__


def test_a_query_deeper_than_the_closures_can_be_built_is_left_to_the_interpreter():
    query = ".".join(["a[]"] * 220)  # nested projections: the interpreter goes to ~250
    doc = {"a": [{"a": [{"a": [1]}]}, {"a": []}]}
    assert search(query, doc) == jmespath.search(query, doc)


def test_the_trackers_queries_run_without_jmespaths_interpreter(sim, monkeypatch):
    """Their nodes are closures: the interpreter's per-node dispatch was ~10 ms of a 500-VM
    listing's ~45 (query.py)."""
    assert sim.create("a", "--zone", "1", "--tags", "role=x").returncode == 0
    pairs = [(TRACKED_FIELDS, sim.ok("vm", "list", "-g", RG)),
             (IP_FIELDS, sim.ok("vm", "list-ip-addresses", "-g", RG))]
    expected = [jmespath.search(query, data) for query, data in pairs]

    def no_interpreter(*args, **kwargs):
        raise AssertionError("the interpreter was used")
    monkeypatch.setattr(jmespath.visitor.TreeInterpreter, "visit", no_interpreter)
    assert [search(query, data) for query, data in pairs] == expected
    assert expected[0][0]["zones"] == ["1"] and expected[1][0]["private"]
    with pytest.raises(AssertionError, match="the interpreter was used"):
        search("length(@)", pairs[0][1])


# ---------------------------------------------------------------- parsers built once


def test_a_command_parses_with_the_parser_built_before_it_ran(monkeypatch):
    """The fork server builds every command's parser before it forks (~1.3 ms of a `vm
    create`'s ~10 each call spent building one), and a parse leaves it as it was."""
    build_parsers()

    def built_again(*args, **kwargs):
        raise AssertionError("a parser was built for the call")
    monkeypatch.setattr(azsim.cli, "_AzParser", built_again)
    opts = COMMANDS["vm create"][0]
    first = parse_args("az vm create", opts, ["-n", "a", "-g", "rg", "--tags", "x=1"])
    again = parse_args("az vm create", opts, ["-n", "b", "-g", "rg"])
    assert (first["name"], first["tags"], again["name"], again["tags"]) == ("a", ["x=1"], "b", None)
    with pytest.raises(UsageError):
        parse_args("az vm create", opts, ["-g", "rg"])  # --name is required


# ---------------------------------------------------------------- the call log


def test_each_call_is_logged_with_its_time_and_argv_when_asked(sim, tmp_path):
    log = tmp_path / "calls.log"
    sim.env["AZ_SIM_CALL_LOG"] = str(log)
    before = time.time()
    assert sim.create("a").returncode == 0
    assert sim.run("vm", "show", "-g", RG, "-n", "nope").returncode == 3
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert [argv for _, argv in lines] == [f"vm create -g {RG} -n a --image Ubuntu2204",
                                           f"vm show -g {RG} -n nope"]
    assert before <= float(lines[0][0]) <= float(lines[1][0]) <= time.time()
    assert log.stat().st_mode & 0o777 == 0o600


def test_a_state_file_written_before_records_were_packed_is_read_as_it_was(sim):
    assert sim.create("a").returncode == 0
    state = marshal.loads(sim.state_path.read_bytes())
    for kind in ("vms", "nics", "public_ips", "disks"):  # each record as a plain mapping
        state[kind] = {name: marshal.loads(raw) for name, (_, raw) in state[kind].items()}
    sim.state_path.write_bytes(marshal.dumps(state))
    assert sim.ok("vm", "show", "-g", RG, "-n", "a")["name"] == "a"
    assert sim.create("b").returncode == 0
    assert sorted(vm["name"] for vm in sim.ok("vm", "list", "-g", RG)) == ["a", "b"]
    assert sorted(sim.state()["vms"]) == ["a", "b"]


def test_a_call_log_that_cannot_be_written_is_a_warning_and_the_call_runs(sim, tmp_path):
    sim.env["AZ_SIM_CALL_LOG"] = str(tmp_path / "no-such-dir" / "calls.log")
    done = sim.run("vm", "show", "-g", RG, "-n", "nope")
    assert done.returncode == 3 and "ResourceNotFound" in done.stderr
    assert "WARNING: az-sim: cannot write AZ_SIM_CALL_LOG" in done.stderr


def test_a_logged_argument_stays_on_its_line_whatever_its_bytes(sim, tmp_path):
    log = tmp_path / "calls.log"
    sim.env["AZ_SIM_CALL_LOG"] = str(log)
    odd = os.fsdecode(b"x\xff\ny")  # not UTF-8, and a newline
    done = subprocess.run([str(AZ_SIM), "vm", "show", "-g", RG, "-n", odd], env=sim.env,
                          capture_output=True, timeout=20)
    assert done.returncode == 3, done.stderr
    lines = log.read_bytes().splitlines()
    assert len(lines) == 1 and lines[0].endswith(b"vm show -g " + RG.encode() + b" -n x\xff\\ny")
