"""Load a labelled target task from a registry name, a Hub id, a local image folder or a ``datasets`` object."""

from __future__ import annotations

import glob
import os
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from .registry import get_task_spec, list_tasks
from .task import TargetTask
from .validation import (
    UNLABELLED,
    check_classes_trained,
    check_dataset_type,
    check_image_column,
    check_label_ids,
    check_label_names,
    class_label_names,
    label_array,
)

__all__ = ["TargetTask", "find_image_column", "find_label_column", "load_image_dataset", "load_target_task"]

_LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class", "category")


def find_image_column(features: datasets.Features) -> str | None:
    """The first column whose feature is ``datasets.Image``."""
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    return None


def find_label_column(features: datasets.Features) -> str | None:
    """The first ``ClassLabel`` column, else a column with a conventional label name."""
    for name, feature in features.items():
        if isinstance(feature, ClassLabel):
            return name
    for name in _LABEL_COLUMN_NAMES:
        if name in features:
            return name
    return None


def load_target_task(
    source: str | os.PathLike | Dataset | DatasetDict | TargetTask,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    name: str | None = None,
    task_type: str | None = None,
    **load_dataset_kwargs: Any,
) -> TargetTask:
    """Load a labelled task and check it before anything trains on it.

    ``source`` is a registry name (``hf_task_distill.data.list_tasks()``), a local image folder (one
    sub-folder per class, optionally under ``train/``/``validation/``/``test/``), a folder written by
    ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` (how a ``datasets`` object reaches the CLI and
    ``compare``; a single ``Dataset`` becomes the train split), a Hub dataset id, or a
    ``Dataset``/``DatasetDict``. Columns are found from the features unless named; string or plain
    integer labels become a ``ClassLabel`` shared by all splits. Every split must be non-empty, have the
    image column, and hold label ids in range. ``load_dataset_kwargs`` go to ``datasets.load_dataset``
    (``revision=``, ``cache_dir=``, ``token=``...); remote code is never run.

    ``task_type`` (``"image-classification"`` or ``"image-segmentation"``) defaults to the preset's,
    else to semantic segmentation when the image column is followed by a mask column (an ``Image``
    column named ``mask``, ``annotation``, ``segmentation``, ``label``...), else classification. A
    segmentation task's ``label_column`` is its mask column (see :func:`_segmentation_task`).
    """
    if isinstance(source, TargetTask):
        return source
    spec = None
    if isinstance(source, Dataset):
        splits, task_name = DatasetDict({"train": source}), name or "custom"
    elif isinstance(source, DatasetDict):
        splits, task_name = source, name or "custom"
    elif isinstance(source, (str, os.PathLike)) and is_saved_dataset(source):  # Dataset.save_to_disk
        saved = datasets.load_from_disk(os.fspath(source))
        splits = saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})
        task_name = name or os.path.basename(os.path.normpath(os.fspath(source)))
    elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        splits, task_name = _image_folder_task(os.fspath(source), name, label_column, load_dataset_kwargs)
    elif isinstance(source, str) and source.lower() == "digits":  # ships with scikit-learn: no network
        from ..demo.digits import load_digits_task

        return load_digits_task(**load_dataset_kwargs)
    elif isinstance(source, str) and source.lower() in list_tasks():
        spec = get_task_spec(source)
        splits, task_name = _registry_splits(spec, load_dataset_kwargs), name or spec.name
        image_column = image_column or spec.image_column
        label_column = label_column or spec.label_column
        label_names = label_names or spec.label_names
    elif isinstance(source, str) and "/" in source:
        splits, task_name = datasets.load_dataset(source, **load_dataset_kwargs), name or source
    elif isinstance(source, str):
        raise ValueError(
            f"cannot load a task from {source!r}: not a known task ({', '.join(['digits', *list_tasks()])}), "
            "an existing folder, a Hub dataset id ('owner/name') or a datasets.Dataset/DatasetDict"
        )
    else:
        check_dataset_type(source, "the task")  # says what to pass instead of a list, a stream...
        raise TypeError(
            f"cannot load a task from a {type(source).__name__}: pass a datasets.Dataset or DatasetDict"
        )
    task_type = task_type or (spec.task_type if spec is not None else None) or _detected_task_type(splits)
    if task_type == "image-segmentation":
        from .segmentation_task import segmentation_task

        return segmentation_task(splits, task_name, image_column, label_column, label_names, spec)
    if task_type != "image-classification":
        from ..tasks import get_task_type

        get_task_type(task_type)  # an unknown name is refused listing the registered ones
        raise ValueError(
            f"load_target_task reads image-classification and image-segmentation tasks, not {task_type}"
        )
    return _standardize(splits, task_name, image_column, label_column, label_names, spec)


