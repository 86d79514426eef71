"""Tables of the fleet bench: the runs, the calls, the ratios between modes, the targets.

Every table is built once as rows and printed either as aligned text (the terminal) or as
Markdown (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable

Row = list[str]
RSS_KINDS = ("orchestrator", "worker", "nats-server", "az")


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def quad(p: dict) -> str:
    return "/".join(ms(p[k]) for k in ("p50", "p95", "p99", "max"))


def run_rows(runs: list[dict]) -> tuple[Row, list[Row]]:
    head = ["run", "load", "exit", "ok", "wall s", "crit s", "over s", "e2e p50/95/99/max ms",
            "own p50/95/99/max ms", "az calls", "ARM GETs", "peak az",
            "RSS MB orch/wrk/nats/az", "rewrites"]
    rows = []
    for r in runs:
        rss = r["processes"].get("peak_rss_mb", {})
        rows.append([r["label"], str(r.get("load", "-")), str(r["exit"]),
                     f"{r['succeeded']}/{r['size']}",
                     f"{r['wall']:.1f}", f"{r['critical']:.1f}", f"{r['overhead']:.1f}",
                     quad(r["e2e"]), quad(r["own"]), str(sum(r["calls"].values())),
                     str(r["arm_gets"]), str(r["processes"].get("peak_az", "-")),
                     "/".join(str(rss.get(k, "-")) for k in RSS_KINDS), str(r["rewrites"])])
    return head, rows


def call_rows(runs: list[dict]) -> tuple[Row, list[Row]]:
    rows = [[r["label"], ", ".join(f"{k} {v}" for k, v in r["calls"].items()),
             f"{r['processes'].get('peak_az_total_mb', '-')}", str(r["throttled"])]
            for r in runs]
    return ["run", "az calls by subcommand", "peak az MB (all)", "PutVM 429s"], rows


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.1f}x"


def ratio_rows(runs: list[dict]) -> tuple[Row, list[Row]]:
    """Each other mode against NATS at the same size, without verification."""
    nats = {r["size"]: r for r in runs if r["mode"] == "nats" and not r["verify"]}
    rows = []
    for r in runs:
        base = nats.get(r["size"])
        if r["mode"] == "nats" or r["verify"] or base is None:
            continue
        rows.append([f"{r['mode']} / nats, {r['size']} VMs", ratio(r["wall"], base["wall"]),
                     ratio(r["e2e"]["p50"], base["e2e"]["p50"]),
                     ratio(r["e2e"]["p99"], base["e2e"]["p99"]),
                     ratio(sum(r["calls"].values()), sum(base["calls"].values())),
                     ratio(r["arm_gets"], base["arm_gets"]),
                     ratio(r["processes"].get("peak_az"), base["processes"].get("peak_az"))])
    return ["ratio", "wall", "e2e p50", "e2e p99", "az calls", "ARM GETs", "peak az"], rows


def window_peak(times: list[float], window: float) -> int:
    """The most admissions in any sliding window of `window` seconds."""
    best, low = 0, 0
    for high, t in enumerate(times):
        while t - times[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


def budget_checks(run: dict) -> list[tuple[str, str, str, bool]]:
    checks = [(f"{run['label']}: final failures", str(run["size"] - run["succeeded"]), "0",
               run["succeeded"] == run["size"] and run["exit"] == 0)]
    for name, bucket in run["budget"].items():
        peak = window_peak(run["admitted"], bucket["seconds"] * run["time_scale"])
        checks.append((f"{run['label']}: PUTs in any {name} window", str(peak),
                       f"<= {bucket['calls']}", peak <= bucket["calls"]))
    return checks


def target_checks(runs: list[dict]) -> list[tuple[str, str, str, bool]]:
    """The issue's targets, on the largest NATS run (they are set for 500 VMs)."""
    plain = [r for r in runs if r["mode"] == "nats" and not r["verify"]]
    verify = [r for r in runs if r["mode"] == "nats" and r["verify"]]
    checks: list[tuple[str, str, str, bool]] = []
    if plain:
        r = max(plain, key=lambda run: run["size"])
        rss = r["processes"].get("peak_rss_mb", {})
        limits: list[tuple[str, float | None, float, Callable[[float], str]]] = [
            ("wall - critical path, s", r["overhead"], 30, lambda v: f"{v:.1f}"),
            ("e2e p50, ms", r["e2e"]["p50"], 0.150, ms),
            ("e2e p99, ms", r["e2e"]["p99"], 0.300, ms),
            ("own p50, ms", r["own"]["p50"], 0.020, ms),
            ("own p99, ms", r["own"]["p99"], 0.100, ms),
            ("peak az processes", r["processes"].get("peak_az"), 32, str),
            ("orchestrator RSS, MB", rss.get("orchestrator"), 150, str),
            ("worker RSS, MB", rss.get("worker"), 150, str)]
        checks += [(f"{r['label']}: {what}", "-" if v is None else show(v), f"<= {show(lim)}",
                    v is not None and v <= lim) for what, v, lim, show in limits]
    for r in verify:
        checks.append((f"{r['label']}: wall - critical path, s", f"{r['overhead']:.1f}",
                       "<= 60.0", r["overhead"] <= 60))
    return checks


def check_rows(checks: list[tuple[str, str, str, bool]]) -> tuple[Row, list[Row]]:
    return (["target", "measured", "target value", "met"],
            [[w, v, t, "yes" if ok else "**MISSED**"] for w, v, t, ok in checks])


def as_text(head: Row, rows: list[Row]) -> str:
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in [head, *rows])


def as_markdown(head: Row, rows: list[Row]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                     for line in lines)
