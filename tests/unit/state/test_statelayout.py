"""State writes that re-render only the changed VM's block (state/layout.py), and an idle
StateWriter writing at once: another writer's edit in between, comments, quoting and
unknown keys, new blocks, and the round trip for layouts the text edit does not take."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, async_wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap

from vmlaunch.state import yamledit
from vmlaunch.state.statefile import StateFile, read_state, vm_fields
from vmlaunch.state.writer import StateWriter

# What a bash user's tool does between two of our writes (`yq -i`): a separate process that
# parses, edits and replaces the file, here with ruamel so its comments survive too.
OTHER_WRITER = """
import sys
from ruamel.yaml import YAML
yaml = YAML()
yaml.indent(mapping=2, sequence=4, offset=2)
path = sys.argv[1]
with open(path) as f:
    doc = yaml.load(f)
doc["vm_states"]["k0s-controller-1"]["state"] = "Failed"
doc["vm_states"]["k0s-controller-2"]["owner"] = "ops"
doc["wg_vpn_connected"] = True
with open(path, "w") as f:
    yaml.dump(doc, f)
"""

BLOCK = (
    'last_updated: "x"\n'
    "vm_states:\n"
    "  # the controllers\n"
    "  vm-1:\n"
    "    public_ip: '20.0.0.1'  # pinned by hand\n"
    "    state: Creating\n"
    "    zone: '3'\n"
    "    tags: {team: infra}\n"
    "    notes: |\n"
    "      # not a comment\n"
    "      free text\n"
    "    last_checked: \"t0\"\n"
    "  # between the VMs\n"
    "  vm-2:\n"
    '    state: "Creating"\n'
    "\n"
    "# after the VMs\n"
    "end: 1\n"
)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return Path(shutil.copy(DATA / "sample-deployment-state.yaml", tmp_path / "state.yaml"))


def other_writer_edits(path: Path) -> None:
    subprocess.run([sys.executable, "-c", OTHER_WRITER, str(path)], check=True, timeout=60)


def round_trip(text: str, vms: dict, phase: str | None = None) -> str:
    """What the full round trip (the old way of writing) makes of ``text``."""
    doc = yamledit.load_mapping(text)
    yamledit.apply_state(doc, {name: vm_fields(f) for name, f in vms.items()}, phase, "now")
    return yamledit.dump_text(doc)


def stamped(text: str, path: Path) -> str:
    """``text`` with the ``last_updated`` the file at ``path`` got."""
    now = read_state(path)["last_updated"]
    return text.replace('last_updated: "x"', f'last_updated: "{now}"').replace(
        'last_updated: "now"', f'last_updated: "{now}"')


def test_another_writers_edit_between_two_of_our_updates_keeps_both(state_path: Path) -> None:
    ours = StateFile(state_path)
    ours.update({"k0s-controller-2": {"state": "Succeeded", "public_ip": "20.1.1.2"}})
    other_writer_edits(state_path)
    ours.update({"k0s-worker-1": {"state": "Creating", "attempt": 0}})
    state = read_state(state_path)
    vms = state["vm_states"]
    assert vms["k0s-controller-1"]["state"] == "Failed"  # theirs
    assert vms["k0s-controller-2"]["owner"] == "ops"  # theirs, in a block we wrote
    assert vms["k0s-controller-2"]["public_ip"] == "20.1.1.2"  # ours, before theirs
    assert vms["k0s-worker-1"]["attempt"] == 0  # ours, after theirs
    assert state["wg_vpn_connected"] is True
    assert "# WireGuard setup\n" in state_path.read_text()


@pytest.mark.skipif(not (shutil.which("yq") and shutil.which("jq")), reason="no yq -i here")
def test_a_yq_in_place_edit_between_two_of_our_updates_keeps_both(state_path: Path) -> None:
    ours = StateFile(state_path)
    ours.update({"k0s-controller-2": {"state": "Succeeded"}})
    subprocess.run(["yq", "-y", "-i", '.vm_states["k0s-controller-1"].state = "Failed"'
                    ' | .vm_states["k0s-controller-2"].owner = "ops"', str(state_path)],
                   check=True, timeout=60)  # rewrites the same inode in place
    ours.update({"k0s-controller-2": {"attempt": 3}})
    vms = read_state(state_path)["vm_states"]
    assert vms["k0s-controller-1"]["state"] == "Failed"
    assert vms["k0s-controller-2"] | {"last_checked": "-"} == {
        "public_ip": "", "private_ip": "", "state": "Succeeded", "last_checked": "-",
        "owner": "ops", "attempt": 3}


def test_a_second_update_does_not_parse_the_whole_file_again(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = StateFile(state_path)
    ours.update({"k0s-controller-2": {"state": "Creating"}})  # parses once: the start
    parses = []
    real = yamledit.load_mapping
    monkeypatch.setattr(yamledit, "load_mapping", lambda text: parses.append(1) or real(text))
    ours.update({"k0s-controller-2": {"state": "Succeeded"}})
    ours.update({"k0s-worker-9": {"state": "Creating"}}, phase="vms_ready")
    assert parses == []
    assert read_state(state_path)["vm_states"]["k0s-controller-2"]["state"] == "Succeeded"
    other_writer_edits(state_path)  # a changed file is parsed again, once
    ours.update({"k0s-worker-9": {"state": "Succeeded"}})
    assert len(parses) == 1
    assert read_state(state_path)["vm_states"]["k0s-controller-1"]["state"] == "Failed"


def test_comments_quoting_and_unknown_keys_in_a_block_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(BLOCK)
    StateFile(path).update({"vm-1": {"public_ip": "20.0.0.9", "state": "Succeeded",
                                     "last_checked": "t1", "attempt": 2}})
    assert path.read_text() == stamped(BLOCK, path).replace(
        "    public_ip: '20.0.0.1'  # pinned", '    public_ip: "20.0.0.9"  # pinned').replace(
        "    state: Creating\n", '    state: "Succeeded"\n').replace(
        '    last_checked: "t0"\n', '    last_checked: "t1"\n    attempt: 2\n')


def test_a_new_vm_gets_its_block_after_the_last_vm_before_the_comments(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(BLOCK)
    ours = StateFile(path)
    for name in ("vm-3", "vm-4"):
        ours.update({name: {"state": "Creating", "last_checked": "t", "attempt": 0}})
    block = '    public_ip: ""\n    private_ip: ""\n    state: "Creating"\n' \
            '    last_checked: "t"\n    attempt: 0\n'
    assert path.read_text().endswith(
        '  vm-2:\n    state: "Creating"\n'
        f"  vm-3:\n{block}  vm-4:\n{block}\n# after the VMs\nend: 1\n")


@pytest.mark.parametrize("vms, phase", [
    ({"k0s-controller-1": {"state": "Failed", "last_error": 'quota "x" \\ é', "n": True,
                           "last_checked": "t"}}, None),
    ({"new-vm": {"state": "Creating", "generation": 7, "last_checked": "t"},
      "k0s-controller-2": {"x": 1, "last_checked": "t"}}, "ready"),
    ({"123": {"last_checked": "t"}, "yes": {"attempt": 1, "last_checked": "t"}}, None),
])
def test_text_edits_write_what_the_round_trip_writes(
    state_path: Path, vms: dict, phase: str | None
) -> None:
    expected = round_trip(state_path.read_text(), vms, phase)
    StateFile(state_path).update(vms, phase=phase)
    assert state_path.read_text() == stamped(expected, state_path)


NAMES = st.sampled_from(["k0s-controller-1", "k0s-controller-2", "vm-a", "vm.b", "x"])
VALUES = st.one_of(st.integers(-5, 10**12), st.booleans(), st.text(max_size=12),
                   st.sampled_from(["Creating", "", 'a "q"', "20.0.0.1", "é", "#x", "a: b"]))
FIELDS = st.dictionaries(st.sampled_from(["public_ip", "attempt", "zone", "last_error", "n"]),
                         VALUES, max_size=3)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.dictionaries(NAMES, FIELDS, max_size=2),
                                st.none() | st.sampled_from(["ready", "a b"])),
                      min_size=1, max_size=4))
def test_any_sequence_of_updates_writes_what_the_round_trip_writes(
    state_path: Path, steps: list[tuple[dict, str | None]]
) -> None:
    shutil.copy(DATA / "sample-deployment-state.yaml", state_path)
    ours = StateFile(state_path)
    for vms, phase in steps:  # each step from the text the step before wrote
        vms = {name: {**fields, "last_checked": "t"} for name, fields in vms.items()}
        expected = round_trip(state_path.read_text(), vms, phase)
        ours.update(vms, phase=phase)
        assert state_path.read_text() == stamped(expected, state_path)


def test_a_value_that_goes_on_below_its_line_is_edited_by_the_round_trip(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(BLOCK)
    StateFile(path).update({"vm-1": {"notes": "short", "tags": "none"}})
    vm = read_state(path)["vm_states"]["vm-1"]
    assert vm["notes"] == "short" and vm["tags"] == "none" and vm["zone"] == "3"
    assert "# between the VMs\n" in path.read_text()


async def test_an_idle_writer_writes_a_change_at_once_and_coalesces_only_a_burst(
    state_path: Path, tmp_path: Path
) -> None:
    events = Path(shutil.copy(DATA / "sample-deployment-events.yaml", tmp_path / "ev.yaml"))
    async with StateWriter(state_path, events, delay=30) as writer:
        writer.update_vm("k0s-controller-2", attempt=1)  # idle: not after the 30 s delay
        await async_wait_until(lambda: "    attempt: 1" in state_path.read_text(),
                               timeout=5, interval=0.01, message="the change on disk")
        for attempt in range(2, 22):  # a burst right after that write: one write, later
            writer.update_vm("k0s-controller-2", attempt=attempt)
            await asyncio.sleep(0.001)
        await writer.flush()
        assert writer.state_file.rewrites == 1 + 1
    assert read_state(state_path)["vm_states"]["k0s-controller-2"]["attempt"] == 21


EVENTS = [
    {"timestamp": "2026-12-02T01:31:15Z", "action": "vm_created", "event_id": "abc-123",
     "message": "VM vm-0001 created: public IP 20.1.2.3 (zone 2)",
     "vm_states": {"vm-0001": {"state": "Succeeded", "public_ip": "20.1.2.3", "generation": 1,
                               "verified": False, "last_error": ""}}},
    {"timestamp": "2026-12-02T01:31:15Z", "action": "deployment_initialized",
     "message": "Deployment state tracking initialized"},
    {"timestamp": "2026-12-02T01:31:15Z", "action": "vm_failed", "message": "yes",
     "vm_states": {"k0s-ctrl.1": {"last_error": "QuotaExceeded: #3: 'x' {y}", "attempt": 3}}},
    {"timestamp": "2026-12-02T01:31:15Z", "action": "vm_launch_started", "message": "x",
     "vm_states": {}},
]


@pytest.mark.parametrize("event", EVENTS)
def test_an_event_is_written_as_text_exactly_as_the_round_trip_writes_it(event):
    dumped = yamledit.dump_text(CommentedMap(events=[yamledit._event_map(event)]))
    assert yamledit.event_text(event) == dumped.removeprefix("events:\n")


@pytest.mark.parametrize("event", [
    {"timestamp": "t", "action": "x", "message": 'a "quoted" word'},
    {"timestamp": "t", "action": "x", "message": "non-ASCII é"},
    {"timestamp": "t", "action": "x", "vm_states": {"yes": {"state": "Creating"}}},
])
def test_an_event_the_text_writer_cannot_quote_is_left_to_the_round_trip(event):
    assert yamledit.event_text(event) is None


def test_an_event_with_a_500_vm_change_is_one_line_that_reads_back_the_same():
    vms = {f"vm-{i:04d}": {"state": "Creating", "generation": 1} for i in range(500)}
    text = yamledit.event_text({"timestamp": "t", "action": "vm_launch_started",
                                "message": "x", "vm_states": vms})
    assert text is not None and len(text.splitlines()) == 4
    assert yamledit.load_mapping("events:\n" + text)["events"][0]["vm_states"] == vms


def test_a_first_write_of_many_vms_into_a_new_file_round_trips_only_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start of a run writes every VM at once into the template's empty ``vm_states``:
    one VM goes through ruamel (~1 ms per VM, GIL held), the others are edited into the
    layout that gives. The file is what the full round trip writes."""
    path = tmp_path / "state.yaml"
    path.write_text(yamledit.STATE_TEMPLATE.format(ts="t0", id='"dep"'))
    vms = {f"vm-{n:03d}": {"state": "Creating", "zone": str(1 + n % 3), "attempt": 1,
                           "last_error": "quota exceeded" if n % 7 == 0 else "",
                           "last_checked": "t"} for n in range(60)}
    expected = round_trip(path.read_text(), vms, "launching")
    dumped: list[int] = []
    dump_text = yamledit.dump_text

    def counting_dump(doc: CommentedMap) -> str:
        dumped.append(len(doc.get("vm_states") or {}))
        return dump_text(doc)

    monkeypatch.setattr(yamledit, "dump_text", counting_dump)
    StateFile(path).update(vms, phase="launching")
    assert path.read_text() == stamped(expected, path)
    assert max(dumped) == 1, dumped
