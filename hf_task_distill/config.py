"""The typed configuration of a run, shared by the Python API, the CLI and the examples.

Each dataclass is one concern; ``HfArgumentParser`` turns them into command-line flags and reads
them back from a ``.json``/``.yaml`` file. Defaults follow the paper where it gives one (label
budgets, per-query k, function-matching KD, a finetuning stage after distillation) and are marked
where it does not.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "STAGES",
    "PipelineConfig",
    "RunArguments",
    "StudentArguments",
    "TaskArguments",
    "TeacherArguments",
    "TransferArguments",
]

STAGES = ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate", "publish")


@dataclass
class TaskArguments:
    """The labelled target task and its label budget."""

    _argument_group_name = "task (the labelled images and the label budget)"

    dataset: str = field(
        metadata={
            "help": "Target task: 'digits' (ships with scikit-learn, offline), a registry name "
            "(cub, eurosat, ham10000, places365, imagenet), a Hub dataset id or an image folder."
        }
    )
    per_class: int | None = field(
        default=None,
        metadata={"help": "Label budget: labelled images per class (paper: 5/10/25 on EuroSAT)."},
    )
    fraction: float | None = field(
        default=None,
        metadata={"help": "Label budget: fraction of each class (paper: 0.01 and 0.1 on ImageNet)."},
    )
    budget_seed: int = field(default=0, metadata={"help": "Seed of the label-budget draw."})

    def __post_init__(self):
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"--per_class must be at least 1, got {self.per_class}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")


@dataclass
class TeacherArguments:
    """Stage 1: the vision foundation model and how it is finetuned on the labels."""

    _argument_group_name = "stage 1, teacher (the vision foundation model and its finetuning)"

    teacher: str = field(
        default="facebook/dinov2-large",
        metadata={
            "help": "VFM to finetune (Hub id or folder), or an already finetuned classifier with --teacher_strategy none."
        },
    )
    teacher_strategy: str = field(
        default="lp-ft",
        metadata={
            "help": "linear, full, lp-ft (linear probe then full; default, not from the paper), lora, or none."
        },
    )
    teacher_epochs: float = field(
        default=10.0, metadata={"help": "Epochs of backbone training (full/lp-ft/lora)."}
    )
    teacher_learning_rate: float = field(default=1e-5, metadata={"help": "Backbone learning rate."})
    teacher_probe_epochs: int = field(
        default=100, metadata={"help": "Epochs of the linear probe on cached features."}
    )
    teacher_layer_decay: float = field(
        default=0.75, metadata={"help": "Layer-wise lr decay for full finetuning."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model repos to run their own code."}
    )

    def __post_init__(self):
        allowed = ("linear", "full", "lp-ft", "lora", "none")
        if self.teacher_strategy not in allowed:
            raise ValueError(
                f"--teacher_strategy must be one of {', '.join(allowed)}, got '{self.teacher_strategy}'"
            )


@dataclass
class TransferArguments:
    """Stage 2: the unlabelled images the teacher's knowledge is transferred on."""

    _argument_group_name = "stage 2, transfer set (the unlabelled images to distil on)"

    transfer: str = field(
        default="task",
        metadata={
            "help": "'task': the task's own training images, labels dropped; 'retrieval': pool images "
            "nearest to the labelled images; or a dataset (Hub id or folder) used as a generic transfer set."
        },
    )
    pool: str | None = field(
        default=None,
        metadata={"help": "Retrieval pool: Hub id, image folder, parquet/webdataset files (glob)."},
    )
    pool_streaming: bool = field(
        default=False, metadata={"help": "Stream the pool instead of converting it."}
    )
    per_query_k: int | None = field(
        default=None, metadata={"help": "Neighbours per labelled image (paper: 127/63/31/15/7)."}
    )
    transfer_budget: int | None = field(
        default=None,
        metadata={"help": "Total transfer-set size spread over classes (instead of per_query_k)."},
    )
    retrieval_encoder: str | None = field(
        default=None,
        metadata={"help": "Embedding model for retrieval (default: the teacher before finetuning)."},
    )
    leakage_threshold: float = field(
        default=0.95,
        metadata={"help": "Cosine above which a pool image is a copy of a validation/test image."},
    )

    def __post_init__(self):
        # checked here, not when stage 2 starts: a typo must not cost a finetuned teacher first
        for flag in ("per_query_k", "transfer_budget"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag} must be at least 1, got {value}")
        if self.transfer == "retrieval":
            if self.pool is None:
                raise ValueError(
                    "--transfer retrieval needs --pool (a Hub id, image folder or parquet/webdataset files)"
                )
            if (self.per_query_k is None) == (self.transfer_budget is None):
                raise ValueError(
                    "--transfer retrieval needs exactly one of --per_query_k or --transfer_budget"
                )


