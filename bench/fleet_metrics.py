"""The figures of one fleet-bench run, from what fleet_runs.measure observed.

Detection, end to end: the simulator's `succeeded_at` of a VM -> the first time the state
file showed it `Succeeded`. The tool's own part: the moment the tool observed the change ->
the same state-file time; for the tool that moment is the `time` of the VM's first event
that says so (`vm.create.status` `verifying` or `vm.create.complete`, built right after
the worker or the poller saw it), for the bash baseline the return of its `az vm list`.
"""

from __future__ import annotations

import math
from datetime import datetime

from fleet_runs import LRO_POLL, RUN_COMMAND, RunSpec

OBSERVED_TYPES = {"vm.create.complete"}
OBSERVED_STATES = {"verifying"}


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest-rank percentile
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1],
            "n": len(ordered)}


def event_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def observed_by_tool(events: list[dict]) -> dict[str, float]:
    """VM -> time of its first event saying the tool saw it Succeeded (the last attempt's)."""
    seen: dict[str, tuple[int, float]] = {}
    for ev in events:
        state = (ev.get("payload") or {}).get("state")
        if ev.get("type") in OBSERVED_TYPES or state in OBSERVED_STATES:
            name, attempt, when = ev["vm_name"], ev.get("attempt", 0), event_time(ev["time"])
            old = seen.get(name)
            if old is None or attempt > old[0] or (attempt == old[0] and when < old[1]):
                seen[name] = (attempt, when)
    return {name: when for name, (_, when) in seen.items()}


def arm_gets(spec: RunSpec, log: list[tuple[float, str]], created: list[float]) -> int:
    """Estimated ARM GETs of the logged `az` calls (weights from azure-cli.md §3, §6, §7):
    `vm list` 1 (one page), `vm list -d` 1 + 3 per VM existing then, `vm show` 1,
    `vm show -d` 3, `vm list-ip-addresses` 2, `get-instance-view` 1, `vm create` 1
    client-side lookup (+1 without `--location`, +1 SKU list with `--zone`) and, when
    blocking, one status GET per 30 s poll, `run-command invoke` one per poll, anything
    else 1."""
    total = 0
    for when, argv in log:
        words = argv.split()
        detailed = "-d" in words or "--show-details" in words
        if argv.startswith("vm list"):
            total += 1 + (3 * sum(1 for c in created if c <= when) if detailed else 0)
        elif argv.startswith("vm show"):
            total += 3 if detailed else 1
        elif argv.startswith("vm create"):
            total += 1 + ("--location" not in words) + ("--zone" in words)
            if "--no-wait" not in words:
                total += math.ceil(spec.create_seconds / LRO_POLL) + 1
        elif argv.startswith("vm list-ip-addresses"):
            total += 2  # one page of NICs, one of public IPs
        elif argv.startswith("vm run-command invoke"):
            total += math.ceil(RUN_COMMAND / LRO_POLL) + 1
        else:
            total += 1
    return total


def latency(seen: float, succeeded_at: list[float]) -> float | None:
    """From the VM's latest success before the state file showed it (a redeploy adds one)."""
    before = [t for t in succeeded_at if t <= seen]
    return seen - max(before) if before else None


def admissions(sim: dict, started: float) -> list[float]:
    """Seconds after the start at which each VM's PUT was accepted (its record's created_at)."""
    return sorted(vm["created_at"] - started for vm in sim.get("vms", {}).values()
                  if vm.get("created_at"))


def summarize(raw: dict) -> dict:
    spec: RunSpec = raw["spec"]
    sim, seen = raw["sim"], raw["seen"]
    e2e = [latency(seen[n], sim.get("succeeded_at", {}).get(n, [])) for n in seen]
    e2e = [v for v in e2e if v is not None]
    observed = raw["observed"] or observed_by_tool(raw["events"])
    own = [seen[n] - observed[n] for n in seen if n in observed]
    created = [vm["created_at"] for vm in sim.get("vms", {}).values() if vm.get("created_at")]
    budget = sim.get("put_vm_budget") or {}
    return {
        "label": spec.label, "mode": spec.mode, "size": spec.size, "verify": spec.verify,
        "admission": spec.admission,
        "exit": raw["exit"], "wall": raw["wall"], "load": raw["load"],
        "critical": spec.critical_path, "overhead": raw["wall"] - spec.critical_path,
        "succeeded": len(seen),
        "e2e": percentiles(e2e), "own": percentiles(own),
        "calls": dict(sorted(sim.get("calls", {}).items())),
        "arm_gets": arm_gets(spec, raw["az_log"], created),
        "processes": raw["processes"], "rewrites": raw["rewrites"],
        "admitted": admissions(sim, raw["started"]),
        "throttled": sum(b.get("throttled", 0) for b in budget.values()),
        "budget": {k: {"calls": b["calls"], "seconds": b["seconds"]} for k, b in budget.items()},
        "time_scale": spec.time_scale, "latencies": sorted(e2e), "work": str(raw["work"]),
    }
