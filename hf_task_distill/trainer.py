"""``DistillationTrainer``: a thin ``transformers.Trainer`` that trains a student to match a frozen teacher.

Everything else (loops, optimisers, schedulers, checkpoints, logging, devices, mixed precision,
multi-GPU) is the Trainer's and accelerate's. This class adds four things: it runs the teacher on the
teacher's view of each batch, combines terms from :mod:`hf_task_distill.losses`, normalises the loss
over the whole gradient-accumulation window (and all processes), and reports accuracy and
teacher-student agreement.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checks import SEED_MAX, check_int, check_number
from .data.images import ImageDecodeError
from .data.validation import IGNORE_INDEX, UNLABELLED, labelled_positions
from .data.views import UNREADABLE_ROW, PairedViews, RandomViewDataset, ViewSpec
from .devices import cpu_ranks_need_use_cpu, has_accelerator
from .distillation_data import cached_dataset, prepare_dataset
from .hub.trainer_card import ModelCardMixin
from .losses import (
    DistillationLoss,
    LabelCrossEntropy,
    LossInputs,
    available_losses,
    build_loss,
    is_dense,
    resize_to_grid,
)
from .metrics import distillation_metrics
from .models.heads import capture_head_inputs, find_classification_head
from .models.labels import label_names_of
from .models.teacher import load_teacher
from .options import distill_loss_field, renamed_field, resolve_renamed
from .tasks import task_type_of
from .teacher_cache import CachedTeacherDataset

logger = logging.getLogger(__name__)

__all__ = [
    "DistillationArguments",
    "DistillationTrainer",
    "EpochSeededViewsMixin",
    "TaskTrainer",
    "NativeCheckpointsMixin",
    "NoSingleRowBatchMixin",
    "check_training_arguments",
]


@dataclass
class DistillationArguments(TrainingArguments):
    """``TrainingArguments`` plus the distillation objective."""

    distill_loss: str = distill_loss_field()
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T of the KL term (scaled by T^2)."}
    )
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the KL-to-teacher term."})
    ce_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of cross-entropy on labelled rows (label -100 = unlabelled). The paper's "
            "transfer stage uses the teacher only (0); labels are used in the later finetuning stage."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Kept False: views are rendered on the fly from the raw image column, which the "
            "model's forward does not name."
        },
    )
    loss_name: str | None = renamed_field()

    #: Old names of options, accepted with a FutureWarning until 0.2.0 (docs/pipeline.md).
    _renamed = {"loss_name": "distill_loss"}

    def __post_init__(self):
        loss = resolve_renamed(self).get("distill_loss", "distill_loss")  # the name the caller used
        if self.distill_loss not in available_losses():
            raise ValueError(
                f"unknown {loss} '{self.distill_loss}'; registered: {', '.join(available_losses())}"
            )
        self.temperature = check_number(self.temperature, "temperature", above=0)
        self.kd_weight = check_number(self.kd_weight, "kd_weight", minimum=0)
        self.ce_weight = check_number(self.ce_weight, "ce_weight", minimum=0)
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError(
                f"kd_weight and ce_weight are both 0: the '{self.distill_loss}' loss would train nothing"
            )
        # a loss's own rules on its parameters (e.g. function_matching takes no label term), now
        build_loss(
            self.distill_loss,
            temperature=self.temperature,
            kd_weight=self.kd_weight,
            ce_weight=self.ce_weight,
        )
        check_training_arguments(self)
        if cpu_ranks_need_use_cpu(self.use_cpu):
            self.use_cpu = True
        super().__post_init__()


def check_training_arguments(args: TrainingArguments) -> None:
    """What every ``TrainingArguments`` subclass of the package needs, checked at construction.

    ``remove_unused_columns=True`` (the Trainer's default, often carried over from other scripts)
    drops the image column, which the model's ``forward`` does not name but from which every view is
    rendered: training would run and evaluation then fail on rows without images. It is turned off,
    with a warning saying why. ``dataloader_pin_memory`` is turned off without an accelerator: pinned
    memory only speeds copies to one, and torch warns at every data loader. The Trainer's numbers
    (epochs, steps, rates, batch sizes, ``seed`` in [0, 2**32 - 1], workers) are type- and
    range-checked: the Trainer itself would take them and fail later, inside numpy or torch.
    """
    # the Trainer's own numbers, as a script or a config file may hand them over (strings, zeros)
    args.num_train_epochs = check_number(args.num_train_epochs, "num_train_epochs", minimum=0)
    args.max_steps = check_int(args.max_steps, "max_steps", minimum=-1)
    if args.num_train_epochs == 0 and args.max_steps <= 0:
        raise ValueError("num_train_epochs is 0 and max_steps is not set: there is nothing to train")
    args.learning_rate = check_number(args.learning_rate, "learning_rate", minimum=0)
    args.weight_decay = check_number(args.weight_decay, "weight_decay", minimum=0)
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        setattr(args, name, check_int(getattr(args, name), name, minimum=1))
    args.seed = check_int(args.seed, "seed", minimum=0, maximum=SEED_MAX)
    args.data_seed = check_int(args.data_seed, "data_seed", minimum=0, maximum=SEED_MAX, optional=True)
    args.dataloader_num_workers = check_int(args.dataloader_num_workers, "dataloader_num_workers", minimum=0)
    # steps: a whole number, or (the Trainer's convention) a fraction of the run below 1
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, name)
        if value is not None:
            setattr(args, name, check_number(value, name, above=0))
    if args.dataloader_pin_memory and not has_accelerator():
        args.dataloader_pin_memory = False  # nothing to pin for; torch would warn at every data loader
    if args.remove_unused_columns:
        logger.warning(
            "%s: remove_unused_columns=True is turned off: views are rendered from the raw image column, "
            "which the model's forward does not name, so the Trainer would drop it",
            type(args).__name__,
        )
        args.remove_unused_columns = False


@dataclass
class _AccumulationWindow:
    """Rows in one optimizer step (all micro-batches, all processes): the loss denominators."""

    all: torch.Tensor
    labelled: torch.Tensor

    def as_counts(self) -> dict[str, torch.Tensor]:
        return {"all": self.all, "labelled": self.labelled}


class _SetEpoch(TrainerCallback):
    """Tell a training dataset which epoch starts, so that it draws (or replays) that epoch's views.

    accelerate forwards ``set_epoch`` to the sampler *or* the dataset, not both; this makes it
    explicit and also covers resumed runs (the epoch comes from the restored ``TrainerState``).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)


