"""Stage 1, ``teacher``: finetune the vision foundation model with a task head on the labelled images
(:class:`~hf_task_distill.teacher_finetuning.TeacherFinetuner`), or check a teacher used as it is."""

from __future__ import annotations

import os

from ._settings import TASK, TRAINING
from .base import Stage, StageResult, register_stage
from .context import loading, resume_point


@register_stage
class TeacherStage(Stage):
    """The VFM finetuned on the labels (or a teacher used as it is); output ``model/`` with its card."""

    name = "teacher"
    command = "finetune-teacher"
    command_help = "Stage 1: finetune the VFM with a task head on the labelled images."
    settings_read = (
        *TASK,
        *TRAINING,
        "teacher",
        "teacher_strategy",
        "teacher_epochs",
        "teacher_learning_rate",
        "teacher_probe_epochs",
        "teacher_layer_decay",
    )

    def settings(self, config):
        if config.teacher.teacher_strategy == "none":  # used as it is: nothing is trained
            return {"teacher": config.teacher.teacher, "teacher_strategy": "none"}
        return super().settings(config)

    def task_splits(self, config, eval_split):
        return ("train", "validation")  # validation: model selection

    def run(self, context, directory):
        cfg = context.config.teacher
        if cfg.teacher_strategy == "none":
            return self._as_given(context)
        from ..teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments

        args = context.training_args(
            TeacherFinetuningArguments,
            os.path.join(directory, "checkpoints"),
            teacher_strategy=cfg.teacher_strategy,
            num_train_epochs=cfg.teacher_epochs,
            learning_rate=cfg.teacher_learning_rate,
            teacher_probe_epochs=cfg.teacher_probe_epochs,
            teacher_layer_decay=cfg.teacher_layer_decay,
            crop_min_scale=context.config.run.crop_min_scale,
            hflip_probability=context.config.run.hflip_probability,
        )
        finetuner = TeacherFinetuner(cfg.teacher, context.task, args, trust_remote_code=cfg.trust_remote_code)
        with loading("teacher", cfg.teacher):
            finetuner.processor  # noqa: B018 - fails early, with the name, if the model cannot be found
        last, resumed_at = resume_point(args.output_dir)
        result = finetuner.train(resume_from_checkpoint=last)
        model_dir = os.path.join(directory, "model")
        if context.state.is_main_process:
            finetuner.save(model_dir)
        outputs = {
            "model": model_dir,
            "strategy": result.strategy,
            "metrics": result.metrics,
            "validation_source": result.validation_source,
            "resumed_from": last,
            "resumed_at_epoch": resumed_at,
        }
        return StageResult(outputs, finetuner.compute_ledger(result, stage=self.name))

    def _as_given(self, context) -> StageResult:
        """A teacher used as it is: its classes must be the task's (when its predictions are used)."""
        from transformers import AutoConfig

        from ..sources import resolve_model_source

        cfg = context.config.teacher
        with loading("teacher", cfg.teacher):
            config = AutoConfig.from_pretrained(
                resolve_model_source(cfg.teacher), trust_remote_code=cfg.trust_remote_code
            )
        if context.task.task_type != "image-classification":
            _check_teacher_task_type(config, context)
        if context.distillation_uses_teacher_predictions:
            context.teacher_classes(config)
        return StageResult({"source": cfg.teacher, "strategy": "none"})


def _check_teacher_task_type(config, context) -> None:
    """A teacher used as it is for a task of another type than classification must be a model of that
    type (an image classifier cannot teach a segmentation student, nor lend it feature maps).

    Raises:
        ValueError: naming the teacher, its architecture and the task's type.
    """
    from ..tasks import get_task_type
    from ..tasks.base import _auto_class_names

    task_type = get_task_type(context.task.task_type)
    architectures = list(getattr(config, "architectures", None) or [])
    if set(architectures) & _auto_class_names(task_type.model_class()):
        return
    raise ValueError(
        f"--teacher_strategy none: the teacher '{context.config.teacher.teacher}' is a "
        f"{', '.join(architectures) or config.model_type} model, not one for {task_type.name}, and the task "
        f"'{context.task.name}' is {task_type.name}: give a teacher for {task_type.name}, or finetune one on the "
        "task (--teacher_strategy linear, full, lp-ft or lora)"
    )
