"""A cheap identity for an image dataset, so stored results are never reused for another one."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["dataset_fingerprint", "task_fingerprint"]


def dataset_fingerprint(dataset, image_column: str, *, samples: int = 64) -> str:
    """Rows, columns, the image bytes of ``samples`` evenly spaced rows and any ``pool_index`` column.

    Cheap at any size (reading every image of a 10^6-image transfer set to check a cache would cost
    as much as a distillation epoch) and sensitive to what changes a cache's validity: a different
    retrieval (``pool_index``), different rows, or different images at the same rows.
    """
    import datasets

    digest = hashlib.sha256(f"{len(dataset)}|{sorted(dataset.column_names)}".encode())
    raw = dataset.with_format(None).select_columns([image_column])
    if isinstance(raw.features.get(image_column), datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    count = min(samples, len(dataset))
    rows = sorted({round(i * (len(dataset) - 1) / max(1, count - 1)) for i in range(count)})
    for row in rows:
        digest.update(_image_bytes(raw[row][image_column]))
    if "pool_index" in dataset.column_names:
        pool_index = np.asarray(dataset.with_format(None)["pool_index"], dtype=np.int64)
        digest.update(pool_index.tobytes())
    return digest.hexdigest()[:16]


def _image_bytes(cell: Any) -> bytes:
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            try:
                with open(cell["path"], "rb") as f:
                    return f.read()
            except OSError:  # a missing file is skipped and counted by the build, not a crash here
                return f"unreadable:{cell['path']}".encode()
    if hasattr(cell, "tobytes"):  # a decoded PIL image or an array
        return cell.tobytes()
    return repr(cell).encode()


def task_fingerprint(task, splits=None) -> str:
    """A labelled task's identity: its class names, and per split (``splits``, default all) its
    :func:`dataset_fingerprint` and all its labels. A class added to an image folder, an image
    replaced at a sampled row or a label changed anywhere gives another fingerprint; reading it costs
    a few dozen images per split."""
    from .validation import label_array

    digest = hashlib.sha256("|".join(task.label_names).encode())
    for name in sorted(task.splits if splits is None else splits):
        split = task.splits[name]
        digest.update(f"{name}:{dataset_fingerprint(split, task.image_column)}".encode())
        digest.update(label_array(split, task.label_column).tobytes())
    return digest.hexdigest()[:16]