def _attach_feature_projection(student, teacher, *, seed: int) -> None:
    """Give the student a map from its features to the teacher's width, as a submodule, so that the
    Trainer's optimizer trains it and its checkpoints carry it: a linear layer on pooled features, a
    1x1 convolution on the feature maps of a segmentation student (:func:`capture_feature_map`).
    Seeded: reruns start alike."""
    dense = segmentation_head(student) is not None
    if dense:
        width = {"student": _feature_map_width(student), "teacher": _feature_map_width(teacher)}
    else:
        width = {
            name: find_classification_head(model)[1].in_features
            for name, model in (("student", student), ("teacher", teacher))
        }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if dense:
            student.feature_projection = torch.nn.Conv2d(width["student"], width["teacher"], kernel_size=1)
        else:
            student.feature_projection = torch.nn.Linear(width["student"], width["teacher"])


def segmentation_head(model) -> torch.nn.Module | None:
    """The module that turns a segmentation model's feature maps into logits (``decode_head`` of
    SegFormer and UperNet, ``segmentation_head`` of MobileViT), or ``None`` for other models."""
    for name in ("decode_head", "segmentation_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


@contextlib.contextmanager
def capture_feature_map(model):
    """Inside the block, every forward of the segmentation model ``model`` appends its last (deepest)
    feature map, `[batch, channels, h, w]` with gradients, to the yielded list: the last 4-D tensor its
    :func:`segmentation_head` receives (SegFormer's last encoder stage, UperNet's last backbone
    feature map). What per-pixel feature matching (``feature_cosine`` on segmentation models) compares.

    Raises:
        ValueError: ``model`` has no segmentation head, or its head received no feature map.
    """
    head = segmentation_head(model)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no decode_head or segmentation_head to take feature maps from"
        )
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        values = [*args, *kwargs.values()]
        values = [v for value in values for v in (value if isinstance(value, (list, tuple)) else (value,))]
        maps = [v for v in values if isinstance(v, torch.Tensor) and v.dim() == 4]
        if not maps:
            raise ValueError(f"the {type(head).__name__} of {type(model).__name__} received no feature map")
        captured.append(maps[-1])

    handle = head.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def _feature_map_width(model, size: int = 64) -> int:
    """The channels of ``model``'s last feature map, from one forward of a blank ``size`` px image."""
    parameter = next(model.parameters())
    config = getattr(model.config, "backbone_config", None) or model.config
    pixels = torch.zeros(1, getattr(config, "num_channels", 3), size, size, dtype=parameter.dtype)
    training = model.training
    model.eval()  # BatchNorm cannot train on one image
    try:
        with capture_feature_map(model) as captured:
            model(pixel_values=pixels.to(parameter.device))
    finally:
        model.train(training)
    return int(captured[-1].shape[1])