@dataclass
class StudentArguments:
    """Stages 3-4: the small model, its distillation and its finetuning on the labels."""

    _argument_group_name = "stages 3-4, student (the small model, its distillation and finetuning)"

    student: str = field(
        default="mobilevitv2_100",
        metadata={"help": "timm architecture (e.g. mobilevitv2_100, fastvit_t8, resnet50) or Hub id."},
    )
    pretrained_student: bool = field(
        default=False,
        metadata={"help": "Start from the architecture's pretrained weights (paper: random init)."},
    )
    student_image_size: int | None = field(default=None, metadata={"help": "Student input resolution."})
    distill_epochs: float = field(
        default=50.0, metadata={"help": "Epochs over the transfer set (not from the paper)."}
    )
    distill_learning_rate: float = field(default=1e-3, metadata={"help": "Distillation learning rate."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the KD loss."})
    distill_loss: str = field(
        default="function_matching",
        metadata={
            "help": "Loss from the registry: function_matching (KL to the teacher only; paper), kd (+ CE on "
            "labelled rows), feature_cosine / feature_contrastive (task-agnostic: match the teacher's image "
            "features through a learned projection; the paper's baseline, finetune after)."
        },
    )
    teacher_cache_views: int = field(
        default=0,
        metadata={
            "help": "0: run the teacher on every distillation step (fresh views every epoch). K > 0: run it "
            "once on K augmented views of each transfer image, stored in distill/teacher_cache, and "
            "replay those; cheaper as soon as distill_epochs > K (see docs/performance.md)."
        },
    )
    teacher_cache_top_k: int | None = field(
        default=None,
        metadata={"help": "Store only the top-k teacher logits per view (plus the remaining mass)."},
    )
    finetune_epochs: float = field(
        default=20.0, metadata={"help": "Epochs of finetuning on the labels after distillation."}
    )
    finetune_learning_rate: float = field(default=1e-3, metadata={"help": "Finetuning learning rate."})
    baseline: bool = field(
        # a switch that is on by default: its help is a noun phrase, shown as "--no_baseline  Turn off <help>"
        default=True,
        metadata={"help": "the baseline: the same student trained on the labels alone, for comparison."},
    )

    def __post_init__(self):
        from .losses import available_losses  # the registry, so losses registered by the user count

        # checked here, not when stage 3 starts: a typo must not cost a finetuned teacher first
        if self.distill_loss not in available_losses():
            raise ValueError(
                f"--distill_loss: unknown loss '{self.distill_loss}'; registered: {', '.join(available_losses())}"
            )
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.teacher_cache_views < 0:
            raise ValueError(f"--teacher_cache_views must be >= 0, got {self.teacher_cache_views}")
        if self.teacher_cache_top_k is not None and self.teacher_cache_top_k < 1:
            raise ValueError(f"--teacher_cache_top_k must be at least 1, got {self.teacher_cache_top_k}")
        if self.teacher_cache_views and self.distill_loss.startswith("feature_"):
            raise ValueError(
                f"--distill_loss {self.distill_loss} matches the teacher's features, which a teacher cache "
                "does not store: use --teacher_cache_views 0"
            )


@dataclass
class RunArguments:
    """Where the run lives and how it runs."""

    _argument_group_name = "run (where the run lives and how it runs)"

    output_dir: str = field(default="runs/run", metadata={"help": "Run directory: one sub-folder per stage."})
    overwrite_stage: list[str] = field(
        default_factory=list,
        metadata={"help": f"Redo these stages (and what depends on them): {', '.join(STAGES)}."},
    )
    batch_size: int = field(default=64, metadata={"help": "Images per device per step, every stage."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs that support it)."})
    fp16: bool = field(default=False, metadata={"help": "fp16 mixed precision."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    crop_min_scale: float = field(
        default=0.25, metadata={"help": "Smallest random-resized-crop area when training, every stage."}
    )
    hflip_probability: float = field(
        default=0.5, metadata={"help": "Horizontal-flip probability when training (0 for text, digits...)."}
    )
    report_to: str = field(
        default="none", metadata={"help": "Trainer loggers: none, tensorboard, wandb, all, ..."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the student (and a retrieved transfer set)."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Repo of the student, e.g. me/mobilevitv2-cub."}
    )
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Repo of the transfer set."})
    hub_private: bool = field(default=False, metadata={"help": "Create private repos."})

    def __post_init__(self):
        if self.bf16 and self.fp16:
            raise ValueError("--bf16 and --fp16 are exclusive: choose one mixed precision")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"--crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if not 0.0 <= self.hflip_probability <= 1.0:
            raise ValueError(f"--hflip_probability must be in [0, 1], got {self.hflip_probability}")
        unknown = [s for s in self.overwrite_stage if s not in STAGES]
        if unknown:
            raise ValueError(f"--overwrite_stage: unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")


ARGUMENT_GROUPS = (TaskArguments, TeacherArguments, TransferArguments, StudentArguments, RunArguments)


@dataclass
class PipelineConfig:
    """All of a run's settings, one dataclass per concern."""

    task: TaskArguments
    teacher: TeacherArguments = field(default_factory=TeacherArguments)
    transfer: TransferArguments = field(default_factory=TransferArguments)
    student: StudentArguments = field(default_factory=StudentArguments)
    run: RunArguments = field(default_factory=RunArguments)

    @classmethod
    def from_groups(cls, groups) -> PipelineConfig:
        """From the dataclass instances ``HfArgumentParser`` returns (any order; missing ones default)."""
        by_name = {type(g).__name__: g for g in groups}
        return cls(**{f.name: by_name[f.type] for f in dataclasses.fields(cls) if f.type in by_name})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        """From a flat mapping of flag names to values (what a config file holds)."""
        known = {f.name for group in ARGUMENT_GROUPS for f in dataclasses.fields(group)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        groups = []
        for group in ARGUMENT_GROUPS:
            names = {f.name for f in dataclasses.fields(group)}
            groups.append(group(**{k: v for k, v in values.items() if k in names}))
        return cls.from_groups(groups)

    def to_dict(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            flat.update(dataclasses.asdict(getattr(self, f.name)))
        return flat

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
