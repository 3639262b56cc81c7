"""Evaluate a classifier on a labelled split with its own evaluation view: accuracy, balanced
accuracy, macro-F1 (local metrics, no Hub download)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import ViewSpec, single_view_dataset
from .data.views import stack_single_views
from .devices import process_state
from .metrics import classification_metrics

__all__ = ["evaluate_classifier"]


@torch.inference_mode()
def evaluate_classifier(
    model, dataset, *, task=None, spec: ViewSpec | None = None, batch_size: int = 64, num_workers: int = 0
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (columns found from ``task`` or the features)."""
    spec = spec or ViewSpec.from_model(model)
    prepared = single_view_dataset(
        dataset,
        spec,
        train=False,
        image_column=getattr(task, "image_column", None),
        label_column=getattr(task, "label_column", None),
        num_labels=getattr(task, "num_labels", None),
    )
    device = process_state().device
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(
        prepared,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=stack_single_views,
    )
    predictions, labels = [], []
    for batch in loader:
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        predictions.append(logits.argmax(-1).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return classification_metrics(np.concatenate(predictions), np.concatenate(labels))
