"""Figures of a run's results: the metrics of every evaluated model, and a confusion matrix.

Drawn with matplotlib (and scikit-learn's ``ConfusionMatrixDisplay``) on ``matplotlib.figure.Figure``
objects rendered by the Agg canvas, so no window opens and no global pyplot state is touched. Both
libraries are optional (the ``demo`` and ``dev`` extras) and imported only when a figure is drawn;
without them :func:`require_plotting` raises an ``ImportError`` that says how to install them.

Inputs are the evaluate stage's outputs: ``results`` maps a model name to its ``accuracy``,
``balanced_accuracy`` and ``macro_f1``; ``<run>/evaluate/confusion_matrices.json`` holds
``{"labels": [class names in task order], "matrices": {model: [[count]]}}`` with rows the true
class and columns the predicted class.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

__all__ = [
    "CONFUSION_FILE",
    "comparison_figure",
    "PLOTTING_HINT",
    "confusion_matrix_figure",
    "read_confusion_matrices",
    "require_plotting",
    "results_figure",
    "write_run_figures",
]

logger = logging.getLogger(__name__)

PLOTTING_HINT = "pip install 'hf-task-distill[demo]' (or: pip install matplotlib scikit-learn)"
CONFUSION_FILE = os.path.join("evaluate", "confusion_matrices.json")
METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1"}
#: Above this many classes the confusion matrix is drawn without per-cell counts and class names.
MAX_ANNOTATED_CLASSES = 20


def require_plotting() -> None:
    """Raise ``ImportError`` (with the install command) when matplotlib or scikit-learn is missing."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"figures need matplotlib and scikit-learn ({err.name} is missing): {PLOTTING_HINT}"
        ) from err


def results_figure(results: dict[str, dict[str, float]], *, title: str | None = None):
    """Horizontal bars: each model's accuracy, balanced accuracy and macro F1 (those present), value
    written at each bar's end, models top to bottom in the order given. Returns a ``Figure``."""
    require_plotting()
    import numpy as np
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot: the evaluate stage reported no model")
    names = list(results)
    metrics = [m for m in METRICS if all(m in results[n] for n in names)] or ["accuracy"]
    height = 0.8 / len(metrics)
    figure = Figure(figsize=(7.5, 0.9 + 0.55 * len(names) * max(1, len(metrics) / 2)), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(len(names))
    for index, metric in enumerate(metrics):
        values = [float(results[n].get(metric, np.nan)) for n in names]
        bars = axes.barh(
            rows + (index - (len(metrics) - 1) / 2) * height, values, height, label=METRICS[metric]
        )
        axes.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    axes.set_yticks(rows, names)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("score on the evaluation split")
    figure.legend(loc="outside lower center", ncols=len(metrics), fontsize=8)
    axes.set_title(title or "Results per model")
    return figure


def confusion_matrix_figure(labels: list[str], matrix, *, title: str | None = None):
    """The confusion matrix (rows: true class, columns: predicted class) with per-cell counts and class
    names; above :data:`MAX_ANNOTATED_CLASSES` classes, colours only. Raises ``ValueError`` for a
    matrix that is not square with one row per label. Returns a ``Figure``."""
    require_plotting()
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape != (len(labels), len(labels)):
        raise ValueError(
            f"a confusion matrix for {len(labels)} classes must be {len(labels)} x {len(labels)}, "
            f"got shape {counts.shape}"
        )
    small = len(labels) <= MAX_ANNOTATED_CLASSES
    side = min(12.0, 3.0 + 0.45 * len(labels))
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = figure.add_subplot()
    display = ConfusionMatrixDisplay(counts, display_labels=list(labels) if small else None)
    display.plot(ax=axes, include_values=small, cmap="Blues", colorbar=True, xticks_rotation="vertical")
    if not small:
        axes.set_xticks([])
        axes.set_yticks([])
    axes.set_xlabel("predicted class" + ("" if small else f" (all {len(labels)}, in task order)"))
    axes.set_ylabel("true class")
    correct = np.trace(counts) / max(1, counts.sum())
    axes.set_title(f"{title or 'Confusion matrix'} (accuracy {correct:.3f})")
    return figure


def read_confusion_matrices(path: str) -> dict[str, Any] | None:
    """``confusion_matrices.json``, checked; ``None`` (with a log line saying why) when it is absent or
    malformed: a figure is never a reason to fail a run."""
    if not os.path.exists(path):
        logger.info("no confusion matrix figure: %s does not exist", path)
        return None
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        labels, matrices = payload["labels"], payload["matrices"]
        if not isinstance(labels, list) or not isinstance(matrices, dict):
            raise TypeError("'labels' must be a list and 'matrices' an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("no confusion matrix figure: %s is unreadable (%s: %s)", path, type(err).__name__, err)
        return None
    return {"labels": [str(label) for label in labels], "matrices": matrices}


def write_run_figures(
    run_dir: str,
    results: dict[str, dict[str, float]],
    *,
    model: str = "student, distilled + finetuned",
    title: str | None = None,
) -> dict[str, str]:
    """Write ``<run>/results.png`` (every model's metrics) and ``<run>/confusion_matrix.png`` (``model``'s,
    from ``<run>/evaluate/confusion_matrices.json``, skipped with a log line when that file or the
    model's matrix is missing or malformed). Returns ``{figure name: path}`` for the files written.
    ``title`` heads the results chart. Raises ``ImportError`` with the install command when matplotlib
    or scikit-learn is missing."""
    require_plotting()
    written = {}
    path = os.path.join(run_dir, "results.png")
    results_figure(results, title=title).savefig(path, dpi=120)
    written["results"] = path
    confusion = read_confusion_matrices(os.path.join(run_dir, CONFUSION_FILE))
    if confusion is not None:
        matrix = confusion["matrices"].get(model)
        if matrix is None:
            logger.warning("no confusion matrix figure: %s has no matrix for '%s'", CONFUSION_FILE, model)
            return written
        try:
            figure = confusion_matrix_figure(confusion["labels"], matrix, title=model)
        except (ValueError, TypeError) as err:
            logger.warning("no confusion matrix figure: %s, '%s': %s", CONFUSION_FILE, model, err)
            return written
        path = os.path.join(run_dir, "confusion_matrix.png")
        figure.savefig(path, dpi=120)
        written["confusion_matrix"] = path
    return written


def comparison_figure(summary: dict[str, Any]):
    """A comparison's methods as grouped bars: mean accuracy over seeds with the standard deviation
    as error bars, one group per method, one bar per label budget (``compare.report.summarise``'s
    output). Returns a ``Figure``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"figures need matplotlib: {PLOTTING_HINT}") from err
    import numpy as np
    from matplotlib.figure import Figure

    budgets = list(summary)
    methods = list(summary[budgets[0]]["methods"])
    figure = Figure(figsize=(1.2 + 0.9 * len(methods), 3.8), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(budgets)
    columns = np.arange(len(methods))
    for index, budget in enumerate(budgets):
        stats = [summary[budget]["methods"][m] for m in methods]
        axes.bar(
            columns + (index - (len(budgets) - 1) / 2) * width,
            [s["mean"] for s in stats],
            width,
            yerr=[s["std"] for s in stats],
            capsize=3,
            label=f"N = {budget}",
        )
    axes.set_xticks(columns, [f"({m})" if len(m) == 1 else m for m in methods])
    low = min(s["mean"] - s["std"] for b in budgets for s in summary[b]["methods"].values())
    axes.set_ylim(max(0.0, low - 0.05), 1.0)
    axes.set_ylabel("test accuracy (mean ± std over seeds)")
    axes.legend(fontsize=8)
    return figure
