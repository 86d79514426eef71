"""The bash-style baseline: what `create-azure-vms.sh deploy` does, in Python, for the bench.

As /work/shared/reference/legacy-vm-launch.md describes it: one blocking `az vm create` per
host, all started at once in the background (output thrown away), then a loop that runs one
`az vm list -g RG --show-details -o yaml` every `VM_WAIT_CHECK_INTERVAL` (30 s, scaled by the
simulator's time scale) and, per host: Succeeded with a public IP -> write the host's entry
into the state file (a whole-file read-modify-write, as the yq calls do); Failed -> kill,
`az vm delete --yes --no-wait`, relaunch; process gone and no VM -> relaunch; at most 3
retries. Kinder to bash than bash is: one rewrite per host instead of one per key, no `yq`
process per update, and no verification (the bench runs it with verification off).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_RETRIES = 3


@dataclass
class Host:
    name: str
    zone: str
    proc: subprocess.Popen | None = None
    retries: int = 0
    done: bool = False


@dataclass
class BashRun:
    """Inputs of one baseline run and, once `run` returns, what it observed."""

    az: str
    resource_group: str
    image: str
    state_file: Path
    interval: float
    deadline: float
    env: dict
    observed: dict[str, float] = field(default_factory=dict)  # host -> when the list showed it
    failed: list[str] = field(default_factory=list)

    def launch(self, host: Host) -> None:
        argv = [self.az, "vm", "create", "--resource-group", self.resource_group,
                "--name", host.name, "--image", self.image, "--size", "Standard_D2s_v5",
                "--priority", "Regular", "--zone", host.zone, "--admin-username", "k0rdent",
                "--public-ip-sku", "Standard", "--os-disk-size-gb", "64"]
        host.proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def listing(self) -> dict[str, dict] | None:
        out = subprocess.run([self.az, "vm", "list", "-g", self.resource_group,
                              "--show-details", "-o", "yaml"], env=self.env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            return None  # a failed read is unknown: this round changes nothing
        return {vm["name"]: vm for vm in yaml.load(out.stdout, Loader=Loader) or []}

    def write(self, name: str, entry: dict) -> None:
        doc = yaml.load(self.state_file.read_text(), Loader=Loader) or {}
        doc.setdefault("vm_states", {})[name] = entry
        doc["last_updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        tmp.replace(self.state_file)

    def retry(self, host: Host, *, delete: bool) -> None:
        if host.proc and host.proc.poll() is None:
            host.proc.kill()
        if delete:
            subprocess.run([self.az, "vm", "delete", "-g", self.resource_group, "-n",
                            host.name, "--yes", "--no-wait"], env=self.env,
                           capture_output=True)
        host.retries += 1
        if host.retries > MAX_RETRIES:
            host.done = True
            self.failed.append(host.name)
        else:
            self.launch(host)

    def check(self, host: Host, vm: dict | None, seen_at: float, exited: bool) -> None:
        state = (vm or {}).get("provisioningState")
        if state == "Succeeded" and vm.get("publicIps"):
            self.observed[host.name] = seen_at
            self.write(host.name, {"public_ip": vm["publicIps"], "private_ip": "",
                                   "state": "Succeeded", "last_checked": ""})
            host.done = True
        elif state == "Failed":
            self.retry(host, delete=True)
        elif vm is None and exited:
            self.retry(host, delete=False)

    def run(self, names: list[str]) -> None:
        hosts = [Host(name, str(1 + i % 3)) for i, name in enumerate(names)]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(yaml.safe_dump({"phase": "azure_ready", "vm_states": {
            h.name: {"public_ip": "", "private_ip": "", "state": "Creating",
                     "last_checked": ""} for h in hosts}}, sort_keys=False))
        for host in hosts:
            self.launch(host)
        end = time.monotonic() + self.deadline
        while time.monotonic() < end and not all(h.done for h in hosts):
            time.sleep(self.interval)  # VM_WAIT_CHECK_INTERVAL: the loop's own cadence
            # Only a process that had ended before the listing began can be missing its VM
            # (bash's `kill -0` comes after a list of a second; here, under load, a list
            # can take long enough for a create to finish meanwhile).
            exited = {h.name for h in hosts if h.proc and h.proc.poll() is not None}
            vms = self.listing()
            if vms is None:
                continue
            seen_at = time.time()
            for host in (h for h in hosts if not h.done):
                self.check(host, vms.get(host.name), seen_at, host.name in exited)
        for host in hosts:
            if host.proc and host.proc.poll() is None:
                host.proc.kill()
            if host.proc:
                host.proc.wait()
