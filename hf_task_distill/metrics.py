"""Classification metrics computed locally (no Hub download), for evaluation loops and reports."""

from __future__ import annotations

import numpy as np

from .data.validation import UNLABELLED

__all__ = ["classification_metrics", "distillation_metrics", "make_compute_metrics"]


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and macro-F1, over the classes in ``labels``.

    Balanced accuracy and macro-F1 matter on imbalanced tasks (HAM10000: 115 to 6,705 images per
    class), where plain accuracy rewards predicting the majority class. A class that is predicted but
    absent from ``labels`` does not count towards the means; a class never predicted has precision 0.

    Args:
        predictions (`np.ndarray` of shape `[rows]`):
            Predicted class ids.
        labels (`np.ndarray` of shape `[rows]`):
            True class ids, all labelled (filter out ``-100`` first).
        prefix (`str`, *optional*, defaults to `""`):
            Put before every key (``"teacher_"`` gives ``teacher_accuracy``...).

    Returns:
        `dict[str, float]`: ``{prefix}accuracy``, ``{prefix}balanced_accuracy`` and ``{prefix}macro_f1``,
        each in [0, 1]; an empty dict when ``labels`` is empty.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if labels.size == 0:
        return {}
    correct = predictions == labels
    classes = np.unique(labels)
    recalls = np.array([correct[labels == c].mean() for c in classes])
    f1s = []
    for c, recall in zip(classes, recalls, strict=True):
        predicted = predictions == c
        precision = correct[predicted].mean() if predicted.any() else 0.0
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {
        f"{prefix}accuracy": float(correct.mean()),
        f"{prefix}balanced_accuracy": float(recalls.mean()),
        f"{prefix}macro_f1": float(np.mean(f1s)),
    }


def make_compute_metrics(extra_metrics: list[str] | tuple[str, ...] = ()):
    """A ``compute_metrics`` for a plain classifier: local metrics plus any ``evaluate`` metrics by name.

    Extra metrics are loaded once, here, with ``evaluate.load`` (a Hub name needs the network the first
    time; a local script path does not) and called as ``metric.compute(predictions=, references=)``.

    Args:
        extra_metrics (`list[str]` or `tuple[str, ...]`, *optional*):
            Names or local paths of ``evaluate`` metrics to add to the local ones. A key an extra metric
            shares with an earlier one is prefixed with the metric's name (``f1_f1``...).

    Returns:
        `Callable[[transformers.EvalPrediction], dict[str, float]]`: takes logits
        (`[rows, num_classes]`, or a tuple whose first item is the logits) and ``label_ids`` (`[rows]`),
        drops the unlabelled rows (``-100``) and returns :func:`classification_metrics` of the arg-max
        plus the extra metrics.

    Raises:
        ImportError: if ``extra_metrics`` are given and ``evaluate`` is not installed.
    """
    extras = {}
    if extra_metrics:
        import evaluate

        extras = {name: evaluate.load(name) for name in extra_metrics}

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        predictions = np.asarray(logits).argmax(-1)
        labels = np.asarray(eval_prediction.label_ids)
        mask = labels != UNLABELLED
        predictions, labels = predictions[mask], labels[mask]
        metrics = classification_metrics(predictions, labels)
        for name, metric in extras.items():
            for key, value in metric.compute(predictions=predictions, references=labels).items():
                metrics[key if key not in metrics else f"{name}_{key}"] = float(value)
        return metrics

    return compute_metrics


def distillation_metrics(eval_prediction) -> dict[str, float]:
    """``compute_metrics`` for ``DistillationTrainer``: student and teacher metrics on the labelled rows,
    and teacher-student agreement (same top-1 class) on every row.

    Args:
        eval_prediction (`transformers.EvalPrediction`):
            ``predictions`` is ``(student_logits, teacher_logits)`` (each `[rows, num_classes]`), or the
            student's logits alone when there is no teacher; ``label_ids`` (`[rows]`, ``-100`` for
            unlabelled rows) may be ``None``.

    Returns:
        `dict[str, float]`: ``agreement`` (with a teacher); :func:`classification_metrics` of the student
        and, with a teacher, the same with the ``teacher_`` prefix, when any row is labelled. Values in [0, 1].
    """
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