def _detected_task_type(splits) -> str:
    """Semantic segmentation when the train split has a mask column, else image classification."""
    from .segmentation_task import find_mask_column

    features = splits["train"].features if "train" in splits else {}
    return "image-segmentation" if find_mask_column(features) else "image-classification"


def _image_folder_task(source: str, name, label_column, load_dataset_kwargs) -> tuple[DatasetDict, str]:
    """An image folder's splits and the task's name (the folder's).

    Raises:
        ValueError: the folder has no class sub-folders (its images have no labels).
    """
    splits = load_image_folder(source, **load_dataset_kwargs)
    task_name = name or os.path.basename(os.path.normpath(source))
    if (
        label_column is None
        and find_label_column(splits["train"].features if "train" in splits else {}) is None
    ):
        raise ValueError(
            f"task '{task_name}': the folder {source} has no class sub-folders, so its images "
            f"have no labels: put each class's images in {os.path.join(source, '<class>')}/ "
            "(optionally under train/, validation/ and test/)"
        )
    return splits, task_name


def _registry_splits(spec, load_dataset_kwargs) -> DatasetDict:
    """A registry task's splits from its Hub dataset, by role (``train``, ``validation``, ``test``).

    Raises:
        ValueError: the Hub dataset lacks a split the registry names.
    """
    raw = datasets.load_dataset(spec.hub_id, spec.config_name, **load_dataset_kwargs)
    missing = [hub_split for hub_split in spec.splits.values() if hub_split not in raw]
    if missing:
        raise ValueError(
            f"task '{spec.name}': {spec.hub_id} has no split(s) {missing} (has: {', '.join(raw)})"
        )
    return DatasetDict({role: raw[hub_split] for role, hub_split in spec.splits.items()})


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    path = os.fspath(path)
    saved_dataset = all(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_info.json"))
    return saved_dataset or os.path.isfile(os.path.join(path, "dataset_dict.json"))


def image_folder_patterns(root: str) -> dict[str, str] | None:
    """One glob pattern per split for a plain class-folder tree, or ``None`` for any other layout.

    ``datasets``' ``imagefolder`` given ``data_dir`` tries some 47 split-naming patterns, each a walk
    of the whole tree: 44 s per load for Fashion-MNIST's 62,000 files, on every pipeline run. The two
    layouts these docs describe, ``root/<class>/<image>`` and ``root/<split>/<class>/<image>`` (split
    folders named exactly as ``datasets`` names them: train, validation/valid/dev/val, test/eval...),
    need one pattern per split (8 s), listed in ``datasets``' split order. The splits, rows, order and
    labels are the same (``tests/test_data.py``). Anything that could make ``datasets`` infer otherwise
    returns ``None`` and is left to it: files at the top, deeper trees, symbolic links, names starting
    with ``__``, a split folder without images, and any other folder or file name that contains a
    split keyword (``datasets`` reads ``test_tube/`` or ``img_train_1.png`` as split names)."""
    from datasets.data_files import DEFAULT_SPLITS, SPLIT_KEYWORDS

    keywords = [k for names in SPLIT_KEYWORDS.values() for k in names]
    split_of = {k: str(split) for split, names in SPLIT_KEYWORDS.items() for k in names}

    def plain_dirs(path: str) -> list[str] | None:
        """The sub-folders of ``path`` when it holds only plain (not linked) folders, else ``None``."""
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        if not entries or any(e.is_symlink() or not e.is_dir() or e.name.startswith("__") for e in entries):
            return None
        return [e.name for e in entries]

    def images_in_class_folders(path: str, classes: list[str]) -> int | None:
        """Files in ``path/<class>/``; ``None`` if a class folder holds a folder or a keyword name."""
        count = 0
        for name in classes:
            if any(k in name.lower() for k in keywords):
                return None
            with os.scandir(os.path.join(path, name)) as it:
                for entry in it:
                    if entry.is_dir() or any(k in entry.name.lower() for k in keywords):
                        return None
                    count += 1
        return count

    top = plain_dirs(root)
    if top is None:
        return None
    if not any(name in split_of for name in top):  # root/<class>/<image>: one train split
        found = images_in_class_folders(root, top)
        return {"train": os.path.join(glob.escape(root), "*", "*")} if found else None
    splits = {split_of.get(name): name for name in top}
    if None in splits or len(splits) != len(top):  # a non-split folder beside them, or two for one split
        return None
    patterns = {}
    for split in (str(s) for s in DEFAULT_SPLITS):
        if split not in splits:
            continue
        classes = plain_dirs(os.path.join(root, splits[split]))
        if classes is None or not images_in_class_folders(os.path.join(root, splits[split]), classes):
            return None
        patterns[split] = os.path.join(glob.escape(root), glob.escape(splits[split]), "*", "*")
    return patterns


def load_image_folder(root: str, split: str | None = None, **load_dataset_kwargs: Any):
    """``datasets.load_dataset("imagefolder")`` on ``root``, with one pattern per split when the
    layout allows (:func:`image_folder_patterns`), else with ``data_dir``."""
    patterns = image_folder_patterns(root)
    if patterns is None:
        return datasets.load_dataset("imagefolder", data_dir=root, split=split, **load_dataset_kwargs)
    return datasets.load_dataset("imagefolder", data_files=patterns, split=split, **load_dataset_kwargs)


def load_image_dataset(
    source: str | os.PathLike | Dataset | DatasetDict, split: str = "train", **load_dataset_kwargs: Any
) -> Dataset:
    """One split of an image collection that need not be labelled (a transfer set or pool): a folder of
    images, a folder written by ``Dataset.save_to_disk`` (a retrieved transfer set in a run's
    ``transfer/data``), a Hub dataset id, or a ``Dataset``/``DatasetDict``."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        return source[split]
    if not isinstance(source, (str, os.PathLike)):
        check_dataset_type(source, "the image collection")
    if is_saved_dataset(source):
        saved = datasets.load_from_disk(os.fspath(source))
        return saved[split] if isinstance(saved, DatasetDict) else saved
    if os.path.isdir(source):
        return load_image_folder(os.fspath(source), split=split, **load_dataset_kwargs)
    from ..sources import is_local_path

    if is_local_path(source):
        raise ValueError(f"no such folder '{os.fspath(source)}'")
    return datasets.load_dataset(source, split=split, **load_dataset_kwargs)


def _standardize(splits, task_name, image_column, label_column, label_names, spec) -> TargetTask:
    """``splits`` as a :class:`TargetTask`: checked, one ``ClassLabel`` order in every split, and the
    image and label columns named ``image`` and ``label`` where those names are free."""
    splits = _checked_splits(splits, task_name)
    features = splits["train"].features
    image_column, label_column = _task_columns(splits, task_name, image_column, label_column)
    feature = features[label_column]
    is_string = getattr(feature, "dtype", None) in ("string", "large_string")
    if isinstance(feature, ClassLabel):
        label_names = label_names or list(feature.names)
    elif label_names is None:
        label_names = _infer_label_names(splits, label_column, is_string)
    # ClassLabel would refuse repeated names too, but without saying which; a repeat makes two output
    # indices mean one class, and "cat" next to "cat " splits one class in two
    label_names = check_label_names(label_names, where=f"task '{task_name}'")
    if isinstance(feature, ClassLabel):
        splits = _one_class_order(splits, label_column, label_names, task_name)
    if spec is not None and spec.num_classes is not None and len(label_names) != spec.num_classes:
        raise ValueError(
            f"task '{task_name}' should have {spec.num_classes} classes, found {len(label_names)}"
        )
    trained = _checked_labels(splits, task_name, label_column, label_names, is_string)
    check_classes_trained(trained, label_names, task_name)
    if not isinstance(feature, ClassLabel):
        splits = DatasetDict(
            {k: v.cast_column(label_column, ClassLabel(names=list(label_names))) for k, v in splits.items()}
        )
    renames = {}
    if image_column != "image" and "image" not in features:
        renames[image_column] = "image"
    if label_column != "label" and "label" not in features:
        renames[label_column] = "label"
    if renames:
        splits = DatasetDict({k: v.rename_columns(renames) for k, v in splits.items()})
    return TargetTask(
        name=task_name,
        splits=splits,
        label_names=[str(n) for n in label_names],
        image_column=renames.get(image_column, image_column),
        label_column=renames.get(label_column, label_column),
        spec=spec,
        task_type=spec.task_type if spec is not None else "image-classification",
    )


def _checked_splits(splits, task_name: str) -> DatasetDict:
    """``splits`` as a ``DatasetDict`` with a non-empty ``train`` split and no empty split.

    Raises:
        ValueError: naming the task and the split.
    """
    if isinstance(splits, Dataset):
        splits = DatasetDict({"train": splits})
    if "train" not in splits:
        raise ValueError(f"task '{task_name}' has no 'train' split (splits: {', '.join(splits) or 'none'})")
    for split_name, split in splits.items():
        if len(split) == 0:
            raise ValueError(f"task '{task_name}': split '{split_name}' is empty")
    return splits


def _task_columns(splits: DatasetDict, task_name: str, image_column, label_column) -> tuple[str, str]:
    """The task's image and label columns (given, or found by their features), checked in every split.

    Raises:
        ValueError: a column is missing (the message lists the columns there are).
    """
    features = splits["train"].features
    image_column = image_column or find_image_column(features)
    if image_column is None:
        raise ValueError(
            f"task '{task_name}' has no image column (columns: {', '.join(features)}); pass image_column="
        )
    label_column = label_column or find_label_column(features)
    if label_column is None or label_column not in features:
        named = f" '{label_column}'" if label_column else ""
        raise ValueError(
            f"task '{task_name}' has no label column{named} (columns: {', '.join(features)}); pass label_column="
        )
    for split_name, split in splits.items():
        check_image_column(split, image_column, where=f"task '{task_name}' split '{split_name}'")
    return image_column, label_column


def _checked_labels(
    splits: DatasetDict, task_name: str, label_column: str, label_names, is_string: bool
) -> set[int]:
    """Check every split's labels against ``label_names``; return the class ids the train split labels.

    Raises:
        ValueError: an unknown label, an id out of range, NaN in a labelled split, or a train split
            without labelled rows (naming the split).
    """
    trained: set[int] = set()  # class ids with at least one labelled training row
    for split_name, split in splits.items():
        where = f"task '{task_name}' split '{split_name}'"
        if is_string:
            values = set(v for v in split.unique(label_column) if v is not None)
            unknown = sorted(values - set(label_names))
            if unknown:
                raise ValueError(
                    f"{where}: label(s) {unknown[:5]} in '{label_column}' are not among the task's label names"
                )
            if split_name == "train":
                trained = {i for i, n in enumerate(label_names) if n in values}
            continue
        try:  # NaN in a labelled split is a broken label, not "unlabelled": name the split and rows
            labels = label_array(split, label_column, nan_is_unlabelled=False)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        check_label_ids(labels, len(label_names), label_column, where=where)
        if split_name == "train":
            if not (labels != UNLABELLED).any():
                raise ValueError(f"task '{task_name}': the train split has no labelled rows")
            trained = set(np.unique(labels[labels != UNLABELLED]).tolist())
    return trained


def _one_class_order(splits: DatasetDict, label_column: str, label_names: list[str], task_name: str):
    """Every split numbered in ``label_names``' order. A split whose ``ClassLabel`` lists the same classes
    in another order (a test split built separately, names sorted differently) would otherwise have
    its ids read with the wrong names: its labels are remapped by name. A split naming a class the
    task does not have is an error giving both lists. (The train split's own names, when ``label_names``
    are other names for the same ids, are a renaming and stay as they are.)"""
    from ..models.labels import label_id_map

    aligned = {}
    for split_name, split in splits.items():
        names = class_label_names(split, label_column)
        renamed = split_name == "train" and sorted(names or []) != sorted(label_names)
        if names is None or names == label_names or renamed:
            aligned[split_name] = split
            continue
        mapping = label_id_map(names, label_names, where=f"task '{task_name}' split '{split_name}'")
        ids = label_array(split, label_column)
        new = [-1 if i == UNLABELLED else mapping[i] for i in ids.tolist()]
        position = split.column_names.index(label_column)
        split = split.remove_columns([label_column]).add_column(
            label_column, new, feature=ClassLabel(names=list(label_names))
        )
        order = split.column_names[:position] + [label_column] + split.column_names[position:-1]
        aligned[split_name] = split.select_columns(order)
    return DatasetDict(aligned)


def _infer_label_names(splits: DatasetDict, label_column: str, is_string: bool) -> list[str]:
    if is_string:
        values = set()
        for split in splits.values():
            values.update(v for v in split.unique(label_column) if v is not None)
        return sorted(values)
    try:
        labels = label_array(splits["train"], label_column, nan_is_unlabelled=False)
    except ValueError as err:
        raise ValueError(f"split 'train': {err}") from err
    labelled = labels[labels != UNLABELLED]
    if labelled.size and labelled.min() < 0:
        raise ValueError(f"label column '{label_column}' has negative ids (e.g. {int(labelled.min())})")
    return [str(i) for i in range(int(labelled.max()) + 1)] if labelled.size else []
