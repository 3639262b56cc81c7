"""Stage 4, ``finetune``: the distilled student finetuned on the labelled images."""

from __future__ import annotations

from ._on_labels import train_on_labels
from ._settings import TASK, TRAINING
from .base import Stage, register_stage


@register_stage
class FinetuneStage(Stage):
    """The distilled student finetuned on the labels; output ``model/``."""

    name = "finetune"
    command = "finetune"
    command_help = "Stages 1-4: ... then finetune the distilled student on the labels."
    settings_read = (*TASK, *TRAINING, "finetune_epochs", "finetune_learning_rate")

    def upstream(self, config):
        return ("distill",)

    def task_splits(self, config, eval_split):
        return ("train",)

    def run(self, context, directory):
        from ..tasks import get_task_type

        distilled = get_task_type(context.task.task_type).load_model(context.outputs("distill")["model"])
        return train_on_labels(context, distilled, directory, self.name)
