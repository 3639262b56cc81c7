"""Evaluate a classifier on a labelled split with its own evaluation view: accuracy, balanced
accuracy, macro-F1 (local metrics, no Hub download) and the confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import ViewSpec, single_view_dataset
from .data.validation import UNLABELLED
from .data.views import stack_single_views
from .devices import process_state
from .metrics import classification_metrics
from .models.labels import label_names_of

__all__ = ["confusion_matrix", "evaluate_classifier", "predict"]


@torch.inference_mode()
def predict(
    model,
    dataset,
    *,
    task=None,
    spec: ViewSpec | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    where: str = "evaluation split",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every row of ``dataset`` with ``model``'s evaluation view (no augmentation).

    The dataset's labels are matched to the model's classes by name (its ``ClassLabel`` against
    ``model.config.id2label``): the same classes in another order are remapped. The model runs on the
    process's device (``devices.process_state``), in eval mode, under ``torch.inference_mode``.

    Args:
        model (`PreTrainedModel`): an image classifier whose output has ``logits`` `[batch, num_labels]`.
        dataset (`datasets.Dataset`): the split to predict, with an image column and a label column.
        task (`TargetTask`, *optional*): names the columns; without it they are found from the features.
        spec (`ViewSpec`, *optional*): the view (size, crop, normalisation); defaults to the model's own.
        batch_size (`int`, *optional*, defaults to 64): images per forward pass.
        num_workers (`int`, *optional*, defaults to 0): ``DataLoader`` worker processes.
        where (`str`, *optional*, defaults to `"evaluation split"`): names the split in errors and the bar.
        progress (`bool`, *optional*, defaults to `False`): show a progress bar.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: ``(predictions, labels)``, both int64 of shape `[rows]`, in the
        model's class ids; unlabelled rows have label ``-100``.

    Raises:
        ValueError: if the dataset has classes the model lacks (the message gives both lists), or a
            label id is out of range.
        ImageDecodeError: if an image cannot be decoded (the message names its row and file).
    """
    spec = spec or ViewSpec.from_model(model)
    prepared = single_view_dataset(  # the split's own ClassLabel says what its ids mean
        dataset,
        spec,
        train=False,
        image_column=getattr(task, "image_column", None),
        label_column=getattr(task, "label_column", None),
        num_labels=model.config.num_labels,
        label_names=label_names_of(model.config),
        where=where,
    )
    device = process_state().device
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(
        prepared, batch_size=batch_size, num_workers=num_workers, collate_fn=stack_single_views
    )
    predictions, labels = [], []
    bar = tqdm(loader, desc=f"evaluate: {where}", leave=False, disable=not progress)
    for batch in bar:
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        predictions.append(logits.argmax(-1).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(predictions), np.concatenate(labels)


def evaluate_classifier(
    model, dataset, *, task=None, spec: ViewSpec | None = None, batch_size: int = 64, num_workers: int = 0
) -> dict[str, Any]:
    """Accuracy, balanced accuracy and macro-F1 of ``model`` on the labelled rows of ``dataset``.

    Labels are matched to the model's classes by name (see :func:`predict`, which takes the same
    arguments and raises the same errors).

    Args:
        model (`PreTrainedModel`): an image classifier.
        dataset (`datasets.Dataset`): the labelled split.
        task (`TargetTask`, *optional*): names the columns; else they are found from the features.
        spec (`ViewSpec`, *optional*): the evaluation view; defaults to the model's.
        batch_size (`int`, *optional*, defaults to 64): images per forward pass.
        num_workers (`int`, *optional*, defaults to 0): ``DataLoader`` worker processes.

    Returns:
        `dict[str, float]`: ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (each in [0, 1]), as
        :func:`~hf_task_distill.metrics.classification_metrics` gives them; empty if no row is labelled.
    """
    predictions, labels = predict(
        model, dataset, task=task, spec=spec, batch_size=batch_size, num_workers=num_workers
    )
    labelled = labels != UNLABELLED
    return classification_metrics(predictions[labelled], labels[labelled])


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Count each (true class, predicted class) pair; unlabelled rows (``-100``) are left out.

    Args:
        predictions (`np.ndarray` of shape `[rows]`): predicted class ids in ``[0, num_classes)``.
        labels (`np.ndarray` of shape `[rows]`): true class ids, or ``-100``.
        num_classes (`int`): the number of classes.

    Returns:
        `np.ndarray` of shape `[num_classes, num_classes]` (int64): row = true class, column = predicted class.
    """
    labelled = labels != UNLABELLED
    pairs = labels[labelled].astype(np.int64) * num_classes + predictions[labelled].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
