"""Event-driven (NATS) versus polling (legacy): how late does the state file learn the truth?

Runs the same six-VM deployment twice against the simulator, once through NATS (embedded
server, local workers) and once with `--legacy-poll`, side by side in one run. A watcher
polls the state file every 5 ms; the latency of a VM is the time from the simulator's
record of it becoming `Succeeded` to the state file saying `Succeeded`. Also counts the
`az` calls each mode made (the simulator records every call).

    .venv/bin/python bench/detection_latency.py [--poll-interval 5] [--time-scale 0.2]

The legacy scripts poll every 30 s against creates of a few minutes; the defaults keep
that proportion at a fifth of the time (6 s polls, creates of 12-24 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VMS = [f"k0s-controller-{i}" for i in (1, 2, 3)] + [f"k0s-worker-{i}" for i in (1, 2, 3)]


def scenario(time_scale: float) -> dict:
    # Spread the create times so that they fall at different points of the poll cycle.
    rules = [{"match": name, "create_seconds": 60 + 13 * i} for i, name in enumerate(VMS)]
    return {"time_scale": time_scale, "location": "westus2", "vms": rules,
            "defaults": {"delete_seconds": 20, "run_command_seconds": 20}}


def plan(deployment_id: str) -> dict:
    return {
        "deployment_id": deployment_id, "resource_group": "bench-rg", "location": "westus2",
        "deadline": 600,
        "defaults": {"image": "Debian:debian-12:12-gen2:latest", "verify_ssh": False,
                     "verify_cloud_init": False, "create_timeout": 300},
        "vms": [{"name": name, "zone": str(1 + i % 3)} for i, name in enumerate(VMS)],
    }


def watch(state_file: Path, seen: dict[str, float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            states = (yaml.safe_load(state_file.read_text()) or {}).get("vm_states") or {}
        except (OSError, yaml.YAMLError):
            states = {}
        now = time.time()
        for name, entry in states.items():
            if name not in seen and (entry or {}).get("state") == "Succeeded":
                seen[name] = now
        time.sleep(0.005)


def run_mode(mode: str, *, poll_interval: float, time_scale: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    (work / "plan.yaml").write_text(yaml.safe_dump(plan(f"bench-{mode}")))
    (work / "scenario.yaml").write_text(yaml.safe_dump(scenario(time_scale)))
    state_file = work / "state" / "deployment-state.yaml"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "AZ_CLI": str(REPO / "scripts" / "az-sim"), "AZ_SIM_STATE": str(work / "sim.json"),
           "AZ_SIM_SCENARIO": str(work / "scenario.yaml")}
    env.pop("NATS_URL", None)
    argv = [sys.executable, str(REPO / "orchestrator.py"), "deploy", "--plan",
            str(work / "plan.yaml"), "--yes", "--quiet", "--state-file", str(state_file)]
    argv += ["--legacy-poll", "--poll-interval", str(poll_interval)] if mode == "polling" else []
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(state_file, seen, stop))
    watcher.start()
    started = time.time()
    result = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=900)
    stop.set()
    watcher.join()
    sim = json.loads(subprocess.run([str(REPO / "scripts" / "az-sim"), "sim", "state"], env=env,
                                    capture_output=True, text=True, check=True).stdout)
    latencies = [seen[name] - sim["succeeded_at"][name][-1] for name in VMS if name in seen]
    if result.returncode != 0 or len(latencies) != len(VMS):
        sys.exit(f"{mode}: exit {result.returncode}, saw {sorted(seen)}\n{result.stderr}")
    return {"latencies": latencies, "wall": time.time() - started, "calls": sim["calls"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-interval", type=float, default=6.0)
    parser.add_argument("--time-scale", type=float, default=0.2)
    args = parser.parse_args()
    results = {mode: run_mode(mode, poll_interval=args.poll_interval, time_scale=args.time_scale)
               for mode in ("nats", "polling")}
    print(f"six VMs, creates of {60 * args.time_scale:.0f}-{125 * args.time_scale:.0f} s, "
          f"legacy poll every {args.poll_interval:g} s\n")
    print(f"{'mode':<8} {'mean':>8} {'median':>8} {'max':>8} {'wall':>7} {'az calls':>9}")
    for mode, r in results.items():
        lat = r["latencies"]
        print(f"{mode:<8} {statistics.mean(lat):>7.2f}s {statistics.median(lat):>7.2f}s "
              f"{max(lat):>7.2f}s {r['wall']:>6.1f}s {sum(r['calls'].values()):>9}")
    nats, polling = (statistics.mean(results[m]["latencies"]) for m in ("nats", "polling"))
    print(f"\nmean detection latency, polling / NATS: {polling / nats:.1f}x")
    for mode, r in results.items():
        calls = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items()))
        print(f"{mode} az calls: {calls}")


if __name__ == "__main__":
    main()
