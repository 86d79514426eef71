"""One run of the fleet bench: a fresh simulator, a plan of N VMs, one mode, measured.

Modes: `nats` (`orchestrator.py deploy`, embedded NATS and workers), `poll`
(`deploy --legacy-poll`), `bash` (fleet_bash.py). The simulator appends every `az` call's
time and argv to a log (AZ_SIM_CALL_LOG), so the estimated ARM GETs can tell `vm list` from
`vm list -d`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from fleet_bash import BashRun
from fleet_observe import ProcessSampler, StateWatcher

REPO = Path(__file__).resolve().parents[1]
AZ_SIM = REPO / "scripts" / "az-sim"
IMAGE = "Debian:debian-12:12-gen2:latest"
LRO_POLL = 30.0  # the simulator's default long-running-operation cadence (simulated s)
CLOUD_INIT = 30.0  # simulated seconds cloud-init takes in the verification run
RUN_COMMAND = 5.0  # simulated seconds one run-command takes
# The simulated cloud keeps its state in memory where the machine has a tmpfs: Azure's state
# is not on the tool's disk, and at 500 VMs the simulator rewrites its state ~25 times a
# second, through the same ext4 journal that the tool's fsyncs wait on (own p99 ~100 ms on
# disk, ~70 in memory).
CLOUD_DIR = Path("/dev/shm")
# The simulator's PutVM budget (simulated s), given to the tool in the same time scale.
PUT_VM_BUDGET = {"PutVM3Min": (240, 180.0), "PutVM30Min": (1200, 1800.0)}


@dataclass(frozen=True)
class RunSpec:
    mode: str
    size: int
    time_scale: float
    create_seconds: float
    verify: bool = False
    admission: bool = False  # the run whose PUT times are checked against the budget

    @property
    def label(self) -> str:
        return (f"{self.mode}-{self.size}{'-verify' if self.verify else ''}"
                f"{'-admission' if self.admission else ''}")

    @property
    def critical_path(self) -> float:
        """The fastest possible wall: the last create the PutVM budget lets start, then one
        create (plus cloud-init when verified)."""
        return self.last_admission + (self.create_seconds + (CLOUD_INIT if self.verify else 0)
                                      ) * self.time_scale

    @property
    def last_admission(self) -> float:
        """When the budget's sliding windows admit the last of `size` creates, all asked
        for at 0: the i-th waits for the (i - calls)-th to leave every window."""
        times: list[float] = []
        for i in range(self.size):
            times.append(max([0.0, *(times[i - calls] + seconds * self.time_scale
                                     for calls, seconds in PUT_VM_BUDGET.values()
                                     if i >= calls)]))
        return times[-1] if times else 0.0

    def names(self) -> list[str]:
        return [f"vm-{i:04d}" for i in range(self.size)]


@cache
def deploy_help() -> str:
    return subprocess.run([sys.executable, str(REPO / "orchestrator.py"), "deploy", "--help"],
                          capture_output=True, text=True, check=True).stdout


def has_option(option: str) -> bool:
    """The bench runs on both today's CLI and the fleet-scale one: new options only if shown."""
    return option in deploy_help()


def scenario(spec: RunSpec) -> dict:
    return {"time_scale": spec.time_scale, "location": "westus2", "lro_poll_seconds": LRO_POLL,
            "put_vm_budget": {name: {"calls": calls, "seconds": seconds}
                              for name, (calls, seconds) in PUT_VM_BUDGET.items()},
            "defaults": {"create_seconds": spec.create_seconds, "delete_seconds": 20,
                         "run_command_seconds": RUN_COMMAND,
                         "cloud_init_seconds": CLOUD_INIT if spec.verify else 0}}


def plan(spec: RunSpec) -> dict:
    return {"deployment_id": f"bench-{spec.label}", "resource_group": "bench-rg",
            "location": "westus2", "deadline": 1800,
            "defaults": {"image": IMAGE, "verify_ssh": False, "verify_cloud_init": spec.verify,
                         "create_timeout": 600},
            "vms": [{"name": n, "zone": str(1 + i % 3)} for i, n in enumerate(spec.names())]}


