"""Stage 3, ``distill``: the student learns to match the teacher on the transfer set
(:class:`~hf_task_distill.trainer.DistillationTrainer`), optionally from a teacher-output cache."""

from __future__ import annotations

import os

from ._settings import STUDENT, TRAINING
from .base import Stage, StageResult, register_stage
from .context import loading, train_resuming


@register_stage
class DistillStage(Stage):
    """The student matches the teacher on the transfer set; output ``model/`` (and ``teacher_cache/``)."""

    name = "distill"
    command = "distill"
    command_help = "Stages 1-3: teacher, transfer set, then distil it into the student."
    settings_read = (
        *STUDENT,
        *TRAINING,
        "distill_epochs",
        "distill_learning_rate",
        "temperature",
        "distill_loss",
        "teacher_cache_views",
        "teacher_cache_top_k",
    )

    def upstream(self, config):
        return ("teacher", "transfer")

    def models_needed(self, config):
        return [("student", config.student.student)]

    def skipped_images(self, outputs):
        return {"transfer set (distillation)": outputs.get("transfer_unreadable", 0)}

    def run(self, context, directory):
        from ..data import PairedViews
        from ..ledger import LedgerEntry, count_flops_per_image, describe_device
        from ..trainer import DistillationArguments, DistillationTrainer

        cfg = context.config.student
        teacher = _load_teacher(context)
        with loading("student", cfg.student):
            student = context.new_student(context.teacher_classes(teacher.config))
        transfer = context.transfer_dataset()
        checkpoints = os.path.join(directory, "checkpoints")
        args = context.training_args(
            DistillationArguments,
            checkpoints,
            num_train_epochs=cfg.distill_epochs,
            learning_rate=cfg.distill_learning_rate,
            temperature=cfg.temperature,
            distill_loss=cfg.distill_loss,
            save_strategy="epoch",
        )
        views = PairedViews.from_models(teacher, student, augmentation=context.augmentation)
        teacher_flops = count_flops_per_image(teacher, views.teacher.size)
        cache = None
        if cfg.teacher_cache_views:
            cache = _build_teacher_cache(
                context, teacher, transfer, views, os.path.join(directory, "teacher_cache")
            )
            teacher = None  # the teacher's work is done: free its memory for the student
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            teacher_cache=cache,
            args=args,
            train_dataset=transfer,
            views=views,
        )
        if cache is not None:  # no teacher model left to name it: the card names it as the ledger does
            trainer.model_card_options.update(teacher=context.teacher_name)
        model_dir, last, resumed_at = train_resuming(trainer, checkpoints, directory)
        unreadable = trainer.skipped_rows
        images = round(trainer.state.epoch * len(transfer))
        device = describe_device()
        teacher_work = f"teacher forward (cache of {cache.num_views} views)" if cache else "teacher forward"
        teacher_images = len(transfer) * cache.num_views if cache else images
        student_flops = count_flops_per_image(student, views.student.size, training=True)
        ledger = [
            LedgerEntry(self.name, teacher_work, context.teacher_name, teacher_images, teacher_flops, device),
            LedgerEntry(self.name, "student training", cfg.student, images, student_flops, device),
        ]
        outputs = {
            "model": model_dir,
            "transfer_rows": len(transfer),
            "transfer_unreadable": len(unreadable),
            "transfer_unreadable_rows": unreadable[:1000],
            "resumed_from": last,
            "resumed_at_epoch": resumed_at,
            "steps": trainer.state.global_step,
            "train_loss": trainer.state.log_history[-1].get("train_loss"),
        }
        if cache is not None:  # published with a retrieved transfer set (hub.reinforced)
            outputs["teacher_cache"] = cache.directory
        return StageResult(outputs, ledger)


def _load_teacher(context):
    """The run's teacher; a feature loss reads its image features only: any backbone serves, and its
    head (new for the task's classes if it has none) is never used. A segmentation task's teacher is
    a segmentation model (its decode head's input is the feature map a dense feature loss matches)."""
    from ..models import load_teacher

    labels = None if context.distillation_uses_teacher_predictions else context.task.label_names
    trust_remote_code = context.config.teacher.trust_remote_code
    if context.task.task_type != "image-classification":  # a segmentation teacher: its feature maps too
        from ..tasks import get_task_type

        with loading("teacher", context.teacher_path()):
            return get_task_type(context.task.task_type).load_model(
                context.teacher_path(), trust_remote_code=trust_remote_code
            )
    with loading("teacher", context.teacher_path()):
        return load_teacher(
            context.teacher_path(),
            labels,
            trust_remote_code=context.config.teacher.trust_remote_code,
            warn_new_head=False,
        )


def _build_teacher_cache(context, teacher, transfer, views, folder: str):
    """The teacher's outputs on ``--teacher_cache_views`` augmented views of each transfer image."""
    from ..devices import process_state
    from ..teacher_cache import TeacherCacheConfig, build_teacher_cache

    cfg, run = context.config.student, context.config.run
    config = TeacherCacheConfig(
        num_views=cfg.teacher_cache_views,
        top_k=cfg.teacher_cache_top_k,
        view_seed=run.seed,
        batch_size=run.batch_size,
        num_workers=run.dataloader_num_workers,
        precision="bf16" if run.bf16 else "fp16" if run.fp16 else "auto",
    )
    return build_teacher_cache(
        teacher.to(process_state().device),
        transfer,
        folder,
        config=config,
        teacher_view=views.teacher,
        augmentation=views.augmentation,
    )
