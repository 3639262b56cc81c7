"""Label budgets as in the paper: N labelled images per class, at most N per class, or a fraction."""

from __future__ import annotations

import logging
import math

import numpy as np

from .validation import UNLABELLED, label_array

__all__ = ["label_budget_indices", "select_label_budget", "stratified_holdout_indices"]

logger = logging.getLogger(__name__)


def label_budget_indices(
    labels: np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Row indices of a stratified, seeded subset.

    ``per_class=N`` keeps ``min(N, n_c)`` rows of every class ``c`` (so it also serves the paper's "at
    most N per class" budgets); ``fraction=f`` keeps ``max(1, round(f * n_c))``. Each class's rows are
    shuffled once per seed, and the subset is a prefix of that order, so smaller budgets are subsets of
    larger ones for the same seed. Unlabelled rows are never selected. Indices come back sorted.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class= or fraction=")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for cls in np.unique(labels[labels != UNLABELLED]):
        rows = np.flatnonzero(labels == cls)
        rows = rows[rng.permutation(rows.size)]
        if per_class is not None:
            keep = min(per_class, rows.size)
            if rows.size < per_class:
                short.append(f"{cls} ({rows.size})")
        else:
            keep = max(1, math.floor(fraction * rows.size + 0.5))
        chosen.append(rows[:keep])
    if short:
        logger.warning(
            "Label budget of %d per class: %d class(es) have fewer and keep all they have: %s",
            per_class,
            len(short),
            ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""),
        )
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def stratified_holdout_indices(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split labelled rows into (train, held-out) indices, ``fraction`` of each class held out.

    Each class with at least two rows gives ``max(1, round(fraction * n_c))`` rows (never all of
    them) to the held-out part; a class with a single row stays in train. Used for model selection
    when a task has no validation split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held, train = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for cls in np.unique(labels[labels != UNLABELLED]):
        rows = np.flatnonzero(labels == cls)
        rows = rows[rng.permutation(rows.size)]
        n_held = 0 if rows.size < 2 else min(rows.size - 1, max(1, math.floor(fraction * rows.size + 0.5)))
        held.append(rows[:n_held])
        train.append(rows[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def select_label_budget(
    dataset, *, label_column: str = "label", per_class=None, fraction=None, seed: int = 0
):
    """``dataset.select`` of :func:`label_budget_indices` on its label column."""
    indices = label_budget_indices(
        label_array(dataset, label_column), per_class=per_class, fraction=fraction, seed=seed
    )
    return dataset.select(indices.tolist())
