"""``TeacherFinetuner``: stage 1, adapting a vision foundation model to the task with few labels.

Four strategies, chosen by ``TeacherFinetuningArguments.teacher_strategy``:

- ``linear``: a linear probe (``hf_task_distill.linear_probe``). The frozen backbone embeds the
  labelled set once (optionally several augmented views per image) and only the head trains, on the
  cached features: E epochs cost one backbone pass, not E.
- ``full``: full finetuning through ``transformers.Trainer`` with layer-wise learning-rate decay.
- ``lp-ft``: the linear probe, then full finetuning from that head (Kumar et al., 2022).
- ``lora``: peft LoRA on the attention projections found in the model itself, head trained fully;
  the adapters are merged into the weights afterwards, so the teacher costs nothing extra to run.

The result is a standard transformers image classifier (labels set, image processor saved beside
it, model card) that ``load_teacher``/``AutoModelForImageClassification`` and ``DistillationTrainer``
load directly.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments, set_seed

from .checkpoints import last_complete_checkpoint
from .checks import check_choice, check_int, check_number
from .data.budget import stratified_holdout_indices
from .data.loading import TargetTask, load_target_task
from .data.validation import UNLABELLED, check_classes_trained, check_images_decode, label_array
from .data.views import ViewAugmentation, ViewSpec, single_view_dataset
from .devices import cpu_ranks_need_use_cpu
from .files import write_json_atomically
from .linear_probe import embed_head_inputs, train_linear_head
from .metrics import make_compute_metrics
from .models.heads import find_classification_head
from .models.teacher import load_teacher
from .options import renamed_field, resolve_renamed
from .tasks import get_task_type
from .trainer import TaskTrainer, check_training_arguments

__all__ = [
    "STRATEGIES",
    "FinetuningResult",
    "TeacherFinetuner",
    "TeacherFinetuningArguments",
    "find_classification_head",
    "layer_decay_parameter_groups",
    "lora_target_modules",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("linear", "full", "lp-ft", "lora")


@dataclass
class TeacherFinetuningArguments(TrainingArguments):
    """``TrainingArguments`` for the stages that train through the backbone, plus the strategy's own knobs.

    Defaults select the best epoch on the validation split by balanced accuracy.
    """

    teacher_strategy: str = field(
        default="lp-ft",
        metadata={
            "help": f"One of {', '.join(STRATEGIES)} (lp-ft: a linear probe, then full; not from the paper)."
        },
    )
    teacher_layer_decay: float = field(
        default=0.75,
        metadata={
            "help": "Layer-wise lr decay for full/lp-ft: layer i of L gets lr * decay^(L+1-i); 1 disables it."
        },
    )
    teacher_probe_epochs: int = field(
        default=100, metadata={"help": "Epochs of head training on cached features."}
    )
    probe_learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate of the linear probe."}
    )
    probe_weight_decay: float = field(
        default=1e-4, metadata={"help": "AdamW weight decay of the linear probe."}
    )
    probe_batch_size: int = field(
        default=256, metadata={"help": "Batch size of head training on cached features."}
    )
    probe_views: int = field(
        default=1,
        metadata={
            "help": "Views embedded per labelled image for the probe: 1 = the evaluation view; "
            "K > 1 = K random augmented views (embedded once, reused every epoch)."
        },
    )
    crop_min_scale: float = field(
        default=0.25,
        metadata={"help": "Smallest random-resized-crop area (fraction of the image) when training."},
    )
    hflip_probability: float = field(
        default=0.5, metadata={"help": "Probability of a horizontal flip when training."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names for LoRA; default: every linear layer inside the model's attention blocks."
        },
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of each class held out for model selection when the task has no validation split."
        },
    )
    extra_metrics: list[str] = field(
        default_factory=list,
        metadata={"help": "Names of `evaluate` metrics to report in addition (need the Hub once)."},
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate (model selection)."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint (model selection)."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept besides the best."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best validation epoch."})
    metric_for_best_model: str | None = field(
        default="balanced_accuracy", metadata={"help": "Selection metric."}
    )
    greater_is_better: bool | None = field(
        default=True, metadata={"help": "Whether a larger metric is better."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: views come from raw images."}
    )
    strategy: str | None = renamed_field()
    layer_decay: float | None = renamed_field()
    probe_epochs: int | None = renamed_field()

    #: Old names of options, accepted with a FutureWarning until 0.2.0 (docs/pipeline.md): the names
    #: of the command line's flags (``--teacher_strategy`` ...) are the canonical ones.
    _renamed = {
        "strategy": "teacher_strategy",
        "layer_decay": "teacher_layer_decay",
        "probe_epochs": "teacher_probe_epochs",
    }

    def __post_init__(self):
        named = resolve_renamed(self)  # errors name the spelling the caller used
        check_choice(self.teacher_strategy, named.get("teacher_strategy", "teacher_strategy"), STRATEGIES)
        self.teacher_layer_decay = check_number(
            self.teacher_layer_decay,
            named.get("teacher_layer_decay", "teacher_layer_decay"),
            above=0,
            maximum=1,
        )
        self.teacher_probe_epochs = check_int(
            self.teacher_probe_epochs, named.get("teacher_probe_epochs", "teacher_probe_epochs"), minimum=1
        )
        self.probe_learning_rate = check_number(self.probe_learning_rate, "probe_learning_rate", above=0)
        self.probe_weight_decay = check_number(self.probe_weight_decay, "probe_weight_decay", minimum=0)
        self.probe_batch_size = check_int(self.probe_batch_size, "probe_batch_size", minimum=1)
        self.probe_views = check_int(self.probe_views, "probe_views", minimum=1)
        self.crop_min_scale = check_number(self.crop_min_scale, "crop_min_scale", above=0, maximum=1)
        self.hflip_probability = check_number(
            self.hflip_probability, "hflip_probability", minimum=0, maximum=1
        )
        self.lora_r = check_int(self.lora_r, "lora_r", minimum=1)
        self.lora_alpha = check_number(self.lora_alpha, "lora_alpha", above=0)
        self.lora_dropout = check_number(self.lora_dropout, "lora_dropout", minimum=0, below=1)
        self.validation_fraction = check_number(
            self.validation_fraction, "validation_fraction", above=0, below=1
        )
        check_training_arguments(self)
        if cpu_ranks_need_use_cpu(self.use_cpu):
            self.use_cpu = True
        super().__post_init__()


@dataclass
class FinetuningResult:
    """What ``TeacherFinetuner.train`` produced: the merged classifier and its validation metrics."""

    model: Any
    strategy: str
    metrics: dict[str, float]
    validation_source: str
    probe_history: list[dict[str, float]] = field(default_factory=list)


# ---- pieces that depend only on the model ------------------------------------------------------


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of the linear layers inside the model's attention blocks (q/k/v/output projections).

    Found from the model itself: a module whose class name says "Attention" is an attention block
    (Dinov2Attention, CLIPAttention, SiglipAttention, ViTAttention...); its linear descendants are the
    projections, whatever they are called. ``nn.MultiheadAttention`` (e.g. SigLIP's pooling head) is
    skipped because it does not call its ``out_proj`` module, so an adapter there would do nothing.
    """
    targets: list[str] = []
    seen_blocks: list[str] = []
    for name, module in model.named_modules():
        if "attention" not in type(module).__name__.lower():
            continue
        if any(name.startswith(block + ".") for block in seen_blocks):
            continue  # nested inside a block already collected
        seen_blocks.append(name)
        if isinstance(module, nn.MultiheadAttention):
            continue
        for child_name, child in module.named_modules():
            if isinstance(child, nn.Linear) and child_name:
                targets.append(f"{name}.{child_name}")
    if not targets:
        raise ValueError(
            f"found no attention projections in {type(model).__name__}: LoRA adapts attention layers, and "
            "this model has none (a CNN?). Finetune it with teacher_strategy 'full' or 'lp-ft' instead, or name the "
            "layers to adapt (TeacherFinetuningArguments(lora_target_modules=[...]))"
        )
    return targets


