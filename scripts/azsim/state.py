"""The az simulator's shared state: the state file and the time model of its records.

A VM's provisioning state is a pure function of the times stored in its record, so every
process computes it lazily and a killed client does not stop provisioning (as in Azure).
The state file is shared by many concurrent processes: writers take an exclusive flock
on a sidecar lock file and replace the file atomically; readers take no lock. Each call
counts itself by appending its command's name to `<state>.calls.log`, with no lock: a lock
every call took made a listing (as nice as the tool) wait for a create (19 nicer) that held
it and was not given the CPU, ~160 ms at worst at 500 VMs, a coupling the real CLI does not
have. What throttles and faults count (`<state>.calls.json`) is read-modified-written under
its own lock, by the calls those settings apply to only.

The state is stored with `marshal`, not JSON, and each record (a VM, a NIC, ...) is
marshalled on its own (`Records`): a transaction decodes and re-encodes only the records it
touches, so a create holds the lock ~5 ms at 500 VMs where decoding and re-encoding all of
it took ~15 ms. The lock is the simulator's, not Azure's (which takes PUTs in parallel),
and a create runs as nice as its client: a long hold put every create behind one starved
process. The file holds only JSON's types, lives in a 0700 directory, and is read by
`az sim state`, which prints JSON. The counters file stays JSON: it is small.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager

FOREVER = 1e18  # a busy-until time that never comes (`sim state` prints JSON: no infinity)


def bump(counter: dict, key: str) -> int:
    counter[key] = counter.get(key, 0) + 1
    return counter[key]


# ================================================================ state file


RECORDS = ("vms", "nics", "public_ips", "disks")  # the kinds stored as Records
GONE = "gone_at"  # the field a VM's Records keep beside it: materialize reads no other


class Records(MutableMapping):
    """Records of one kind by name, as stored: each one marshalled on its own, decoded when
    first read. A record read is re-encoded when the state is saved (it may have changed in
    place); the others are written back as they were read."""

    def __init__(self, packed: dict[str, tuple] | None = None) -> None:
        self._packed = packed or {}  # name -> (its GONE, its marshal), or (None, None) if new
        self._live: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        record = self._live.get(name)
        if record is None:
            record = self._live[name] = marshal.loads(self._packed[name][1])
        return record

    def __setitem__(self, name: str, record: dict) -> None:
        self._packed.setdefault(name, (None, None))
        self._live[name] = record

    def __delitem__(self, name: str) -> None:
        del self._packed[name]
        self._live.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def gone_by(self, now: float) -> list[str]:
        """Names whose GONE has come, without decoding the records not read yet."""
        names = []
        for name, (gone, _) in self._packed.items():
            if name in self._live:
                gone = self._live[name].get(GONE)
            if gone is not None and now >= gone:
                names.append(name)
        return names

    def packed(self) -> dict[str, tuple]:
        return {name: (self._live[name].get(GONE), marshal.dumps(self._live[name]))
                if name in self._live else value for name, value in self._packed.items()}


def empty_state() -> dict:
    return {"vms": Records(), "nics": Records(), "public_ips": Records(), "disks": Records(),
            "create_counts": {}, "create_attempts": {}, "succeeded_at": {},
            "put_vm_times": [], "put_vm_throttled": {}, "private_counter": 0,
            "public_counter": 0}


def load_state(data: bytes) -> dict:
    state = marshal.loads(data)
    for kind in RECORDS:
        packed = state.get(kind) or {}
        if packed and type(next(iter(packed.values()))) is dict:  # a file from before Records
            packed = {name: (record.get(GONE), marshal.dumps(record))
                      for name, record in packed.items()}
        state[kind] = Records(packed)
    return state


def dump_state(state: dict) -> bytes:
    return marshal.dumps({key: value.packed() if key in RECORDS else value
                          for key, value in state.items()})


def _always() -> None:
    """A process of its own: if it was killed, it is not here to commit anything."""


# Called just before a state file is replaced. The fork server's child sets it to end the
# call if its client is gone: a call keeps a killed client's semantics (nothing written
# after the kill), though the child notices the kill a moment later.
before_commit = _always


def empty_counters() -> dict:
    return {"throttle_seen": 0, "fault_calls_seen": 0, "faults_injected": {}}


def _json_bytes(value: dict) -> bytes:
    # json.dump would take the pure-Python encoder; dumps without indent is C.
    return json.dumps(value, separators=(",", ":")).encode()


class StateStore:
    """A file shared by every az-sim process: the state (marshal), or (empty=empty_counters)
    the counters file (JSON)."""

    def __init__(self, path: str, empty: Callable[[], dict] = empty_state, *,
                 load: Callable[[bytes], dict] = load_state,
                 dump: Callable[[dict], bytes] = dump_state) -> None:
        self.path = path
        self.empty = empty
        self.load, self.dump = load, dump
        self.tally_path = path + ".calls.log"

    def _open(self, path: str, flags: int) -> int:
        """`path` opened, 0600, in the store's directory (0700, made if need be)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        return os.open(path, flags | os.O_CREAT, 0o600)

    def counters(self) -> StateStore:
        return StateStore(self.path + ".calls.json", empty_counters, load=json.loads,
                          dump=_json_bytes)

    def tally(self, command: str) -> None:
        """Count one call of `command` (see the top: no lock; an append this short is one
        write, which no other append splits)."""
        fd = self._open(self.tally_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def tallied(self) -> dict[str, int]:
        """Calls by command, as `tally` counted them."""
        try:
            with open(self.tally_path, "rb") as f:
                return dict(Counter(f.read().decode().splitlines()))
        except FileNotFoundError:
            return {}

    def forget_calls(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tally_path)

    def read(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                return {**self.empty(), **self.load(f.read())}
        except FileNotFoundError:
            return self.empty()

    @contextmanager
    def transaction(self):
        """Yield the state for a read-modify-write under the lock; save it if no error."""
        fd = self._open(self.path + ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            before_commit()
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                           "wb") as f:
                f.write(self.dump(state))
            os.replace(tmp, self.path)
        finally:
            os.close(fd)  # closing releases the flock


# ================================================================ time model


def provisioning_state(vm: dict, now: float) -> str:
    if vm.get("deleting_since") is not None:
        return "Deleting"
    if vm.get("ready_at") is None or now < vm["ready_at"]:
        return "Updating" if vm.get("redeploy") else "Creating"
    return vm["outcome"]


def ips_visible(vm: dict, now: float) -> bool:
    return vm.get("ips_at") is not None and now >= vm["ips_at"]


def power_state(vm: dict, now: float) -> str:
    if provisioning_state(vm, now) == "Creating" and vm.get("ready_at"):
        halfway = (vm["created_at"] + vm["ready_at"]) / 2
        return "VM starting" if now >= halfway and vm["outcome"] == "Succeeded" else ""
    running = vm.get("running_at") is not None and now >= vm["running_at"]
    return "VM running" if running else ""


def materialize(state: dict, now: float) -> dict:
    """Apply the transitions that are due: a VM past gone_at vanishes with its side resources."""
    vms = state["vms"]
    for name in vms.gone_by(now):
        _remove_vm(state, name, vms[name])
    return state


def _remove_vm(state: dict, name: str, vm: dict) -> None:
    del state["vms"][name]
    nic = state["nics"].get(vm["nic"])
    if nic is not None and nic.get("vm") == name:
        if vm.get("nic_delete_option") == "Delete":
            del state["nics"][vm["nic"]]
        else:
            nic.update(vm=None, reserved_for=name, reserved_until=vm.get("nic_reserved_until"))
    disk = state["disks"].get(vm["os_disk"])
    if disk is not None and disk.get("vm") == name:
        if vm.get("os_disk_delete_option") == "Delete" or vm.get("disk_vanishes"):
            del state["disks"][vm["os_disk"]]
        else:
            disk["vm"] = None


def nic_reserved(nic: dict, now: float) -> bool:
    return nic.get("vm") is None and (nic.get("reserved_until") or 0) > now


def find(state: dict, kind: str, rg: str, name: str) -> dict | None:
    """A resource by name; names are one namespace, a record in another RG is not found."""
    item = state[kind].get(name)
    return item if item is not None and item["resource_group"].lower() == rg.lower() else None
