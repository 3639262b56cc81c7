"""A cheap identity for an image dataset, so stored results are never reused for another one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["dataset_fingerprint", "fingerprint_hash", "task_fingerprint", "transfer_set_digest"]


def fingerprint_hash(*parts: Any) -> str:
    """The package's one content hash: sha256 over ``parts`` in order, as 16 hex digits.

    Every stored identity (a stage's inputs, a teacher cache's fingerprint, a dataset, a task, a
    model's weights) is this hash, so that equal inputs give equal hashes wherever they are checked.

    Args:
        *parts: Hashed in order, as one stream: ``bytes``/``bytearray``/``memoryview`` as they are,
            ``str`` as UTF-8, an iterator lazily part by part (a model's weights one tensor at a
            time), anything else as canonical JSON (sorted keys; values JSON cannot hold via ``str``).

    Returns:
        `str`: 16 lowercase hex digits (64 bits).
    """
    digest = hashlib.sha256()
    _update(digest, parts)
    return digest.hexdigest()[:16]


def _update(digest, parts) -> None:
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            digest.update(part)
        elif isinstance(part, str):
            digest.update(part.encode())
        elif isinstance(part, Iterator):
            _update(digest, part)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())


def dataset_fingerprint(dataset, image_column: str, *, samples: int = 64) -> str:
    """Rows, columns, the image bytes of ``samples`` evenly spaced rows and any ``pool_index`` column.

    Cheap at any size (reading every image of a 10^6-image transfer set to check a cache would cost
    as much as a distillation epoch) and sensitive to what changes a cache's validity: a different
    retrieval (``pool_index``), different rows, or different images at the same rows.
    """
    import datasets

    raw = dataset.with_format(None).select_columns([image_column])
    if isinstance(raw.features.get(image_column), datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    count = min(samples, len(dataset))
    rows = sorted({round(i * (len(dataset) - 1) / max(1, count - 1)) for i in range(count)})
    pool_index = b""
    if "pool_index" in dataset.column_names:
        pool_index = np.asarray(dataset.with_format(None)["pool_index"], dtype=np.int64).tobytes()
    return fingerprint_hash(
        f"{len(dataset)}|{sorted(dataset.column_names)}",
        (_image_bytes(raw[row][image_column]) for row in rows),
        pool_index,
    )


def transfer_set_digest(dataset, image_column: str, *, batch_size: int = 256) -> str:
    """Every row's image bytes, in row order: the identity a published transfer set is checked by.

    Unlike :func:`dataset_fingerprint` (64 sampled rows, cheap at any size) this reads every image's
    encoded bytes (not its pixels: no decoding), so one image changed, dropped, added or moved gives
    another digest. It depends only on the bytes, not on how they are stored: the same rows saved
    with ``save_to_disk``, as image files or as Parquet with embedded bytes (the published layout),
    and read back with ``load_from_disk`` or ``datasets.load_dataset``, give the same digest.

    Args:
        dataset: a map-style ``datasets.Dataset``.
        image_column: its image column (an ``Image`` feature, decoded or not, or raw bytes/paths).
        batch_size: rows read at a time.

    Returns:
        `str`: :func:`fingerprint_hash` (16 hex digits) over the row count and each row's image
        bytes, each prefixed with its length.
    """
    import datasets

    raw = dataset.with_format(None).select_columns([image_column])
    if isinstance(raw.features.get(image_column), datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))

    def rows() -> Iterator[bytes]:
        for batch in raw.iter(batch_size=batch_size):
            for cell in batch[image_column]:
                data = _image_bytes(cell)
                yield f"{len(data)}|".encode()
                yield data

    return fingerprint_hash(f"transfer-set|{len(dataset)}|", rows())


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
    :func:`dataset_fingerprint` and all its labels (a segmentation task's: every mask file's bytes,
    undecoded). A class added to an image folder, an image
    replaced at a sampled row or a label changed anywhere gives another fingerprint; reading it costs
    a few dozen images per split."""
    import datasets

    from .validation import label_array

    def split_parts(name: str):
        split = task.splits[name]
        yield f"{name}:{dataset_fingerprint(split, task.image_column)}"
        if isinstance(split.features.get(task.label_column), datasets.Image):  # masks: every file's bytes
            raw = split.with_format(None).select_columns([task.label_column])
            raw = raw.cast_column(task.label_column, datasets.Image(decode=False))
            yield from (_image_bytes(cell) for cell in raw[task.label_column])
        else:
            yield label_array(split, task.label_column).tobytes()

    names = sorted(task.splits if splits is None else splits)
    return fingerprint_hash("|".join(task.label_names), *(split_parts(name) for name in names))
