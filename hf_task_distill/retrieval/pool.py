"""Open an image pool from wherever it lives, as a ``datasets`` object the embedder can walk.

Pools come as a loaded ``Dataset``/``IterableDataset``, a folder of images, parquet files or
webdataset ``.tar`` shards (local paths or globs), or a Hub dataset id. All go through
``datasets.load_dataset`` with its packaged builders (``imagefolder``, ``parquet``, ``webdataset``),
which need no network for local files. ``streaming=True`` reads the pool lazily, so a pool larger
than the disk cache is never converted to Arrow first.
"""

from __future__ import annotations

import glob
import os

__all__ = ["load_pool"]

_BUILDER_BY_SUFFIX = {".parquet": "parquet", ".tar": "webdataset"}


def _local_builder(files: list[str]) -> str | None:
    kinds = {_BUILDER_BY_SUFFIX.get(os.path.splitext(f)[1].lower()) for f in files}
    if kinds == {None}:
        return None
    if len(kinds) > 1:
        raise ValueError(
            "a pool must be one kind of file; found "
            + ", ".join(sorted(str(k) for k in kinds if k))
            + " shards mixed with other files"
        )
    return kinds.pop()


def load_pool(source, *, streaming: bool = False, split: str = "train", **load_kwargs):
    """A pool as a ``datasets.Dataset`` (or ``IterableDataset`` with ``streaming=True``).

    ``source`` may be a ``Dataset``/``IterableDataset`` (returned as is), a folder of images
    (``imagefolder``), a folder written by ``save_to_disk`` (its ``split`` if it holds several), a folder, file or glob of ``.parquet`` files or webdataset ``.tar`` shards,
    or a Hub dataset id. Extra keyword arguments go to ``datasets.load_dataset``.
    """
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"cannot read a pool from {type(source).__name__}: give a dataset, a path or a Hub id"
        )
    source = os.fspath(source)
    from ..data.loading import is_saved_dataset

    if os.path.isdir(source) and is_saved_dataset(source):  # Dataset.save_to_disk, as --dataset takes
        saved = datasets.load_from_disk(source)
        saved = saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        return saved.to_iterable_dataset() if streaming else saved
    if os.path.isdir(source):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names)
        if not files:
            raise ValueError(f"the pool folder {source} is empty")
        builder = _local_builder([f for f in files if not os.path.basename(f).startswith(".")])
        if builder is None:
            from ..data.loading import load_image_folder

            return load_image_folder(source, split=split, streaming=streaming, **load_kwargs)
        files = [f for f in files if os.path.splitext(f)[1].lower() in _BUILDER_BY_SUFFIX]
        return datasets.load_dataset(
            builder, data_files=files, split="train", streaming=streaming, **load_kwargs
        )
    files = (
        sorted(glob.glob(source)) if any(c in source for c in "*?[") else [source] * os.path.isfile(source)
    )
    if files:
        builder = _local_builder(files)
        if builder is None:
            raise ValueError(f"{source}: expected .parquet files or webdataset .tar shards")
        return datasets.load_dataset(
            builder, data_files=files, split="train", streaming=streaming, **load_kwargs
        )
    looks_local = source.startswith((os.sep, ".", "~")) or os.path.splitext(source)[1] in _BUILDER_BY_SUFFIX
    if looks_local or any(c in source for c in "*?["):
        raise FileNotFoundError(f"no pool files match {source}")
    return datasets.load_dataset(source, split=split, streaming=streaming, **load_kwargs)
