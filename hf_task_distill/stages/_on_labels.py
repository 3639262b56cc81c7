"""Training a student on the labelled images: the ``baseline`` and ``finetune`` stages' one path."""

from __future__ import annotations

import os

from .context import train_resuming


def train_on_labels(context, model, directory: str, stage: str):
    """Finetune ``model`` on the task's (budgeted) training split with its own cross-entropy loss.

    One random view per image and epoch (the run's crop and flip), every image decoded up front so
    that a bad file is an error naming its row before training; checkpoints every epoch, resumed
    after an interruption.

    Returns:
        A :class:`~hf_task_distill.stages.StageResult`: the model folder, where training resumed,
        the optimizer steps, and the student-training ledger entry.
    """
    from transformers import TrainingArguments

    from ..data import ViewSpec, single_view_dataset
    from ..ledger import LedgerEntry, count_flops_per_image, describe_device
    from ..models.labels import label_names_of
    from ..tasks import task_type_of
    from ..trainer import TaskTrainer
    from .base import StageResult

    cfg, task = context.config.student, context.task
    spec = ViewSpec.from_model(model)
    train = single_view_dataset(
        task["train"],
        spec,
        train=True,
        augmentation=context.augmentation,
        image_column=task.image_column,
        label_column=task.label_column,
        num_labels=model.config.num_labels,
        label_names=label_names_of(model.config),
        where=f"{task.name} training split",
        check_images=True,
        seed=context.config.run.seed,
        task_type=task_type_of(model),
    )
    checkpoints = os.path.join(directory, "checkpoints")
    args = context.training_args(
        TrainingArguments,
        checkpoints,
        num_train_epochs=cfg.finetune_epochs,
        learning_rate=cfg.finetune_learning_rate,
        save_strategy="epoch",
        remove_unused_columns=False,
    )
    trainer = TaskTrainer(model=model, args=args, train_dataset=train)
    model_dir, last, resumed_at = train_resuming(trainer, checkpoints, directory)
    images = round(trainer.state.epoch * len(train))
    flops = count_flops_per_image(model, spec.size, training=True)
    entry = LedgerEntry(stage, "student training", cfg.student, images, flops, describe_device())
    outputs = {
        "model": model_dir,
        "resumed_from": last,
        "resumed_at_epoch": resumed_at,
        "steps": trainer.state.global_step,
    }
    return StageResult(outputs, [entry])
