"""The ``baseline`` stage: the same student trained on the labels alone, for comparison."""

from __future__ import annotations

from ._on_labels import train_on_labels
from ._settings import STUDENT, TASK, TRAINING
from .base import Stage, register_stage


@register_stage
class BaselineStage(Stage):
    """The student trained on the labels alone (``--no_baseline`` skips it)."""

    name = "baseline"
    settings_read = (*TASK, *STUDENT, *TRAINING, "finetune_epochs", "finetune_learning_rate")

    def enabled(self, config):
        return config.student.baseline

    def models_needed(self, config):
        return [("student", config.student.student)]

    def task_splits(self, config, eval_split):
        return ("train",)

    def run(self, context, directory):
        return train_on_labels(context, context.new_student(), directory, self.name)
