"""Classification metrics computed locally (no Hub download), for evaluation loops and reports."""

from __future__ import annotations

import numpy as np

from .data.validation import UNLABELLED

__all__ = ["classification_metrics", "distillation_metrics"]


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Accuracy and balanced accuracy (mean per-class recall over classes present in ``labels``)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if labels.size == 0:
        return {}
    correct = predictions == labels
    recalls = [correct[labels == c].mean() for c in np.unique(labels)]
    return {f"{prefix}accuracy": float(correct.mean()), f"{prefix}balanced_accuracy": float(np.mean(recalls))}


def distillation_metrics(eval_prediction) -> dict[str, float]:
    """``compute_metrics`` for ``DistillationTrainer``: student and teacher accuracy on labelled rows,
    and teacher-student agreement (same top-1 class) on every row."""
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        student_logits, teacher_logits = predictions
    else:  # no teacher (e.g. label-only finetuning)
        student_logits, teacher_logits = predictions, None
    student_pred = np.asarray(student_logits).argmax(-1)
    metrics = {}
    teacher_pred = None
    if teacher_logits is not None:
        teacher_pred = np.asarray(teacher_logits).argmax(-1)
        metrics["agreement"] = float((student_pred == teacher_pred).mean())
    labels = eval_prediction.label_ids
    if labels is not None:
        labels = np.asarray(labels)
        mask = labels != UNLABELLED
        if mask.any():
            metrics.update(classification_metrics(student_pred[mask], labels[mask]))
            if teacher_pred is not None:
                metrics.update(classification_metrics(teacher_pred[mask], labels[mask], prefix="teacher_"))
    return metrics
