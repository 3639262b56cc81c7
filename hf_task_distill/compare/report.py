"""What a comparison reports: per method the mean and spread over seeds, and for the paper's claims
the paired difference (same labels, same seed) with a 95% Student-t interval. Pure functions of the
cell records; the writing is at the end."""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from .methods import COMPARISONS, METHODS

__all__ = ["paired_difference", "spread", "summarise", "to_markdown", "write_report"]

logger = logging.getLogger(__name__)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of accuracies in [0, 1]."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired_difference(
    first: Sequence[float], second: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Mean of ``first[i] - second[i]`` over pairs (one per seed) and its two-sided Student-t
    confidence interval (``scipy.stats.t``); ``low``/``high`` are NaN with fewer than two pairs.
    ``excludes_zero`` says whether the interval lies entirely on one side of 0."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_difference needs pairs: {len(first)} and {len(second)} values")
    diffs = [float(a) - float(b) for a, b in zip(first, second, strict=True)]
    mean = statistics.fmean(diffs)
    low = high = math.nan
    if len(diffs) > 1:
        from scipy.stats import t

        half = t.ppf(0.5 + confidence / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
    excludes = bool(len(diffs) > 1 and (low > 0 or high < 0))
    return {"mean": mean, "low": low, "high": high, "pairs": len(diffs), "excludes_zero": excludes}


def summarise(records: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per label budget: every method's spread over seeds, and the paired differences of
    :data:`~.methods.COMPARISONS` whose two methods were run."""
    summary: dict[str, Any] = {}
    for per_class in sorted({r["per_class"] for r in records}):
        cells = sorted((r for r in records if r["per_class"] == per_class), key=lambda r: r["seed"])
        entry = {
            "seeds": [r["seed"] for r in cells],
            "methods": {m: spread([r["accuracy"][m] for r in cells]) for m in methods},
            "differences": {},
        }
        for better, worse in COMPARISONS:
            if better in methods and worse in methods:
                entry["differences"][f"{better}-{worse}"] = paired_difference(
                    [r["accuracy"][better] for r in cells], [r["accuracy"][worse] for r in cells]
                )
        unequal = _unequal_transfer_sets(cells)
        if unequal:
            entry["unequal_transfer_sets"] = unequal
        if all("in_domain_share" in r for r in cells):
            entry["in_domain_share"] = {
                run: spread([r["in_domain_share"][run] for r in cells]) for run in cells[0]["in_domain_share"]
            }
        summary[str(per_class)] = entry
    return summary


def at_unequal_budget(distill: dict[str, dict[str, int]]) -> bool:
    """Whether a cell's distillation runs (``{run: {"transfer_rows", "steps"}}``) did not all get the
    same number of transfer images and student steps: then the cell is not at equal budget."""
    return any(len({run[key] for run in distill.values()}) > 1 for key in ("transfer_rows", "steps"))


def _unequal_transfer_sets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells at unequal budget, with their runs' sizes, for the report to mark."""
    return [
        {"seed": r["seed"], "distill": r["distill"]} for r in cells if at_unequal_budget(r.get("distill", {}))
    ]


def _points(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}"


def to_markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The comparison as a markdown table (accuracy in %, mean ± std over seeds) and the paired
    differences in points with their 95% intervals."""
    budgets = list(summary)
    lines = [
        f"# Comparison on {meta['task']}",
        "",
        f"Teacher `{meta['teacher']}`, student `{meta['student']}`"
        + (f", pretrained student `{meta['pretrained_student']}`" if meta.get("pretrained_student") else "")
        + f"; transfer budget {meta['transfer_budget']} images; {meta['test_images']} test images; "
        f"seeds {', '.join(map(str, summary[budgets[0]]['seeds']))}; wall time {meta['wall_s'] / 60:.1f} min on "
        f"{meta['device']}.",
        "",
        "| method | " + " | ".join(f"N = {n}" for n in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for key in summary[budgets[0]]["methods"]:
        label = f"({key}) {METHODS[key].description}" if len(key) == 1 else METHODS[key].description
        cells = [
            f"{100 * summary[n]['methods'][key]['mean']:.1f} ± {100 * summary[n]['methods'][key]['std']:.1f}"
            for n in budgets
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "in_domain_share" in summary[budgets[0]]:
        for run, what in (("d", "retrieved set (d)"), ("c", "pool sample (c)")):
            shares = [f"{100 * summary[n]['in_domain_share'][run]['mean']:.1f}%" for n in budgets]
            lines.append(f"| in-domain share, {what} | " + " | ".join(shares) + " |")
        lines.append(
            "| in-domain share of the pool (base rate) | "
            + " | ".join(f"{100 * meta['pool_base_rate']:.1f}%" for _ in budgets)
            + " |"
        )
    for n in budgets:
        for cell in summary[n].get("unequal_transfer_sets", []):
            sizes = ", ".join(
                f"{run}: {v['transfer_rows']} images, {v['steps']} steps"
                for run, v in cell["distill"].items()
            )
            lines += [
                "",
                f"**Not at equal budget** (N = {n}, seed {cell['seed']}): the distillation runs got different "
                f"transfer sets or step counts ({sizes}); their differences in this cell compare unequal budgets.",
            ]
    lines += [
        "",
        "Paired differences (same labels and seed), in accuracy points, with 95% Student-t intervals:",
        "",
        "| difference | " + " | ".join(f"N = {n}" for n in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for pair in summary[budgets[0]]["differences"]:
        cells = []
        for n in budgets:
            d = summary[n]["differences"][pair]
            if d["pairs"] < 2:  # no interval from one seed: say so rather than "includes 0"
                cells.append(f"{_points(d['mean'])} (one seed: no interval)")
                continue
            verdict = "excludes 0" if d["excludes_zero"] else "includes 0"
            cells.append(f"{_points(d['mean'])} [{_points(d['low'])}, {_points(d['high'])}], {verdict}")
        better, worse = pair.split("-")
        lines.append(f"| ({better}) − ({worse}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: str, records, summary, meta) -> dict[str, str]:
    """``comparison.json`` (settings, every cell, the summary), ``comparison.md`` and, with
    matplotlib, ``comparison.png``; returns the paths written."""
    from ..files import write_json_atomically

    paths = {
        "json": os.path.join(output_dir, "comparison.json"),
        "markdown": os.path.join(output_dir, "comparison.md"),
    }
    write_json_atomically(paths["json"], {"meta": meta, "cells": records, "summary": summary})
    with open(paths["markdown"], "w", encoding="utf-8") as file:
        file.write(to_markdown(summary, meta))
    from ..plots import comparison_figure

    try:
        figure = comparison_figure(summary)
    except ImportError as err:  # matplotlib is optional: the numbers do not need it
        logger.info("no comparison chart: %s", err)
        return paths
    paths["chart"] = os.path.join(output_dir, "comparison.png")
    figure.savefig(paths["chart"], dpi=120)
    return paths
