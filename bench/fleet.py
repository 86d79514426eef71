"""The fleet benchmark: NATS, --legacy-poll and a bash-style baseline at 10, 100, 500 VMs.

    scripts/bench.sh                          # everything (tens of minutes on 2 cores)
    scripts/bench.sh --sizes 10 --modes nats  # smoke run (~1 min)

Against the project's simulator (creates of 60 s at time scale 0.05, its 30 s LRO cadence
and PutVM budget), verification off; plus one NATS run with cloud-init verification on at
the largest size and one NATS run of twice the largest size that records the admission
(PUT) times against the write budget. Prints the tables and writes docs/benchmarks.md (the
part between its bench markers), docs/benchmarks/results.json and the PNG plots.
`--from-results` redraws the docs from a results file without running anything; `--append`
adds this invocation's runs to the saved ones (a run of the same label is replaced), so that
the sizes can be measured in several sittings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import fleet_plots
import fleet_report as report
from fleet_metrics import summarize
from fleet_runs import REPO, RunSpec, has_option, measure

DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
REAL_AZ_MB = 100  # one real az process (azure-cli.md §4)
MACHINE_MB = 24 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,500", help="VM counts, comma-separated")
    p.add_argument("--modes", default="nats,poll,bash", help="of nats, poll, bash")
    p.add_argument("--time-scale", type=float, default=0.05)
    p.add_argument("--create-seconds", type=float, default=60.0, help="simulated create time")
    p.add_argument("--bash-max", type=int, default=500,
                   help="largest bash-style size (one az process per VM at once)")
    p.add_argument("--verify-size", type=int, help="NATS run with cloud-init verification "
                   "(default: the largest size; 0: none)")
    p.add_argument("--admission-size", type=int, help="NATS run recording admissions "
                   "(default: twice the largest size; 0: none)")
    p.add_argument("--docs", default=str(DOCS), help="Markdown file to write ('': none)")
    p.add_argument("--from-results", type=Path, help="redraw the docs from this results.json")
    p.add_argument("--append", action="store_true",
                   help="keep the runs saved in results.json, replacing those run again")
    return p.parse_args()


def plan_runs(args: argparse.Namespace) -> tuple[list[RunSpec], list[str]]:
    sizes = [int(s) for s in args.sizes.split(",") if s]  # '' with --append: extra runs only
    modes = [m for m in args.modes.split(",") if m]
    specs, skipped = [], []
    for size in sizes:
        for mode in modes:
            if mode == "bash" and size > args.bash_max:
                skipped.append(f"bash-{size}: over --bash-max {args.bash_max}: {size} real az "
                               f"processes would need ~{size * REAL_AZ_MB / 1024:.0f} GB")
                continue
            specs.append(RunSpec(mode, size, args.time_scale, args.create_seconds))
    verify = max(sizes, default=0) if args.verify_size is None else args.verify_size
    admit = 2 * max(sizes, default=0) if args.admission_size is None else args.admission_size
    if "nats" not in modes:
        return specs, skipped
    if verify:
        specs.append(RunSpec("nats", verify, args.time_scale, args.create_seconds, verify=True))
    if admit:
        specs.append(RunSpec("nats", admit, args.time_scale, args.create_seconds,
                             admission=True))
    return specs, skipped


def saved_runs(results: Path | None, specs: list[RunSpec]) -> list[dict]:
    if results is None or not results.exists():
        return []
    labels = {spec.label for spec in specs}
    return [r for r in json.loads(results.read_text())["runs"] if r["label"] not in labels]


def run_all(specs: list[RunSpec], results: Path | None, meta: dict,
            runs: list[dict]) -> list[dict]:
    for spec in specs:
        print(f"running {spec.label} ...", flush=True)
        raw = measure(spec)
        run = summarize(raw)
        shutil.rmtree(raw["work"], ignore_errors=True)
        run.pop("work")
        runs.append(run)
        print(f"  {spec.label}: exit {run['exit']}, {run['succeeded']}/{spec.size} seen "
              f"Succeeded, wall {run['wall']:.1f} s", flush=True)
        if results:  # after every run, so that an interrupted bench keeps what it measured
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps({**meta, "runs": runs}, indent=1))
    return runs


def tables(runs: list[dict], admission: dict | None) -> list[tuple[str, tuple]]:
    main = [r for r in runs if not r.get("admission")]
    checks = report.target_checks(main) + (report.budget_checks(admission) if admission else [])
    return [("Runs", report.run_rows(runs)), ("az calls", report.call_rows(runs)),
            ("Ratios against NATS", report.ratio_rows(main)),
            ("Targets", report.check_rows(checks))]


def notes(runs: list[dict], meta: dict) -> list[str]:
    lines = [f"- {s}" for s in meta["skipped"]]
    for r in runs:
        if r["mode"] == "bash":
            peak = r["processes"].get("peak_az", 0)
            lines.append(f"- {r['label']}: {peak} az processes at once; real az processes "
                         f"(~{REAL_AZ_MB} MB each) would need ~{peak * REAL_AZ_MB / 1024:.1f} GB "
                         f"of this machine's {MACHINE_MB // 1024} GB")
    return lines


def admission_run(runs: list[dict]) -> dict | None:
    return next((r for r in runs if r.get("admission")), None)


def render(runs: list[dict], meta: dict, docs: Path | None) -> None:
    admission = admission_run(runs)
    for title, (head, rows) in tables(runs, admission):
        print(f"\n{title}\n{report.as_text(head, rows)}")
    print("\n" + "\n".join(notes(runs, meta)))
    if docs:
        write_docs(runs, meta, admission, docs)


def write_docs(runs: list[dict], meta: dict, admission: dict | None, docs: Path) -> None:
    images = docs.parent / "benchmarks"
    images.mkdir(parents=True, exist_ok=True)
    fleet_plots.detection_cdf(runs, images / "detection-cdf.png")
    fleet_plots.wall_vs_size([r for r in runs if not r.get("admission")], images / "wall.png")
    if admission:
        fleet_plots.admission(admission, images / "admission.png")
    block = [BEGIN, f"Measured {meta['when']} on {meta['cpus']} cores; the CLI "
             f"{'has' if meta['track_interval'] else 'has no'} `--track-interval` "
             f"({'used: 2 s simulated' if meta['track_interval'] else 'blocking creates'}).", ""]
    for title, (head, rows) in tables(runs, admission):
        block += [f"### {title}", "", report.as_markdown(head, rows), ""]
    block += ["### Notes", "", *notes(runs, meta), "",
              "![detection latency CDF](benchmarks/detection-cdf.png)", "",
              "![wall time against VM count](benchmarks/wall.png)", ""]
    if admission:
        block += ["![admissions against the write budget](benchmarks/admission.png)", ""]
    text = docs.read_text() if docs.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    docs.write_text(head + "\n".join(block) + END + rest.partition(END)[2])


def main() -> None:
    args = parse_args()
    docs = Path(args.docs) if args.docs else None
    if args.from_results:
        saved = json.loads(args.from_results.read_text())
        render(saved["runs"], saved, docs)
        return
    specs, skipped = plan_runs(args)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "track_interval": has_option("--track-interval"), "skipped": skipped}
    results = docs.parent / "benchmarks" / "results.json" if docs else None
    if args.append and results and results.exists():
        old = json.loads(results.read_text())
        meta["skipped"] = list(dict.fromkeys(old.get("skipped", []) + meta["skipped"]))
        meta["when"] = f"{old['when'].split(' to ')[0]} to {meta['when']}"
    runs = saved_runs(results, specs) if args.append else []
    render(run_all(specs, results, meta, runs), meta, docs)


if __name__ == "__main__":
    main()
