"""Classification (and per-pixel) metrics computed locally (no Hub download), for evaluation loops and reports."""

from __future__ import annotations

import numpy as np

from .data.validation import UNLABELLED, labelled_positions

__all__ = ["classification_metrics", "distillation_metrics", "make_compute_metrics", "mean_iou"]


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


def _class_ids(predictions) -> np.ndarray:
    """Predicted class ids from logits (`[rows, num_classes]`, or `[rows, num_classes, h, w]`) or
    from class maps already arg-maxed (`[rows, H, W]`, what the trainer keeps of dense outputs)."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        return predictions
    return predictions.argmax(1 if predictions.ndim == 4 else -1)


def mean_iou(predictions: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean intersection over union over the classes present in ``labels`` or ``predictions``.

    Args:
        predictions (`np.ndarray` of shape `[pixels]`): predicted class ids of labelled pixels.
        labels (`np.ndarray` of shape `[pixels]`): their true class ids.
        num_classes (`int`, *optional*): the class count; default: one more than the largest id seen.

    Returns:
        `float` in [0, 1] (NaN for no pixels).
    """
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if labels.size == 0:
        return float("nan")
    n = num_classes or int(max(predictions.max(), labels.max())) + 1
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return float((intersection[union > 0] / union[union > 0]).mean())


def distillation_metrics(eval_prediction) -> dict[str, float]:
    """``compute_metrics`` for ``DistillationTrainer``: student and teacher metrics on the labelled rows,
    and teacher-student agreement (same top-1 class) on every row.

    For segmentation everything is per pixel: ``agreement`` over every pixel, ``accuracy`` (pixel
    accuracy), ``balanced_accuracy`` (mean per-class pixel recall), ``macro_f1`` and ``mean_iou`` over
    the labelled pixels (not ``255``).

    Args:
        eval_prediction (`transformers.EvalPrediction`):
            ``predictions`` is ``(student_logits, teacher_logits)`` (each `[rows, num_classes]`; for
            segmentation class maps `[rows, H, W]` or logits `[rows, num_classes, H, W]` on the masks'
            grid), or the student's alone when there is no teacher; ``label_ids`` (`[rows]`, ``-100``
            for unlabelled rows, or masks `[rows, H, W]`, ``255`` unlabelled) may be ``None``.

    Returns:
        `dict[str, float]`: ``agreement`` (with a teacher); :func:`classification_metrics` of the student
        and, with a teacher, the same with the ``teacher_`` prefix, when any row is labelled (for masks
        also ``mean_iou``). Values in [0, 1].

    Raises:
        ValueError: if segmentation predictions and masks have different sizes.
    """
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        student_logits, teacher_logits = predictions
    else:  # no teacher (e.g. label-only finetuning)
        student_logits, teacher_logits = predictions, None
    student_pred = _class_ids(student_logits)
    metrics = {}
    teacher_pred = None
    if teacher_logits is not None:
        teacher_pred = _class_ids(teacher_logits)
        metrics["agreement"] = float((student_pred == teacher_pred).mean())
    labels = eval_prediction.label_ids
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim > 1 and labels.shape != student_pred.shape:
            raise ValueError(
                f"predictions of shape {student_pred.shape} for labels of shape {labels.shape}: "
                "segmentation predictions must be on the masks' grid"
            )
        mask = labelled_positions(labels)
        if mask.any():
            metrics.update(classification_metrics(student_pred[mask], labels[mask]))
            if labels.ndim > 1:
                metrics["mean_iou"] = mean_iou(student_pred[mask], labels[mask])
            if teacher_pred is not None:
                metrics.update(classification_metrics(teacher_pred[mask], labels[mask], prefix="teacher_"))
                if labels.ndim > 1:
                    metrics["teacher_mean_iou"] = mean_iou(teacher_pred[mask], labels[mask])
    return metrics
