"""The PNG plots of docs/benchmarks.md (matplotlib, a bench-only dependency)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

COLORS = {"nats": "tab:blue", "poll": "tab:orange", "bash": "tab:green"}


def detection_cdf(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        lat = r["latencies"]
        if not lat:
            continue
        style = "--" if r["verify"] else "-"
        ax.step([v * 1000 for v in lat], [(i + 1) / len(lat) for i in range(len(lat))],
                where="post", linestyle=style, color=COLORS.get(r["mode"]),
                alpha=0.4 + 0.6 * r["size"] / max(x["size"] for x in runs), label=r["label"])
    ax.set_xscale("log")
    ax.set_xlabel("detection latency, simulator Succeeded -> state file (ms, log)")
    ax.set_ylabel("share of VMs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wall_vs_size(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for mode, color in COLORS.items():
        points = sorted((r["size"], r["wall"]) for r in runs if r["mode"] == mode
                        and not r["verify"])
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=mode)
    critical = [r["critical"] for r in runs if not r["verify"]]
    if critical:
        ax.axhline(critical[0], color="grey", linestyle=":", label="critical path")
    ax.set_xscale("log")
    ax.set_xlabel("VMs (log)")
    ax.set_ylabel("wall time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def allowed(t: float, run: dict) -> float:
    """The most PUTs the budget lets through by `t` seconds after the first one."""
    return min(b["calls"] * (t // (b["seconds"] * run["time_scale"]) + 1)
               for b in run["budget"].values())


def admission(run: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    times = run["admitted"]
    if times:
        start = times[0]
        rel = [t - start for t in times]
        ax.step(rel, range(1, len(rel) + 1), where="post", label="VMs admitted (PUT accepted)")
        if run["budget"]:
            grid = [rel[-1] * i / 400 for i in range(401)]
            ax.step(grid, [allowed(t, run) for t in grid], where="post", color="red",
                    linestyle="--", label="PutVM budget (most allowed so far)")
    top = max(run["size"], allowed(0, run) if run["budget"] else 0)
    ax.set_ylim(0, top * 1.1)  # the budget's first step shows even above a small fleet
    ax.set_xlabel("seconds since the first admission")
    ax.set_ylabel("VMs")
    ax.set_title(f"{run['label']}: admissions against the write budget "
                 f"(time scale {run['time_scale']:g})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
