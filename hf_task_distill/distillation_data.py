"""The datasets a :class:`~hf_task_distill.trainer.DistillationTrainer` trains and evaluates on:
checked up front, labels matched to the student's classes by name, paired views attached to raw
images, or the transfer set replayed from a teacher cache."""

from __future__ import annotations

from collections.abc import Callable

from .data.loading import find_label_column
from .data.validation import check_dataset_type, check_label_ids, class_label_names, label_array
from .data.views import PairedViews, ViewSpec
from .models.labels import label_id_map, label_names_of
from .tasks import task_type_of
from .teacher_cache import CachedTeacherDataset, TeacherCache

__all__ = ["cached_dataset", "prepare_dataset"]


def prepare_dataset(
    dataset,
    *,
    views: Callable[[], PairedViews | None],
    student,
    has_teacher: bool,
    train: bool,
    num_labels: int,
    where: str,
    seed: int = 0,
):
    """Check ``dataset`` before any step and attach paired views to a raw image dataset.

    Labels are matched to the student's classes by name (:func:`~hf_task_distill.models.labels.label_id_map`):
    a ``ClassLabel`` column listing the same classes in another order is remapped, other classes are
    refused. A training set's undecodable images are skipped and counted (a transfer set is web-scale
    and unchecked).

    Args:
        dataset: a ``datasets.Dataset`` of raw images, one that already yields ``pixel_values``, a torch
            ``Dataset`` (used as it is), or ``None``.
        views: returns the teacher and student view specs (called only for raw images).
        student: the student model (its ``config`` names its classes).
        has_teacher: ``False`` when distilling from a cache: evaluation renders the student's view only.
        train: training rows (random views, unreadable rows skipped) or evaluation rows.
        num_labels: the student's class count.
        where: how errors name the dataset (``"train_dataset"``...).
        seed: seeds the training views by ``(seed, epoch, row)``.

    Returns:
        The dataset to hand to the Trainer (``None`` for ``None``).

    Raises:
        ValueError: an empty dataset, label ids out of range, labels that cannot be remapped on
            pre-rendered pixels, or raw images with no views to render them.
    """
    if dataset is None:
        return None
    check_dataset_type(dataset, where, torch_datasets=True)
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty")
    if not hasattr(dataset, "with_transform"):
        return dataset  # a torch Dataset yielding tensors: the user owns its format
    model_names = label_names_of(student.config)
    if dataset.format.get("type") == "custom" or "pixel_values" in dataset.column_names:
        _check_rendered(dataset, model_names, num_labels, where)
        return dataset
    paired = views()
    if paired is None:
        raise ValueError(
            f"{where} holds raw images and there is no teacher to derive views from: pass views="
        )
    outputs = None if has_teacher else {"pixel_values": paired.student}
    return paired.apply(
        dataset,
        train=train,
        num_labels=num_labels,
        label_names=model_names,
        where=where,
        outputs=outputs,
        seed=seed,
        skip_unreadable=train,
        task_type=task_type_of(student),
    )


def _check_rendered(dataset, model_names, num_labels: int, where: str) -> None:
    """A dataset that already yields pixel values: its labels must already be the model's ids."""
    raw = dataset.with_format(None)
    label_column = find_label_column(raw.features)
    if label_column is None:
        return
    data_names = class_label_names(raw, label_column)
    if label_id_map(data_names, model_names, num_labels=num_labels, where=where) is not None:
        raise ValueError(
            f"{where} already holds pixel values, so its labels cannot be remapped here: its "
            f"classes are numbered {data_names} and the model's {model_names}. Remap them first "
            f"(dataset.align_labels_with_mapping(model.config.label2id, '{label_column}'))"
        )
    check_label_ids(label_array(raw, label_column), num_labels, label_column, where=where)


def cached_dataset(dataset, cache: TeacherCache, student, student_view: ViewSpec, num_labels: int):
    """The transfer set replayed from ``cache``: each epoch's cached view of each row, rendered at the
    student's resolution, with the stored teacher logits.

    Args:
        dataset: the map-style ``datasets.Dataset`` the cache was built on.
        cache: the teacher cache (checked against ``dataset`` and the student's task type).
        student: the student model (its ``config`` names its classes).
        student_view: the student's view spec.
        num_labels: the student's class count.

    Returns:
        A :class:`~hf_task_distill.teacher_cache.CachedTeacherDataset`.

    Raises:
        TypeError: ``dataset`` is not a map-style ``datasets.Dataset``.
        ValueError: an empty dataset, or labels out of range.
        TeacherCacheMismatch: a cache built on another dataset or for another task type.
    """
    if not hasattr(dataset, "with_format") or not hasattr(dataset, "__len__"):
        raise TypeError(
            "teacher_cache= needs the transfer set it was built on, as a map-style datasets.Dataset, "
            f"got {type(dataset).__name__}"
        )
    check_dataset_type(dataset, "train_dataset")
    if len(dataset) == 0:
        raise ValueError("train_dataset is empty")
    task = task_type_of(student)
    cache.check(dataset=dataset, task_type=task.name, where="train_dataset")
    label_column = find_label_column(dataset.features)
    label_map = None
    if label_column is not None:  # the task type checks its targets (class ids, or masks)
        label_map = task.check_targets(
            dataset,
            label_column,
            num_labels=num_labels,
            label_names=label_names_of(student.config),
            image_column=cache.image_column,
            where="train_dataset",
        )
    return CachedTeacherDataset(dataset, cache, student_view, label_column=label_column, label_map=label_map)