#: Batch key under which :func:`collate_skipping_unreadable` hands the skipped rows to the trainer.
UNREADABLE_ROWS = "unreadable_rows"


def collate_skipping_unreadable(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_data_collator`` over the rows whose image decoded; the others' row ids ride along
    as ``unreadable_rows`` (they are counted in the training process, not in a loader worker)."""
    from transformers import default_data_collator

    kept = [r for r in rows if UNREADABLE_ROW not in r]
    skipped = [r[UNREADABLE_ROW] for r in rows if UNREADABLE_ROW in r]
    if not kept:
        raise ImageDecodeError(
            f"no image of a whole batch could be decoded (transfer-set rows {skipped[:10]}): "
            "is the transfer set readable at all?"
        )
    batch = default_data_collator(kept)
    if skipped:
        batch[UNREADABLE_ROWS] = torch.tensor(skipped)
    return batch


class EpochSeededViewsMixin:
    """For a Trainer whose training rows draw their views from ``(seed, epoch, row)``
    (:class:`~hf_task_distill.data.RandomViewDataset`, a teacher cache): announce each epoch to them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_SetEpoch(self.train_dataset))


class NoSingleRowBatchMixin:
    """Drop an epoch's last training batch when it would hold a single row and the model has BatchNorm.

    BatchNorm cannot normalise one value per channel: a last batch of one image (a labelled set of
    ``k * batch_size + 1`` images, or a transfer set of that size) stops training with "Expected more
    than 1 value per channel when training", deep inside the model, at a small resolution where the
    last feature map is 1 x 1 (the mini-VFM and ResNet students at 32 px). For such a dataset the
    training data loader drops its last batch, with a warning: one image per epoch, a different one
    each epoch (the order is shuffled), is not trained on. Evaluation keeps every row. A batch size of
    1 cannot be helped that way: torch's error is then re-raised saying to use a batch of 2 or more.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._drop_single_row_batch = False
        dataset, arguments = self.train_dataset, self.args
        if dataset is None or arguments.dataloader_drop_last or not hasattr(dataset, "__len__"):
            return
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return
        rows = math.ceil(len(dataset) / max(1, arguments.world_size))  # this process's share
        if rows > 1 and rows % arguments.per_device_train_batch_size == 1:
            logger.warning(
                "%d training rows in batches of %d leave a last batch of 1, which BatchNorm cannot train on: "
                "each epoch's last training batch is dropped",
                rows,
                arguments.per_device_train_batch_size,
            )
            self._drop_single_row_batch = True

    def training_step(self, *args, **kwargs):
        """``Trainer.training_step``, with BatchNorm's one-value-per-channel error explained (batch size, image size)."""
        try:
            return super().training_step(*args, **kwargs)
        except ValueError as err:
            if "Expected more than 1 value per channel" not in str(err):
                raise
            raise ValueError(
                f"a BatchNorm layer of the model got one value per channel ({err}): a training batch of "
                f"{self.args.per_device_train_batch_size} image(s) whose feature map has shrunk to 1 x 1. Use a "
                "batch size of at least 2 (per_device_train_batch_size, --batch_size) or larger images"
            ) from err

    def get_train_dataloader(self):
        """``Trainer.get_train_dataloader``, dropping an epoch's last batch when it would hold one row."""
        if not self._drop_single_row_batch:
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True  # the Trainer reads it when it builds the loader
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False


