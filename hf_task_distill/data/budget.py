"""Label budgets as in the paper: N labelled images per class, at most N per class, a fraction, or (for
segmentation, whose images have no single class to stratify by) N images of the split."""

from __future__ import annotations

import logging
import math

import numpy as np

from ..checks import check_int, check_number
from .validation import UNLABELLED, class_label_names, label_array

__all__ = [
    "image_budget_indices",
    "label_budget_indices",
    "select_label_budget",
    "stratified_holdout_indices",
]

logger = logging.getLogger(__name__)


def label_budget_indices(
    labels: np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    label_names: list[str] | None = None,
) -> np.ndarray:
    """Row indices of a stratified, seeded subset.

    ``per_class=N`` keeps ``min(N, n_c)`` rows of every class ``c`` (so it also serves the paper's "at
    most N per class" budgets); ``fraction=f`` keeps ``max(1, round(f * n_c))``. Each class's rows are
    shuffled once per seed, and the subset is a prefix of that order, so smaller budgets are subsets of
    larger ones for the same seed. Unlabelled rows are never selected. Indices come back sorted.
    ``label_names`` name the classes in the warning about classes smaller than the budget.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class= or fraction=")
    per_class = check_int(per_class, "per_class", minimum=1, optional=True)
    fraction = check_number(fraction, "fraction", above=0, maximum=1, optional=True)
    seed = check_int(seed, "seed")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for cls in np.unique(labels[labels != UNLABELLED]):
        rows = np.flatnonzero(labels == cls)
        rows = rows[rng.permutation(rows.size)]
        if per_class is not None:
            keep = min(per_class, rows.size)
            if rows.size < per_class:
                name = label_names[cls] if label_names is not None and 0 <= cls < len(label_names) else cls
                short.append(f"{name} ({rows.size})")
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


def image_budget_indices(num_rows: int, images: int, *, seed: int = 0, split: str = "train") -> np.ndarray:
    """Row indices of a seeded random subset of ``images`` of a split's ``num_rows`` rows.

    The label budget of a semantic-segmentation task, whose images carry many classes each and so
    cannot be stratified by class: the paper's ADE20K budgets are 1,200 / 2,401 / 4,802 / 9,605 /
    19,210 labelled images. The rows are shuffled once per seed and the subset is a prefix of that
    order, so smaller budgets are subsets of larger ones for the same seed. Indices come back sorted.

    Args:
        num_rows (`int`): the split's size in images.
        images (`int`): images kept, in ``[1, num_rows]``.
        seed (`int`, *optional*, defaults to 0): seed of the draw; the same seed keeps the same images.
        split (`str`, *optional*, defaults to `"train"`): the split's name, for the error message.

    Returns:
        `np.ndarray`: ``images`` sorted row indices (int64).

    Raises:
        TypeError: ``images`` or ``seed`` is not an integer.
        ValueError: ``images`` is below 1 or above ``num_rows`` (the message names ``images=`` and the
            split's size).
    """
    images = check_int(images, "images", minimum=1)
    seed = check_int(seed, "seed")
    if images > num_rows:
        raise ValueError(
            f"images={images} is more than split '{split}' has ({num_rows} images): give images= of at "
            f"most {num_rows}"
        )
    order = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(order[:images]).astype(np.int64)


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
        label_array(dataset, label_column),
        per_class=per_class,
        fraction=fraction,
        seed=seed,
        label_names=class_label_names(dataset, label_column),
    )
    return dataset.select(indices.tolist())
