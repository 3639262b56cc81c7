"""Image classification: one label per image; accuracy, balanced accuracy and macro-F1."""

from __future__ import annotations

from .base import TaskType, _register_builtin


class ImageClassification(TaskType):
    """One label per image: ``AutoModelForImageClassification`` models, scored on the labelled rows."""

    name = "image-classification"
    metric_names = ("accuracy", "balanced_accuracy", "macro_f1")
    metric_titles = ("accuracy", "balanced accuracy", "macro F1")
    details_file = ("confusion_matrices", "matrices")

    def model_class(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def render_target(self, value, view, label_map, *, size=None):
        """The label as the model's class id (views do not change a whole-image label)."""
        from ..data.views import class_target

        return class_target(value, view, label_map)

    def check_targets(self, dataset, column, *, num_labels, label_names, image_column, where):
        """Label ids in range, and a ``ClassLabel`` column in another class order mapped to the
        model's by name (:func:`~hf_task_distill.models.labels.label_id_map`)."""
        from ..data.validation import check_label_ids, class_label_names, label_array
        from ..models.labels import label_id_map

        label_map = None
        data_names = class_label_names(dataset, column)
        if label_names is not None or num_labels is not None:
            label_map = label_id_map(data_names, label_names, num_labels=num_labels, where=where)
        known = len(data_names) if data_names is not None and label_map is not None else num_labels
        if known is not None:
            check_label_ids(label_array(dataset, column), known, column, where=where)
        return label_map

    def evaluate(self, model, dataset, *, task, batch_size: int, where: str):
        """Metrics on the labelled rows (scikit-learn's), and the confusion matrix ``[C, C]`` (rows: true
        class, columns: predicted) in the task's class order, or ``None`` when the model's classes are
        not the task's."""
        import numpy as np

        from ..evaluation import confusion_matrix, predict
        from ..metrics import classification_metrics
        from ..models.labels import label_names_of

        predictions, labels = predict(
            model, dataset, task=task, batch_size=batch_size, where=where, progress=True
        )
        labelled = labels != -100
        metrics = classification_metrics(predictions[labelled], labels[labelled])
        names = list(task.label_names)
        order = label_names_of(model.config) or names
        if sorted(order) != sorted(names):
            return metrics, None
        matrix = confusion_matrix(predictions, labels, len(order))
        index = [order.index(n) for n in names]
        return metrics, matrix[np.ix_(index, index)].tolist()


_register_builtin(ImageClassification)