class NativeCheckpointsMixin:
    """Write training checkpoints with the model's own parameter names.

    transformers 5 saves some models (DINOv2, ViT, ...) under their legacy key names by default,
    but the Trainer reloads checkpoints (``load_best_model_at_end``, ``resume_from_checkpoint``) with a
    plain ``load_state_dict(strict=False)`` that does not translate them back: the renamed weights are
    silently skipped and the "best" model is a mix of two epochs. Checkpoints are therefore saved in
    the native format; ``save_model`` keeps the default (original) format, which ``from_pretrained``
    reads and which timm needs for timm students.
    """

    _writing_checkpoint = False

    def _save_checkpoint(self, *args, **kwargs):
        self._writing_checkpoint = True
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self._writing_checkpoint = False

    def _save(self, output_dir=None, state_dict=None):
        from transformers import PreTrainedModel

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not self._writing_checkpoint or not isinstance(model, PreTrainedModel):
            return super()._save(output_dir, state_dict)
        save_pretrained = model.save_pretrained
        model.save_pretrained = functools.partial(save_pretrained, save_original_format=False)
        try:
            return super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained


def _teacher_sources(loss: DistillationLoss, args, model, teacher_model, teacher_cache, train_dataset):
    """The teacher, the teacher cache and the training rows a :class:`DistillationTrainer` gets: a
    teacher given as a Hub id or folder is loaded, a cache given as a folder or a dataset repo id is
    opened (a repo's is downloaded: a reinforced transfer set, ``hf_task_distill.hub.reinforced``);
    both are checked against the loss and the student. A cache pulled from the Hub with no
    ``train_dataset`` brings the rows it was published with. The teacher is frozen in eval mode, the
    student given its feature projection when the loss matches features.

    Raises:
        ValueError: the loss needs a teacher (or its features) that was not given, the label spaces
            differ, or a local cache comes without the dataset it was built on.
        TeacherCacheMismatch: the cache was built for another teacher, class count or class names.
    """
    if isinstance(teacher_model, (str, os.PathLike)):
        teacher_model = load_teacher(os.fspath(teacher_model))
    if isinstance(teacher_cache, (str, os.PathLike)):
        from .hub.reinforced import open_teacher_cache

        teacher_cache = open_teacher_cache(teacher_cache)  # a folder, or a dataset repo id on the Hub
    if teacher_model is None and loss.requires_features:
        raise ValueError(
            f"loss '{args.distill_loss}' matches the teacher's image features: pass teacher_model= "
            "(a teacher cache stores logits only)"
        )
    if teacher_model is None and teacher_cache is None and loss.requires_teacher:
        raise ValueError(f"loss '{args.distill_loss}' needs a teacher: pass teacher_model= or teacher_cache=")
    if teacher_model is not None:
        if not loss.requires_features:  # features need no shared label space
            task_type_of(model).check_label_spaces(teacher_model, model)
        teacher_model.requires_grad_(False)
        teacher_model.eval()
    if loss.requires_features:
        _attach_feature_projection(model, teacher_model, seed=args.seed)
    if teacher_cache is not None:
        teacher_cache.check(
            teacher=teacher_model,
            num_labels=model.config.num_labels,
            label_names=label_names_of(model.config),
            where="this run",
        )
        if train_dataset is None and teacher_cache.hub_source is not None:
            train_dataset = teacher_cache.published_transfer_set()  # the rows it was published with
        if train_dataset is None:
            raise ValueError("teacher_cache= needs the train_dataset it was built on")
    return teacher_model, teacher_cache, train_dataset


class TaskTrainer(EpochSeededViewsMixin, NoSingleRowBatchMixin, NativeCheckpointsMixin, Trainer):
    """The ``transformers.Trainer`` every training in the package starts from: teacher finetuning,
    distillation and student finetuning share its checkpoints (:class:`NativeCheckpointsMixin`),
    its epoch-seeded views (:class:`EpochSeededViewsMixin`) and its handling of a last batch of one
    row (:class:`NoSingleRowBatchMixin`). On its own it trains a model on its own loss (the
    cross-entropy of a classifier given ``labels``): how students are finetuned on the labels."""


