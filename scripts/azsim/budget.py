"""The Compute resource provider's VM write budget (PutVM3Min, PutVM30Min; azure-cli.md §6).

Each bucket allows at most `calls` VM creates or updates in any window of `seconds` of
simulated time (a sliding window, so the limit holds for every window, not only aligned
ones). The state file keeps the times of the VM PUTs that the longest window still covers.
"""

from __future__ import annotations

import math

from .scenario import Scenario


def _inside(times: list[float], t: float, window: float) -> list[float]:
    return [x for x in times if x > t - window]


def spend_put_vm(st: dict, scn: Scenario, t: float) -> dict | None:
    """Spend one PutVM call at t; if a bucket is empty, spend nothing and return which one
    and its retry-after (simulated seconds until that bucket has room again)."""
    windows = {name: b["seconds"] * scn.scale for name, b in scn.put_vm_budget.items()}
    times = _inside(st["put_vm_times"], t, max(windows.values(), default=0.0))
    st["put_vm_times"] = times
    for name, bucket in scn.put_vm_budget.items():
        inside = _inside(times, t, windows[name])
        if len(inside) >= bucket["calls"]:
            free_at = inside[len(inside) - bucket["calls"]] + windows[name]
            return {"op": name, "retry_after": math.ceil((free_at - t) / scn.scale)}
    times.append(t)
    return None


def budget_view(st: dict, scn: Scenario, t: float) -> dict:
    """`sim state`'s view of each bucket now: its limit, use and the throttled PUTs."""
    view = {}
    for name, bucket in scn.put_vm_budget.items():
        used = len(_inside(st["put_vm_times"], t, bucket["seconds"] * scn.scale))
        view[name] = {"calls": bucket["calls"], "seconds": bucket["seconds"], "used": used,
                      "remaining": max(bucket["calls"] - used, 0),
                      "throttled": st["put_vm_throttled"].get(name, 0)}
    return view


def remaining_header(st: dict, scn: Scenario, t: float) -> str:
    """The x-ms-ratelimit-remaining-resource header value, as Compute sends it."""
    return ",".join(f"Microsoft.Compute/{name};{b['remaining']}"
                    for name, b in budget_view(st, scn, t).items())
