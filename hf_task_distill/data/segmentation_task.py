"""Loading a semantic-segmentation task: the image column, the mask column and the class names.

Kept apart from :mod:`~hf_task_distill.data.loading` (the classification checks) so that each task
type's loading rules are in one place; ``load_target_task`` calls :func:`segmentation_task`.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
from datasets import DatasetDict

from .masks import MAX_SEGMENTATION_CLASSES, MaskError, mask_array, reduce_labels_map
from .task import TargetTask
from .validation import IGNORE_INDEX, check_label_names

__all__ = ["find_mask_column", "segmentation_task"]

logger = logging.getLogger(__name__)

SEGMENTATION = "image-segmentation"
_MASK_COLUMN_NAMES = (
    "mask",
    "masks",
    "annotation",
    "segmentation",
    "semantic_segmentation",
    "segmentation_mask",
    "label",
    "labels",
    "gt",
)


def find_mask_column(features) -> str | None:
    """An ``Image`` column with a conventional mask name (``mask``, ``annotation``, ``label``...)."""
    for name in _MASK_COLUMN_NAMES:
        if isinstance(features.get(name), datasets.Image):
            return name
    return None


def segmentation_task(splits, task_name, image_column, mask_column, label_names, spec) -> TargetTask:
    """``splits`` as a segmentation :class:`TargetTask`, its columns and classes checked.

    Class names come from ``label_names``, else the preset, else the masks of the train split (ids
    ``0 .. max``, named by their id; logged). A preset with ``reduce_labels`` (ADE20K) has its raw
    mask values mapped once (raw 0 -> 255, ``k`` -> ``k - 1``).

    Raises:
        ValueError: no train split, an empty split, no image or mask column in a split, more than 255
            classes, or unusable class names (each message names the task and split).
    """
    from .loading import _checked_splits, find_image_column

    splits = _checked_splits(splits, task_name)
    features = splits["train"].features
    image_column = image_column or find_image_column(features)
    mask_column = mask_column or find_mask_column(features)
    for split_name, split in splits.items():
        columns = split.column_names
        if image_column not in columns:
            raise ValueError(
                f"task '{task_name}' split '{split_name}' has no image column (columns: {', '.join(columns)})"
            )
        if mask_column is None or mask_column not in columns:
            named = f" '{mask_column}'" if mask_column else ""
            raise ValueError(
                f"task '{task_name}' is a segmentation task but split '{split_name}' has no mask column{named} "
                f"(columns: {', '.join(columns)}): pass label_column= naming the column of mask images"
            )
    feature = features[mask_column]
    mask_features = (
        datasets.Image,
        datasets.Array2D,
        datasets.Sequence,
        getattr(datasets, "List", datasets.Sequence),
    )
    if not isinstance(feature, mask_features):
        raise ValueError(
            f"task '{task_name}' is a segmentation task but its column '{mask_column}' holds {feature} "
            "(an image-level label?), not masks: a segmentation task needs one mask image (or 2-D array) per row"
        )
    if spec is not None and spec.reduce_labels:
        table = reduce_labels_map()
        splits = DatasetDict({k: _mapped_masks(v, mask_column, table) for k, v in splits.items()})
    if label_names is None:
        label_names = _label_names_from_masks(splits["train"], mask_column, task_name)
    label_names = check_label_names(label_names, where=f"task '{task_name}'")
    if len(label_names) > MAX_SEGMENTATION_CLASSES:
        raise MaskError(
            f"task '{task_name}' has {len(label_names)} classes; masks keep {IGNORE_INDEX} as the ignore index, "
            f"so at most {MAX_SEGMENTATION_CLASSES} are supported"
        )
    return TargetTask(
        name=task_name,
        splits=splits,
        label_names=[str(n) for n in label_names],
        image_column=image_column,
        label_column=mask_column,
        spec=spec,
        task_type=SEGMENTATION,
    )


def _mapped_masks(split, column: str, table: list[int]):
    """The split with every mask's values replaced through ``table`` (single-channel PNGs)."""
    from PIL import Image

    lookup = np.asarray(table, dtype=np.uint8)

    def convert(example, row):
        if example[column] is not None:
            ids = mask_array(example[column], where=f"row {row}, column '{column}'")
            example[column] = Image.fromarray(lookup[np.clip(ids, 0, len(lookup) - 1)], mode="L")
        return example

    return split.map(convert, with_indices=True, features=split.features, desc="reduce_labels")


def _label_names_from_masks(split, column: str, task_name: str) -> list[str]:
    from .images import undecoded

    highest = -1
    for row, example in enumerate(undecoded(split.select_columns([column]), column)):
        if example[column] is None:
            continue
        ids = mask_array(example[column], where=f"task '{task_name}' train row {row}, column '{column}'")
        ids = ids[ids != IGNORE_INDEX]
        if ids.size:
            highest = max(highest, int(ids.max()))
    if highest < 0:
        raise ValueError(f"task '{task_name}': no labelled pixel in the train split's masks")
    logger.warning(
        "task '%s' names no classes: using the mask ids 0..%d as names (pass label_names= for real ones)",
        task_name,
        highest,
    )
    return [str(i) for i in range(highest + 1)]