class LossWindowMixin:
    """For :class:`DistillationTrainer`: the rows of each optimizer step's gradient-accumulation
    window, counted over all processes before its first forward (so that the loss is normalised by
    the whole window, not by each micro-batch); each loss term's mean between two logs; and the
    transfer-set rows skipped because their image could not be decoded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unreadable_rows: set[int] = set()
        self._part_sums: dict[str, torch.Tensor] = {}
        self._windows_since_log = 0

    @property
    def skipped_rows(self) -> list[int]:
        """Transfer-set rows skipped because their image could not be decoded: when the teacher cache
        was built (a cache stores no output for them), or while training (all processes, after
        ``train()``; this process's so far, during it)."""
        cached = (
            [item["row"] for item in self.teacher_cache.skipped] if self.teacher_cache is not None else []
        )
        return sorted(set(cached) | self._unreadable_rows)

    def train(self, *args, **kwargs):
        """``Trainer.train``, then the unreadable rows of every process gathered and reported once."""
        output = super().train(*args, **kwargs)
        if (
            self.args.world_size > 1
        ):  # only after a normal end: a rank that raised would leave the others waiting
            from accelerate.utils import gather_object

            self._unreadable_rows = set(gather_object(sorted(self._unreadable_rows)))
        if self._unreadable_rows:
            logger.warning(
                "skipped %d transfer-set row(s) whose image could not be decoded: %s",
                len(self._unreadable_rows),
                self.skipped_rows[:20],
            )
        return output

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """``Trainer.get_batch_samples``, and the window's rows and labelled rows (for masks: labelled
        pixels) over all processes (the loss's normaliser)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batch_samples:
            skipped = batch.pop(UNREADABLE_ROWS, None)
            if skipped is not None:
                self._unreadable_rows.update(int(r) for r in skipped.tolist())
        rows = sum(int(batch["pixel_values"].shape[0]) for batch in batch_samples)
        labelled = sum(
            int(labelled_positions(batch["labels"]).sum()) for batch in batch_samples if "labels" in batch
        )
        counts = torch.tensor([rows, labelled], dtype=torch.float32, device=device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._windows_since_log += 1
        self._count_work(batch_samples, counts[0] if self.args.world_size > 1 else rows)
        return batch_samples, _AccumulationWindow(all=counts[0], labelled=counts[1])

    def _count_work(self, batch_samples, rows) -> None:
        """Hand one optimizer step's rows (all processes) and the models' input sizes to the card's counter."""
        if not batch_samples:
            return
        batch = batch_samples[0]
        sizes = {"student": list(batch["pixel_values"].shape[-2:])}
        teacher_ran = self._teacher is not None and "teacher_logits" not in batch
        if teacher_ran:
            sizes["teacher"] = list(batch.get("teacher_pixel_values", batch["pixel_values"]).shape[-2:])
        self.model_card_callback.add_training_rows(rows, teacher_ran=teacher_ran, sizes=sizes)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add each loss term's mean since the last log to the training logs."""
        if "loss" in logs and self._part_sums and self._windows_since_log:
            names = sorted(self._part_sums)
            stacked = torch.stack(
                [torch.as_tensor(self._part_sums[n], device=self.args.device) for n in names]
            )
            if self.args.world_size > 1:
                stacked = self.accelerator.reduce(stacked, reduction="sum")
            for name, value in zip(names, (stacked / self._windows_since_log).tolist(), strict=True):
                logs[f"loss_{name}"] = round(value, 6)
            self._part_sums, self._windows_since_log = {}, 0
        super().log(logs, *args, **kwargs)


class DistillationTrainer(LossWindowMixin, ModelCardMixin, TaskTrainer):
    """Train ``model`` (the student) to match ``teacher_model`` on a (possibly unlabelled) dataset.

    ``teacher_model`` is a model or a Hub id/folder of a finetuned classifier (see ``load_teacher``).
    ``teacher_cache`` (a :class:`~hf_task_distill.teacher_cache.TeacherCache`, its folder, or the
    dataset repo id of a reinforced transfer set published with its cache, e.g. ``"user/transfer-set"``,
    downloaded and verified) replaces it for training: the student sees the cached views and learns
    from the stored logits, and no teacher runs. The cache is checked against ``train_dataset`` (and
    ``teacher_model`` when both are given, which then serves evaluation) and the student's classes,
    and refused if it was built for anything else; a repo's cache with no ``train_dataset`` trains on
    the rows published with it.

    Datasets may be raw ``datasets.Dataset`` s with an image column (paired teacher/student views are
    then attached from each model's preprocessing, see :class:`~hf_task_distill.data.PairedViews`), or
    already yield ``pixel_values`` (student) and optionally ``teacher_pixel_values`` and ``labels``.
    The teacher is frozen, kept in eval mode, prepared by the Trainer's accelerator (device, mixed
    precision), run under ``torch.no_grad()``, and never saved in checkpoints.
    """

    # compute_loss normalises by the rows of the whole accumulation window itself
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: DistillationArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        *,
        loss: DistillationLoss | None = None,
        views: PairedViews | None = None,
        teacher_cache=None,
        teacher_processor: Any = None,
        compute_metrics=None,
        **kwargs,
    ):
        if args is None:
            args = DistillationArguments()
        elif not isinstance(args, DistillationArguments):
            raise TypeError(f"args must be DistillationArguments, got {type(args).__name__}")
        if model is None:
            raise ValueError("DistillationTrainer needs the student model (model=)")
        self.distillation_loss = loss or build_loss(
            args.distill_loss,
            temperature=args.temperature,
            kd_weight=args.kd_weight,
            ce_weight=args.ce_weight,
        )
        teacher_model, teacher_cache, train_dataset = _teacher_sources(
            self.distillation_loss, args, model, teacher_model, teacher_cache, train_dataset
        )
        self.teacher_cache = teacher_cache
        self._views = views
        self._views_source = (teacher_model, model, teacher_processor)
        num_labels = model.config.num_labels
        if teacher_cache is not None:
            train_dataset = self._cached_dataset(train_dataset, num_labels)
        else:
            train_dataset = self._prepare_dataset(
                train_dataset,
                train=True,
                num_labels=num_labels,
                where="train_dataset",
                seed=args.data_seed if args.data_seed is not None else args.seed,
            )
        eval_dataset = self._prepare_eval_datasets(eval_dataset, num_labels)
        if isinstance(train_dataset, RandomViewDataset) and train_dataset.skip_unreadable:
            kwargs.setdefault("data_collator", collate_skipping_unreadable)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics or distillation_metrics,
            **kwargs,
        )
        self._teacher = teacher_model
        self._teacher_prepared = False
        self._name_published_teacher()

    def _name_published_teacher(self) -> None:
        """A cache pulled from a reinforced transfer set: the card names the teacher that made it and
        the set's repo (there is no teacher model to read them from)."""
        cache = self.teacher_cache
        if cache is not None and cache.hub_source is not None and cache.published:
            self.model_card_options.update(
                teacher=cache.published.get("teacher"), transfer_set=cache.hub_source[0]
            )

    # ---- data (hf_task_distill.distillation_data) ----------------------------------------------
    def _prepare_dataset(self, dataset, *, train: bool, num_labels: int, where: str, seed: int = 0):
        """Check a dataset up front; attach paired views to raw image datasets (see
        :func:`~hf_task_distill.distillation_data.prepare_dataset`)."""
        return prepare_dataset(
            dataset,
            views=lambda: self.views,
            student=self._views_source[1],
            has_teacher=self._views_source[0] is not None,
            train=train,
            num_labels=num_labels,
            where=where,
            seed=seed,
        )

    def _prepare_eval_datasets(self, eval_dataset, num_labels: int):
        """``eval_dataset`` (one dataset, or a dict of them as the Trainer takes) with evaluation views."""
        if isinstance(eval_dataset, dict):
            return {
                name: self._prepare_dataset(
                    ds, train=False, num_labels=num_labels, where=f"eval_dataset['{name}']"
                )
                for name, ds in eval_dataset.items()
            }
        return self._prepare_dataset(eval_dataset, train=False, num_labels=num_labels, where="eval_dataset")

    def _cached_dataset(self, dataset, num_labels: int) -> CachedTeacherDataset:
        """The transfer set replayed from the teacher cache (:func:`~hf_task_distill.distillation_data.cached_dataset`)."""
        return cached_dataset(
            dataset, self.teacher_cache, self._views_source[1], self.views.student, num_labels
        )

    @property
    def views(self) -> PairedViews | None:
        """The teacher and student view specs (from ``views=``, else from the models or the cache)."""
        if self._views is None:
            teacher, student, processor = self._views_source
            if teacher is not None:
                self._views = PairedViews.from_models(teacher, student, teacher_processor=processor)
            elif self.teacher_cache is not None:
                cache = self.teacher_cache
                self._views = PairedViews(
                    cache.teacher_view, ViewSpec.from_model(student), cache.augmentation
                )
        return self._views

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "teacher_pixel_values" not in self._signature_columns:
            self._signature_columns.append("teacher_pixel_values")

    # ---- teacher ------------------------------------------------------------------------------
    @property
    def teacher_model(self):
        """The teacher, prepared by the accelerator on first use (after the student, so that evaluation
        without training still prepares the student first)."""
        if self._teacher is not None and not self._teacher_prepared:
            self._teacher = self.accelerator.prepare_model(self._teacher, evaluation_mode=True)
            if next(self._teacher.parameters()).device != self.accelerator.device:
                self._teacher.to(self.accelerator.device)  # FSDP leaves placement to the caller
            self._teacher_prepared = True
        return self._teacher

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits, and its image features (its head's input) when the loss needs them."""
        teacher = self.teacher_model
        if teacher.training:
            teacher.eval()
        pixels = inputs.get("teacher_pixel_values")
        if pixels is None:
            pixels = inputs["pixel_values"]
        dtype = next(teacher.parameters()).dtype
        if not self.distillation_loss.requires_features:
            return teacher(pixel_values=pixels.to(dtype)).logits, None
        unwrapped = self.accelerator.unwrap_model(teacher)
        if segmentation_head(unwrapped) is not None:
            with capture_feature_map(unwrapped) as captured:
                logits = teacher(pixel_values=pixels.to(dtype)).logits
            return logits, captured[-1]
        with capture_head_inputs(unwrapped) as captured:
            logits = teacher(pixel_values=pixels.to(dtype)).logits
        return logits, captured[-1].flatten(1)

    def teacher_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits ``[batch, num_labels]`` on the batch's teacher views."""
        return self.teacher_outputs(inputs)[0]

    def _student_outputs(self, model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's logits, and (for feature losses) its features through the learned projection."""
        if not self.distillation_loss.requires_features:
            return model(pixel_values=pixels).logits, None
        student = self.accelerator.unwrap_model(model)
        if segmentation_head(student) is not None:
            with capture_feature_map(student) as captured:
                logits = model(pixel_values=pixels).logits
            return logits, student.feature_projection(captured[-1])
        with capture_head_inputs(student) as captured:
            logits = model(pixel_values=pixels).logits
        return logits, student.feature_projection(captured[-1].flatten(1))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the student, with its model card (``README.md``, see :meth:`create_model_card`).

        Checkpoints keep the feature projection (a resumed run needs it); the saved model does not (it is only the bridge to the
        teacher's features, and the student's own class would not load it)."""
        model = self.accelerator.unwrap_model(self.model)
        projection = None
        if not self._writing_checkpoint and "feature_projection" in model._modules:
            projection = model._modules.pop("feature_projection")
        try:
            return super().save_model(output_dir, _internal_call)
        finally:
            if projection is not None:
                model.feature_projection = projection

    @property
    def card_teacher_model(self):
        """The teacher the card names (``ModelCardMixin``): the model given, unprepared."""
        return self._views_source[0]

    # ---- loss ---------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The distillation loss of one micro-batch, normalised by the rows of the whole accumulation window
        (all processes); the teacher runs first, its targets and the loss are checked to be finite."""
        labels = inputs.get("labels")
        teacher_logits = inputs.get("teacher_logits")  # from a teacher cache
        teacher_features = None
        if teacher_logits is None and self._teacher is not None:
            # The teacher runs first: its activations are freed before the student's autograd graph
            # exists. In the other order the step measured 1.19x (teacher + student) on a CPU, 1.01x here.
            teacher_logits, teacher_features = self.teacher_outputs(inputs)
        if teacher_logits is not None:
            self._check_finite(teacher_logits, "teacher logits")
        if teacher_features is not None:
            self._check_finite(teacher_features, "teacher features")
        student_logits, student_features = self._student_outputs(model, inputs["pixel_values"])
        if teacher_logits is None and not model.training and self.distillation_loss.requires_teacher:
            # evaluating while distilling from a cache: no teacher to compare with, report the label loss
            return self._label_loss(student_logits, labels, return_outputs)
        window = num_items_in_batch if isinstance(num_items_in_batch, _AccumulationWindow) else None
        loss, parts = self.distillation_loss(
            LossInputs(student_logits, teacher_logits, labels, student_features, teacher_features),
            window.as_counts() if window else None,
        )
        if model.training and not self.args.fp16:  # fp16: the Trainer's grad scaler skips overflowing steps
            self._check_finite(loss, "the loss")
        if window is not None:
            for name, value in parts.items():
                self._part_sums[name] = self._part_sums.get(name, 0.0) + value.detach()
            # Each process holds its share of the window's sum; DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        if return_outputs:
            return loss, {"logits": student_logits, "teacher_logits": teacher_logits}
        return loss

    def _check_finite(self, values: torch.Tensor, what: str) -> None:
        """Stop before a non-finite target or loss reaches the weights, naming the batch.

        One device sync per check; the Trainer already syncs on the loss every step when
        ``logging_nan_inf_filter`` is on (its default).
        """
        bad = ~torch.isfinite(values.detach())
        if not bool(bad.any()):
            return
        phase = "optimizer step" if self.model.training else "evaluation after step"
        step = self.state.global_step + (1 if self.model.training else 0)
        where = f"in {phase} {step} (epoch {self.state.epoch or 0:.2f})"
        if values.dim() == 0:
            raise FloatingPointError(
                f"{what} is {values.item()} {where}: the step was stopped before the weights were updated. "
                "Check that batch's images and the teacher's outputs; the last checkpoint is intact"
            )
        rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist()
        raise FloatingPointError(
            f"{what} are not finite for {len(rows)} row(s) of the batch {where} (batch rows {rows[:10]}): "
            "the step was stopped before the weights were updated"
        )

    def _label_loss(self, student_logits, labels, return_outputs):
        """The cross-entropy's mean over the batch's labelled rows (for masks: labelled pixels), 0 without any."""
        loss = student_logits.new_zeros(())
        if labels is not None:
            labelled = labelled_positions(labels).sum()
            if bool(labelled > 0):
                per_row = LabelCrossEntropy().per_row(LossInputs(student_logits, labels=labels))
                loss = per_row.sum() / labelled
        return (loss, {"logits": student_logits, "teacher_logits": None}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, the student's logits (with the teacher's, when there is a teacher) and the labels
        (``-100`` for unlabelled rows), for the Trainer's evaluation loop.

        Dense (segmentation) outputs are returned as class maps instead of logits, see
        :func:`_dense_predictions`."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits, teacher_logits = outputs["logits"].detach(), outputs["teacher_logits"]
        if is_dense(logits):
            return (
                loss,
                *_dense_predictions(logits, teacher_logits, labels, inputs["pixel_values"].shape[-2:]),
            )
        if labels is None:  # the Trainer computes metrics only when labels exist: mark rows unlabelled
            labels = torch.full((logits.shape[0],), UNLABELLED, device=logits.device)
        if teacher_logits is not None:
            logits = (logits, teacher_logits.detach().to(logits.dtype))
        return loss, logits, labels


def _dense_predictions(student_logits, teacher_logits, labels, input_size):
    """What evaluation keeps of a segmentation batch: each model's class map at the masks' size (the
    logits upsampled bilinearly, then arg-max, as ``post_process_semantic_segmentation`` does) rather
    than its logits, which would take ``num_classes`` times the memory over a whole evaluation set.

    Args:
        student_logits (`torch.Tensor` of shape `[batch, num_classes, h, w]`): the student's logits.
        teacher_logits (`torch.Tensor` of shape `[batch, num_classes, h', w']` or `None`): the teacher's.
        labels (`torch.LongTensor` of shape `[batch, H, W]` or `None`): the masks (``255`` unlabelled).
        input_size (`tuple[int, int]`): the student's input size, the maps' size when there are no masks.

    Returns:
        `tuple`: the predictions (the student's class map `[batch, H, W]`, or a pair with the teacher's)
        and the masks (all ``255`` when the batch has none).
    """
    size = tuple(labels.shape[-2:]) if labels is not None else tuple(input_size)
    if labels is None:  # the Trainer computes metrics only when labels exist: mark every pixel unlabelled
        labels = torch.full((student_logits.shape[0], *size), IGNORE_INDEX, device=student_logits.device)
    maps = [resize_to_grid(student_logits.float(), size).argmax(dim=1)]
    if teacher_logits is not None:
        maps.append(resize_to_grid(teacher_logits.detach().float(), size).argmax(dim=1))
    return (maps[0] if len(maps) == 1 else tuple(maps)), labels