def workspace(spec: RunSpec) -> tuple[Path, dict]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{spec.label}-"))
    (work / "plan.yaml").write_text(yaml.safe_dump(plan(spec)))
    (work / "scenario.json").write_text(json.dumps(scenario(spec)))
    cloud = tempfile.mkdtemp(prefix=f"bench-{spec.label}-cloud-",
                             dir=CLOUD_DIR if CLOUD_DIR.is_dir() else work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "AZ_CLI": str(AZ_SIM), "AZ_SIM_CALL_LOG": str(work / "az.log"),
           "AZ_SIM_STATE": str(Path(cloud) / "sim-state"),
           "AZ_SIM_SCENARIO": str(work / "scenario.json")}
    for name in ("NATS_URL", "VMLAUNCH_NATS_URL", "VMLAUNCH_LEGACY_POLL"):
        env.pop(name, None)
    return work, env


def tool_argv(spec: RunSpec, work: Path) -> list[str]:
    argv = [sys.executable, str(REPO / "orchestrator.py"), "deploy", "--plan",
            str(work / "plan.yaml"), "--yes", "--json", "--state-file", str(state_path(work))]
    if has_option("--track-interval"):
        argv += ["--track-interval", f"{2 * spec.time_scale:g}"]  # 2 s of simulated time
    if has_option("--write-budget"):  # Azure's budget, in the simulator's time
        argv += ["--write-budget", ",".join(f"{calls}/{seconds * spec.time_scale:g}"
                                            for calls, seconds in PUT_VM_BUDGET.values())]
    if spec.mode == "poll":
        argv += ["--legacy-poll", "--poll-interval", f"{LRO_POLL * spec.time_scale:g}"]
    return argv


def state_path(work: Path) -> Path:
    return work / "state" / "deployment-state.yaml"


def run_tool(spec: RunSpec, work: Path, env: dict) -> tuple[int, list[dict]]:
    out, err = work / "events.jsonl", work / "stderr.txt"
    # In a session of its own, as when run from a shell: with the scheduler's autogroups
    # (one per session), the bench's sampler and watcher would take the CPU from the
    # orchestrator within its group instead of from a group of their own.
    with out.open("w") as stdout, err.open("w") as stderr, subprocess.Popen(
            tool_argv(spec, work), env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True) as tool:
        try:
            code = tool.wait(timeout=3600)
        except BaseException:  # a timeout, or the bench's Ctrl-C (which no longer reaches it)
            os.killpg(tool.pid, signal.SIGINT)  # the tool's own stop: it ends its workers
            try:
                tool.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tool.kill()
            raise
    events = []
    for line in out.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # the summary and notes are not events
    return code, events


def run_bash(spec: RunSpec, work: Path, env: dict) -> tuple[int, dict[str, float]]:
    run = BashRun(az=env["AZ_CLI"], resource_group="bench-rg", image=IMAGE,
                  state_file=state_path(work), interval=LRO_POLL * spec.time_scale,
                  deadline=max(600.0, 20 * spec.critical_path), env=env)
    run.run(spec.names())
    return (1 if run.failed or len(run.observed) < spec.size else 0), run.observed


def sim_state(env: dict) -> dict:
    quiet = {k: v for k, v in env.items() if k != "AZ_SIM_CALL_LOG"}  # not the tool's call
    return json.loads(subprocess.run([str(AZ_SIM), "sim", "state"], env=quiet,
                                     capture_output=True, text=True, check=True).stdout)


def az_log(work: Path) -> list[tuple[float, str]]:
    try:
        lines = (work / "az.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [(float(when), argv) for when, _, argv in (ln.partition(" ") for ln in lines)]


def measure(spec: RunSpec) -> dict:
    """Runs `spec` once and returns its raw observations (metrics are fleet_metrics')."""
    work, env = workspace(spec)
    try:
        with ProcessSampler() as sampler, StateWatcher(state_path(work)) as watcher:
            started = time.time()
            if spec.mode == "bash":
                code, observed = run_bash(spec, work, env)
                events: list[dict] = []
            else:
                (code, events), observed = run_tool(spec, work, env), {}
            wall = time.time() - started
        sim, log = sim_state(env), az_log(work)
    finally:  # the simulated cloud's state may be in memory (CLOUD_DIR): never left there
        shutil.rmtree(Path(env["AZ_SIM_STATE"]).parent, ignore_errors=True)
    if len(log) != (counted := sum(sim.get("calls", {}).values())):
        print(f"  {spec.label}: the call log holds {len(log)} calls, the simulator counted "
              f"{counted}: the ARM GETs are estimated from the log", file=sys.stderr)
    return {"spec": spec, "work": work, "exit": code, "wall": wall, "started": started,
            "load": round(os.getloadavg()[0], 1),  # the machine is shared: how busy it was
            "seen": dict(watcher.seen), "rewrites": watcher.rewrites, "events": events,
            "observed": observed, "processes": sampler.result, "sim": sim, "az_log": log}