_LAYER_INDEX = re.compile(r"\.(?:layers?|blocks?|stages?)\.(\d+)\.")
_EMBEDDING = re.compile(r"(embed|cls_token|class_embedding|mask_token|pos_embed|patch_embed)")


def layer_decay_parameter_groups(
    model: nn.Module, *, learning_rate: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise learning-rate decay (as in BEiT/MAE/DINOv2 finetuning).

    Embeddings are layer 0, transformer block i is layer i + 1, everything after the last block
    (final norm, pooler, head) is layer L + 1 and keeps the full learning rate; layer i gets
    ``learning_rate * layer_decay ** (L + 1 - i)``. Biases, norms and embeddings get no weight decay.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    indices = [int(m.group(1)) for n, _ in named if (m := _LAYER_INDEX.search("." + n))]
    num_layers = max(indices) + 1 if indices else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        match = _LAYER_INDEX.search("." + name)
        if match:
            layer = int(match.group(1)) + 1
        elif _EMBEDDING.search(name) and "classifier" not in name:
            layer = 0
        else:
            layer = num_layers + 1
        no_decay = param.ndim <= 1 or _EMBEDDING.search(name) is not None
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": learning_rate * layer_decay ** (num_layers + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "layer": layer,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


class _LayerDecayTrainer(TaskTrainer):
    """A plain classification Trainer whose optimizer uses layer-wise learning-rate decay."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        self._layer_decay = layer_decay
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self._layer_decay < 1.0:
            groups = layer_decay_parameter_groups(
                model or self.model,
                learning_rate=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                layer_decay=self._layer_decay,
            )
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
                self.args, model or self.model
            )
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer
        return super().create_optimizer(model)


def _model_selection_splits(task: TargetTask, validation_fraction: float, seed: int):
    """``(train, validation, where validation came from)``: the task's validation split, or a stratified
    hold-out of ``validation_fraction`` of each class of train (seeded by ``seed``)."""
    num_labels = task.num_labels
    if num_labels < 2:
        raise ValueError(f"task '{task.name}' has {num_labels} class: a classifier needs at least two")
    train = task["train"]
    if "validation" in task.splits:
        validation, source = task["validation"], "validation split"
    else:
        train_idx, held_idx = stratified_holdout_indices(
            label_array(train, task.label_column), validation_fraction, seed=seed
        )
        if held_idx.size == 0:
            raise ValueError(
                f"task '{task.name}' has no validation split and too few labelled images to hold one out "
                "(every class has a single image): add a validation split"
            )
        validation = train.select(held_idx.tolist())
        train = train.select(train_idx.tolist())
        source = f"stratified hold-out of {validation_fraction:.0%} of train ({held_idx.size} images)"
        logger.info("No validation split in task '%s': model selection on a %s", task.name, source)
    train_labels = label_array(train, task.label_column)
    present = set(np.unique(train_labels[train_labels != UNLABELLED]).tolist())
    check_classes_trained(present, task.label_names, task.name)
    if len(present) < 2:
        raise ValueError(f"task '{task.name}': the labelled training images cover a single class")
    val_labels = label_array(validation, task.label_column)
    unseen = sorted(set(val_labels[val_labels != UNLABELLED].tolist()) - present)
    if unseen:
        raise ValueError(
            f"task '{task.name}': the validation split has label(s) never seen in training: "
            f"{[task.label_names[i] for i in unseen][:10]}"
        )
    return train, validation, source


# ---- the finetuner ------------------------------------------------------------------------------


class TeacherFinetuner:
    """Finetune ``model_name_or_path`` (a VFM, e.g. ``facebook/dinov2-large``) on a labelled task.

    ``task`` is anything ``load_target_task`` accepts (a ``TargetTask``, registry name, Dataset...).
    Model selection uses the task's ``validation`` split; without one, a stratified
    ``validation_fraction`` of each class (at least one image, never a class's only image) is held out
    from train and the result says so.
    """

    def __init__(
        self,
        model_name_or_path: str,
        task: Any,
        args: TeacherFinetuningArguments | None = None,
        *,
        processor: Any = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ):
        from .sources import check_model_source

        self.model_name_or_path = os.fspath(model_name_or_path)
        check_model_source(self.model_name_or_path, "model_name_or_path")
        self.task: TargetTask = load_target_task(task)
        self.args = args or TeacherFinetuningArguments(output_dir="teacher")
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = dict(model_kwargs or {})
        select = _model_selection_splits
        if self.task.task_type == "image-segmentation":
            from .teacher_segmentation import segmentation_selection_splits as select
        self.train_split, self.validation_split, self.validation_source = select(
            self.task, self.args.validation_fraction, self.args.seed
        )
        self._processor = processor
        self.result: FinetuningResult | None = None
        self.trainer: Trainer | None = None  # the Trainer of the last backbone-training stage

    # -- data --
    @property
    def processor(self):
        """The teacher's image processor (given, or loaded with the model on first use)."""
        if self._processor is None and self.task.task_type == "image-segmentation":
            from .models.segmentation import segmentation_teacher_processor

            self._processor = segmentation_teacher_processor(
                self.model_name_or_path, trust_remote_code=self.trust_remote_code
            )
        if self._processor is None:
            from transformers import AutoImageProcessor

            from .sources import resolve_model_source

            self._processor = AutoImageProcessor.from_pretrained(
                resolve_model_source(self.model_name_or_path), trust_remote_code=self.trust_remote_code
            )
        return self._processor

    @property
    def spec(self) -> ViewSpec:
        """The backbone's own view spec, from its image processor."""
        return ViewSpec.from_image_processor(self.processor)

    @property
    def augmentation(self) -> ViewAugmentation:
        """The random crop and flip of training views (``args.crop_min_scale``, ``args.hflip_probability``)."""
        return ViewAugmentation(scale=(self.args.crop_min_scale, 1.0), hflip=self.args.hflip_probability)

    def _dataset(self, dataset, spec: ViewSpec, *, train: bool):
        return single_view_dataset(
            dataset,
            spec,
            train=train,
            augmentation=self.augmentation,
            image_column=self.task.image_column,
            label_column=self.task.label_column,
            num_labels=self.task.num_labels,
            label_names=self.task.label_names,  # the head's classes, in its output order
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            task_type=get_task_type(self.task.task_type),
        )

    # -- training --
    def train(self, resume_from_checkpoint: str | os.PathLike | bool | None = None) -> FinetuningResult:
        """Finetune with ``args.teacher_strategy``; returns the model and its validation metrics.

        ``resume_from_checkpoint``: a checkpoint folder, or ``True`` for the newest complete one in
        ``args.output_dir`` (none yet: start fresh). A killed run resumes with its optimizer,
        scheduler and data position, and ends with the weights an uninterrupted run would have.
        The linear probe has no checkpoints; it is recomputed (it is seconds of work).
        """
        args = self.args
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(args.output_dir)
        resume = os.fspath(resume_from_checkpoint) if resume_from_checkpoint else None
        # labelled images are few: a bad file among them is an error naming its row, before any step
        for name, split in (("training", self.train_split), ("validation", self.validation_split)):
            check_images_decode(split, self.task.image_column, where=f"{self.task.name} {name} split")
        if self.task.task_type == "image-segmentation":
            from .teacher_segmentation import finetune_segmentation_teacher

            model, metrics = finetune_segmentation_teacher(self, resume)
            self.result = FinetuningResult(model, args.teacher_strategy, metrics, self.validation_source, [])
            return self.result
        set_seed(
            args.seed
        )  # the new head's initialisation: a rerun, or a run killed before its first checkpoint, gets the same teacher
        model = load_teacher(
            self.model_name_or_path,
            labels=self.task.label_names,
            trust_remote_code=self.trust_remote_code,
            warn_new_head=False,  # it is trained below
            **self.model_kwargs,
        )
        spec = self.spec
        history: list[dict[str, float]] = []
        if args.teacher_strategy in ("linear", "lp-ft"):
            history = self.linear_probe(model, spec)
        metrics = history[-1]["best"] if history else {}
        if args.teacher_strategy in ("full", "lp-ft"):
            metrics = self._train_through_backbone(model, spec, resume)
        elif args.teacher_strategy == "lora":
            model, metrics = self._train_lora(model, spec, resume)
        model.eval()
        self.result = FinetuningResult(model, args.teacher_strategy, metrics, self.validation_source, history)
        return self.result

    def _trainer(self, model, spec: ViewSpec, **kwargs) -> Trainer:
        args = self.args
        return _LayerDecayTrainer(
            model=model,
            args=args,
            train_dataset=self._dataset(self.train_split, spec, train=True),
            eval_dataset=self._dataset(self.validation_split, spec, train=False),
            compute_metrics=make_compute_metrics(args.extra_metrics),
            **kwargs,
        )

    def _train_through_backbone(self, model, spec: ViewSpec, resume: str | None) -> dict[str, float]:
        model.requires_grad_(True)
        trainer = self.trainer = self._trainer(model, spec, layer_decay=self.args.teacher_layer_decay)
        trainer.train(resume_from_checkpoint=resume)
        return _strip_eval_prefix(trainer.evaluate())

    def _train_lora(self, model, spec: ViewSpec, resume: str | None):
        from peft import LoraConfig, get_peft_model

        args = self.args
        head_name, _ = find_classification_head(model)
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=list(args.lora_target_modules or lora_target_modules(model)),
            modules_to_save=[head_name],
        )
        peft_model = get_peft_model(model, config)
        trainer = self.trainer = self._trainer(peft_model, spec)
        trainer.train(resume_from_checkpoint=resume)
        metrics = _strip_eval_prefix(trainer.evaluate())
        self.peft_model = peft_model
        merged = copy.deepcopy(peft_model).merge_and_unload()
        return merged, metrics

    def embed(self, model, dataset, spec: ViewSpec, *, views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Head inputs for every image (``views`` random augmented views each if > 1), computed once:
        :func:`~hf_task_distill.linear_probe.embed_head_inputs` with ``args``' device and batch size."""
        return embed_head_inputs(
            model,
            self._dataset(dataset, spec, train=views > 1),
            views=views,
            batch_size=self.args.per_device_eval_batch_size,
            device=self.args.device,
            num_workers=self.args.dataloader_num_workers,
        )

    def linear_probe(self, model, spec: ViewSpec) -> list[dict[str, Any]]:
        """Train ``model``'s head on cached frozen features; keep the epoch best on validation."""
        args = self.args
        x_train, y_train = self.embed(model, self.train_split, spec, views=args.probe_views)
        x_val, y_val = self.embed(model, self.validation_split, spec)
        _, head = find_classification_head(model)
        best_state, history = self.train_head(head, x_train, y_train, x_val, y_val)
        head.load_state_dict(best_state)
        return history

    def train_head(self, head: nn.Linear, x_train, y_train, x_val, y_val):
        """AdamW with a cosine schedule on features; returns the best head state and per-epoch metrics
        (:func:`~hf_task_distill.linear_probe.train_linear_head` with ``args``' probe settings)."""
        args = self.args
        return train_linear_head(
            head,
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=args.teacher_probe_epochs,
            learning_rate=args.probe_learning_rate,
            weight_decay=args.probe_weight_decay,
            batch_size=args.probe_batch_size,
            seed=args.seed,
            metric=args.metric_for_best_model or "balanced_accuracy",
            extra_metrics=args.extra_metrics,
        )

    # -- output --
    def save(self, output_dir: str | os.PathLike | None = None) -> str:
        """Save the finetuned teacher, its image processor, a model card (README.md) and
        ``finetuning_results.json`` (strategy, validation metrics, label budget) to ``output_dir``."""
        if self.result is None:
            raise RuntimeError("call train() before save()")
        from .hub.cards import TeacherCardData, write_teacher_card
        from .hub.names import public_name

        output_dir = os.fspath(output_dir or self.args.output_dir)
        self.result.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        card = TeacherCardData.from_finetuner(self)
        write_teacher_card(card, output_dir)
        summary = {
            "base_model": public_name(self.model_name_or_path),  # users publish this folder: no local path
            "strategy": self.result.strategy,
            "validation_source": self.result.validation_source,
            "label_budget": self.task.label_budget,
            "metrics": self.result.metrics,
        }
        write_json_atomically(os.path.join(output_dir, "finetuning_results.json"), summary)
        return output_dir

    def compute_ledger(self, result: FinetuningResult | None = None, *, stage: str = "teacher") -> list:
        """The compute of the last :meth:`train`, as :class:`~hf_task_distill.ledger.LedgerEntry` s.

        Backbone training (full, LP-FT, LoRA) is counted as training images (epochs x training split,
        FLOPs of a forward and backward pass); the linear probe's cached features (every training
        view once) and every validation pass as forward images.

        Raises:
            RuntimeError: :meth:`train` has not run.
        """
        from .ledger import LedgerEntry, count_flops_per_image, describe_device

        result = result or self.result
        if result is None:
            raise RuntimeError("call train() before compute_ledger()")
        model, size, device = result.model, self.spec.size, describe_device()
        probing = self.args.teacher_strategy in ("linear", "lp-ft")
        forward_images = (
            len(self.train_split) * self.args.probe_views + len(self.validation_split) if probing else 0
        )
        entries = []
        if self.trainer is not None:
            epochs = self.trainer.state.epoch
            trained = round(epochs * len(self.train_split))
            flops = count_flops_per_image(model, size, training=True)
            entries.append(
                LedgerEntry(stage, "teacher training", self.model_name_or_path, trained, flops, device)
            )
            forward_images += round(epochs) * len(self.validation_split)
        work = "teacher forward (probe features, validation)" if probing else "teacher forward (validation)"
        forward = count_flops_per_image(model, size)
        entries.append(LedgerEntry(stage, work, self.model_name_or_path, forward_images, forward, device))
        return entries


def _strip_eval_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {
        k.removeprefix("eval_"): v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))
    }
