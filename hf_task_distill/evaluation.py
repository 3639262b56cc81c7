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
    """``(predictions, labels)``, both ``[rows]`` int64 in the model's class ids (unlabelled rows: -100).

    The dataset's labels are matched to the model's classes by name (its ``ClassLabel`` against
    ``model.config.id2label``): the same classes in another order are
    remapped, classes the model lacks are a ``ValueError`` giving both lists. An image that cannot be
    decoded is an ``ImageDecodeError`` naming its row and file. ``progress`` shows a progress bar
    named after ``where``.
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
    """Metrics of ``model`` on ``dataset`` (columns found from ``task`` or the features), over the
    labelled rows; labels matched to the model's classes by name (see :func:`predict`)."""
    predictions, labels = predict(
        model, dataset, task=task, spec=spec, batch_size=batch_size, num_workers=num_workers
    )
    labelled = labels != UNLABELLED
    return classification_metrics(predictions[labelled], labels[labelled])


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts: row = true class, column = predicted class (unlabelled
    rows left out)."""
    labelled = labels != UNLABELLED
    pairs = labels[labelled].astype(np.int64) * num_classes + predictions[labelled].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
