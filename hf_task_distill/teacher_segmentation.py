"""Teacher finetuning for semantic segmentation: a VFM backbone under transformers' UperNet head.

``TeacherFinetuner`` hands a segmentation task here. The teacher is
:func:`~hf_task_distill.models.segmentation.segmentation_teacher` (UperNet, Xiao et al. 2018, over
the VFM's backbone with its pretrained weights), trained with the model's own per-pixel
cross-entropy (``ignore_index`` 255) by the package's ``TaskTrainer``, under the same four
strategies as classification:

- ``linear``: the head alone on the frozen backbone (``teacher_probe_epochs`` epochs at
  ``probe_learning_rate``). UperNet's head is not a single linear layer; the backbone is frozen as a
  linear probe's is.
- ``full``: every weight (``num_train_epochs`` at ``learning_rate``, with ``teacher_layer_decay``).
- ``lp-ft``: ``linear``, then ``full`` from its head.
- ``lora``: LoRA adapters on the backbone's attention projections plus the whole head, merged at the end.

Model selection keeps the epoch with the best validation mean IoU.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

__all__ = ["finetune_segmentation_teacher", "segmentation_compute_metrics", "segmentation_selection_splits"]

logger = logging.getLogger(__name__)


def segmentation_compute_metrics(num_labels: int):
    """A ``compute_metrics`` for the Trainer: mean IoU and pixel accuracy on the validation pixels.

    Args:
        num_labels (`int`): the class count.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: takes logits ``[rows, C, h, w]`` and masks
        ``[rows, H, W]`` (255: ignored), upsamples the logits bilinearly to the masks and scores the
        arg-max with torchmetrics (see :class:`~hf_task_distill.tasks.segmentation.SemanticSegmentation`).
    """
    import torch
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    from .data.validation import IGNORE_INDEX

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = torch.as_tensor(np.asarray(logits[0] if isinstance(logits, (tuple, list)) else logits))
        masks = torch.as_tensor(np.asarray(eval_prediction.label_ids)).long()
        logits = torch.nn.functional.interpolate(
            logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False
        )
        predictions = logits.argmax(1)
        iou = MulticlassJaccardIndex(
            num_labels, average="none", ignore_index=IGNORE_INDEX, zero_division=np.nan
        )
        per_class = iou(predictions, masks)
        present = ~torch.isnan(per_class)
        accuracy = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
        return {
            "mean_iou": float(per_class[present].mean()) if bool(present.any()) else 0.0,
            "pixel_accuracy": float(accuracy(predictions, masks)),
        }

    return compute_metrics


def segmentation_selection_splits(task, validation_fraction: float, seed: int):
    """``(train, validation, where validation came from)``: the task's validation split, or a seeded
    random hold-out of ``validation_fraction`` of train (segmentation images have no single class to
    stratify by)."""
    from .data.budget import image_budget_indices

    train = task["train"]
    if "validation" in task.splits:
        return train, task["validation"], "validation split"
    held = max(1, round(len(train) * validation_fraction))
    if held >= len(train):
        raise ValueError(
            f"task '{task.name}' has no validation split and {len(train)} training image(s): too few to hold "
            "one out for model selection; add a validation split"
        )
    held_rows = set(image_budget_indices(len(train), held, seed=seed).tolist())
    keep = [i for i in range(len(train)) if i not in held_rows]
    source = f"random hold-out of {validation_fraction:.0%} of train ({held} images)"
    return train.select(keep), train.select(sorted(held_rows)), source


def finetune_segmentation_teacher(finetuner, resume: str | None):
    """Build the UperNet teacher on ``finetuner``'s VFM and train it with its strategy.

    Args:
        finetuner (`TeacherFinetuner`): the finetuner (its task, arguments and splits).
        resume (`str`, *optional*): a checkpoint to resume the backbone-training phase from.

    Returns:
        `tuple[nn.Module, dict[str, float]]`: the trained teacher (merged, for LoRA) and its best
        validation metrics (``mean_iou``, ``pixel_accuracy``, ``loss``).

    Raises:
        ValueError: LoRA on a backbone without attention projections (the message names it).
    """
    from transformers import set_seed

    from .models.segmentation import backbone_parameter_names, segmentation_teacher

    args = finetuner.args
    set_seed(args.seed)
    model = segmentation_teacher(
        finetuner.model_name_or_path,
        finetuner.task.label_names,
        trust_remote_code=finetuner.trust_remote_code,
        **finetuner.model_kwargs,
    )
    backbone = set(backbone_parameter_names(model))
    metrics: dict[str, float] = {}
    if args.teacher_strategy in ("linear", "lp-ft"):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in backbone)
        overrides = {"num_train_epochs": args.teacher_probe_epochs, "learning_rate": args.probe_learning_rate}
        # a frozen backbone is a fixed feature extractor: its normalisation statistics stay the VFM's
        # (the Trainer puts the whole model in train mode, which would move BatchNorm's running stats)
        frozen = model.backbone.register_forward_pre_hook(_keep_in_eval_mode)
        try:
            metrics = _train(
                finetuner, model, resume if args.teacher_strategy == "linear" else None, **overrides
            )
        finally:
            frozen.remove()
    if args.teacher_strategy in ("full", "lp-ft"):
        model.requires_grad_(True)
        metrics = _train(finetuner, model, resume, layer_decay=args.teacher_layer_decay)
    elif args.teacher_strategy == "lora":
        model, metrics = _train_lora(finetuner, model, resume)
    return model.eval(), metrics


def _keep_in_eval_mode(module, inputs) -> None:
    module.eval()  # returns None: a forward pre-hook's return value would replace the inputs


def _train(finetuner, model, resume, *, layer_decay: float = 1.0, **overrides) -> dict[str, float]:
    from dataclasses import replace

    from .teacher_finetuning import _LayerDecayTrainer, _strip_eval_prefix

    args = finetuner.args
    if args.metric_for_best_model in (None, "balanced_accuracy", "accuracy", "macro_f1"):  # classification's
        overrides["metric_for_best_model"] = "mean_iou"
    args = replace(args, **overrides)
    spec = finetuner.spec
    trainer = finetuner.trainer = _LayerDecayTrainer(
        model=model,
        args=args,
        train_dataset=finetuner._dataset(finetuner.train_split, spec, train=True),
        eval_dataset=finetuner._dataset(finetuner.validation_split, spec, train=False),
        compute_metrics=segmentation_compute_metrics(finetuner.task.num_labels),
        layer_decay=layer_decay,
    )
    trainer.train(resume_from_checkpoint=resume)
    return _strip_eval_prefix(trainer.evaluate())


def _train_lora(finetuner, model, resume):
    from peft import LoraConfig, get_peft_model

    from .models.segmentation import head_parameter_names
    from .teacher_finetuning import lora_target_modules

    args = finetuner.args
    heads = sorted({name.split(".")[0] for name in head_parameter_names(model)})
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules or lora_target_modules(model)),
        modules_to_save=heads,
    )
    peft_model = get_peft_model(model, config)
    metrics = _train(finetuner, peft_model, resume)
    finetuner.peft_model = peft_model
    return copy.deepcopy(peft_model).merge_and_unload(), metrics
