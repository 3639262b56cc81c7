"""Run every benchmark and write one report of measured ratios against their targets.

    python benchmarks/run_all.py                    # everything (about 55 minutes on 2 CPU cores)
    python benchmarks/run_all.py --reuse retrieval  # keep retrieval_index.json from an earlier run
    python benchmarks/run_all.py --report_only      # rebuild the report from the JSON files

Each benchmark runs in its own process and writes ``benchmarks/results/<name>.json``; this script
then writes ``results/report.md`` and ``results/report.json``. Every ratio's numerator and
denominator come from the same run of one benchmark: on a shared machine only ratios mean anything.
A reused result is marked as such in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BENCHMARKS = {  # name -> command line (after the script path)
    "distillation_speed": [],
    "cache_fidelity": [],
    "linear_probe": ["--epochs", "10", "--images", "256"],
    "retrieval_index": [],
}
RESULT_FILES = {
    "distillation_speed": "distillation_speed.json",
    "cache_fidelity": "cache_fidelity.json",
    "linear_probe": "linear_probe.json",
    "retrieval_index": "retrieval_index.json",
}


def _load(name: str):
    path = os.path.join(RESULTS, RESULT_FILES[name])
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _row(benchmark, measure, value, target, ok, note=""):
    return {
        "benchmark": benchmark,
        "measure": measure,
        "value": value,
        "target": target,
        "met": ok,
        "note": note,
    }


def _speedup_from_step_times(median_s: dict, ten: dict) -> float:
    """E (t_T + t_S) / (K t_T + E t_S): the FLOP prediction with each model's real speed on this device."""
    teacher, student, epochs, views = median_s["teacher"], median_s["student"], ten["epochs"], ten["views"]
    return round(epochs * (teacher + student) / (views * teacher + epochs * student), 3)


def checks(results: dict) -> list[dict]:
    """The targets of each benchmark, evaluated on its JSON (pure: no timing here)."""
    rows = []
    speed = results.get("distillation_speed")
    if speed:
        steps, build, loader, ten = speed["steps"], speed["cache_build"], speed["loader"], speed["ten_epochs"]
        rows += [
            _row("distillation speed", "online step / (teacher forward + student step)",
                 steps["online_over_teacher_plus_student"], "<= 1.10",
                 steps["online_over_teacher_plus_student"] <= 1.10),
            _row("distillation speed", "cached step / plain Trainer student step",
                 steps["cached_over_plain_student"], "<= 1.10", steps["cached_over_plain_student"] <= 1.10),
            _row("distillation speed", "cache build / raw teacher forward throughput",
                 build["build_over_raw_throughput"], ">= 0.90", build["build_over_raw_throughput"] >= 0.90),
            _row("distillation speed", f"speed-up cached (K={ten['views']}) vs online, {ten['epochs']} epochs",
                 ten["speedup_measured"], f"FLOPs predict {ten['speedup_predicted_by_flops']}", None),
            _row("distillation speed", f"speed-up predicted from the measured step times (K={ten['views']})",
                 _speedup_from_step_times(steps["median_s"], ten), "—", None,
                 "teacher forward and student step as timed in the step benchmark"),
            _row("distillation speed", "epochs to break even",
                 ten["break_even_epochs_measured"], f"FLOPs predict {ten['break_even_epochs_predicted_by_flops']}",
                 None),
            _row("distillation speed", "paired-view loader / student training throughput",
                 loader["online_paired_views_over_student"], ">= 1.5",
                 loader["online_paired_views_over_student"] >= 1.5,
                 f"{loader['dataloader_num_workers']} workers, the Trainer's default"),
            _row("distillation speed", "cached-view loader / student training throughput",
                 loader["cached_views_over_student"], ">= 1.5", loader["cached_views_over_student"] >= 1.5,
                 f"{loader['dataloader_num_workers']} workers, the Trainer's default"),
        ]  # fmt: skip
    fidelity = results.get("cache_fidelity")
    if fidelity:
        modes = fidelity["modes"]
        online = modes["online"]
        for mode, summary in modes.items():
            if mode == "online":
                continue
            gap = round(summary["mean_accuracy"] - online["mean_accuracy"], 4)
            noise = round(max(online["std_accuracy"], summary["std_accuracy"]), 4)
            rows.append(
                _row("cache fidelity", f"accuracy, {mode} - online (mean of {len(fidelity['seeds'])} seeds)", gap,
                     f"abs(gap) <= 2 std ({2 * noise})", abs(gap) <= 2 * noise + 1e-9,
                     f"online {online['mean_accuracy']} ± {online['std_accuracy']}, "
                     f"{mode} {summary['mean_accuracy']} ± {summary['std_accuracy']}")
            )  # fmt: skip
    probe = results.get("linear_probe")
    if probe:
        rows.append(
            _row("linear probe", f"speed-up of cached features / E (E={probe['epochs']})",
                 probe["speedup_over_epochs"], "close to 1 (>= 0.9)", probe["speedup_over_epochs"] >= 0.9)
        )  # fmt: skip
    retrieval = results.get("retrieval_index")
    if retrieval:
        for workload in retrieval:
            rows.append(
                _row("retrieval index", f"auto / fastest reaching recall 0.95 ({workload['workload']}, "
                     f"{workload['queries']} queries)", workload["auto_over_fastest"], "<= 1.2",
                     workload["auto_over_fastest"] <= 1.2,
                     f"auto peak RSS {workload['auto_peak_rss_gb']} GB of {workload['memory_budget_gb']} GB")
            )  # fmt: skip
    return rows


def markdown(rows: list[dict], provenance: dict[str, str]) -> str:
    lines = [
        "# Benchmark report",
        "",
        "Ratios measured within one run of each benchmark (`python benchmarks/run_all.py`).",
        "",
        "| benchmark | measure | value | target | met |",
        "|---|---|---:|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(
            f"| {row['benchmark']} | {row['measure']}{note} | {row['value']} | {row['target']} | {met} |"
        )
    lines += ["", "Provenance:", ""]
    lines += [f"- `{name}`: {how}" for name, how in provenance.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", nargs="*", default=[], choices=sorted(BENCHMARKS),
                        help="keep these results from an earlier run instead of rerunning them")  # fmt: skip
    parser.add_argument("--report_only", action="store_true")
    cli = parser.parse_args()
    earlier = {}
    if os.path.exists(os.path.join(RESULTS, "report.json")):
        with open(os.path.join(RESULTS, "report.json"), encoding="utf-8") as f:
            earlier = json.load(f).get("provenance", {})
    provenance = {}
    for name, argv in BENCHMARKS.items():
        if cli.report_only or name in cli.reuse:
            provenance[name] = earlier.get(name, "reused from an earlier run") if _load(name) else "missing"
            continue
        started = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, f"{name}.py"), *argv], stdout=subprocess.DEVNULL
        )
        if result.returncode != 0:
            provenance[name] = f"FAILED (exit {result.returncode})"
            continue
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        provenance[name] = f"run at {stamp}, {time.perf_counter() - started:.0f} s"
    results = {name: _load(name) for name in BENCHMARKS}
    rows = checks(results)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"checks": rows, "provenance": provenance}, f, indent=2)
    report = markdown(rows, provenance)
    with open(os.path.join(RESULTS, "report.md"), "w", encoding="utf-8") as f:
        f.write(report)
    print(report)
    if any(p.startswith("FAILED") for p in provenance.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
