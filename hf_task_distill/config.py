"""The typed configuration of a run, shared by the Python API, the CLI and the examples.

Each dataclass is one concern; ``HfArgumentParser`` turns them into command-line flags and reads
them back from a ``.json``/``.yaml`` file. Defaults follow the paper where it gives one (label
budgets, per-query k, function-matching KD, a finetuning stage after distillation) and are marked
where it does not.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .checks import SEED_MAX, check_choice, check_int, check_number, check_report_to
from .files import write_json_atomically
from .options import TRANSFER_MODES, RetrievalSettings, distill_loss_field
from .sources import absolute_local_path, check_model_source, is_local_path

__all__ = [
    "INVOCATION_SETTINGS",
    "RECOMPUTED_FREELY",
    "STAGES",
    "PipelineConfig",
    "RunArguments",
    "StudentArguments",
    "TaskArguments",
    "TeacherArguments",
    "TransferArguments",
    "stage_settings",
    "stage_upstream",
]

#: The package's own stages, in run order (:func:`hf_task_distill.stages.available_stages` adds any
#: a plugin registered; each stage is one module of :mod:`hf_task_distill.stages`).
STAGES = ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate", "export", "publish")
#: Stages that only derive files from finished ones (seconds of work): a changed setting redoes them
#: without asking (``Stage.recomputed_freely``). Any other finished stage is redone only when
#: ``--overwrite_stage`` names it.
RECOMPUTED_FREELY = ("evaluate", "export", "publish")
#: Retrieval settings that are off (None) unless given: given with another --transfer, they are an error.
RETRIEVAL_ONLY = ("min_similarity", "min_teacher_confidence", "memory_budget_gb")
#: Settings of one command rather than of the run: never saved in, nor read from, a run's config.json.
INVOCATION_SETTINGS = ("output_dir", "overwrite_stage", "push_to_hub")


@dataclass
class TaskArguments:
    """The labelled target task and its label budget."""

    _argument_group_name = "task (the labelled images and the label budget)"

    dataset: str = field(
        metadata={
            "help": "Target task: 'digits' (scikit-learn's, offline), a registry name (cub, eurosat, "
            "ham10000, places365, imagenet), a Hub dataset id, an image folder or a save_to_disk folder."
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
    images: int | None = field(
        default=None,
        metadata={"help": "Label budget: images in all (segmentation)."},
    )
    task_type: str | None = field(
        default=None,
        metadata={"help": "Task type (default: found from the data)."},
    )
    budget_seed: int = field(default=0, metadata={"help": "Seed of the label-budget draw."})
    test_fraction: float = field(
        default=0.2,
        metadata={"help": "Test share per class without a test/validation split (seed: --budget_seed)."},
    )

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"--dataset must name a task, a folder or a Hub dataset, got {self.dataset!r}")
        if is_local_path(self.dataset) and not os.path.isdir(self.dataset):
            raise ValueError(f"--dataset: no such folder '{self.dataset}'")
        self.dataset = absolute_local_path(self.dataset)  # continued from any working directory
        self.per_class = check_int(self.per_class, "--per_class", minimum=1, optional=True)
        self.fraction = check_number(self.fraction, "--fraction", above=0, maximum=1, optional=True)
        self.images = check_int(self.images, "--images", minimum=1, optional=True)
        given = [f"--{n}" for n in ("per_class", "fraction", "images") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"{' and '.join(given)} are {('two', 'three')[len(given) - 2]} label budgets: give one"
            )
        if self.task_type is not None:
            from .tasks import available_task_types

            check_choice(self.task_type, "--task_type", available_task_types())
            if self.task_type != "image-classification" and (self.per_class or self.fraction):
                raise ValueError(
                    f"{given[0]} draws a budget per class; a {self.task_type} task's images have no single "
                    "class: give --images N (labelled images in all)"
                )
        self.budget_seed = check_int(self.budget_seed, "--budget_seed", minimum=0, maximum=SEED_MAX)
        self.test_fraction = check_number(self.test_fraction, "--test_fraction", above=0, below=1)


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
        check_choice(self.teacher_strategy, "--teacher_strategy", ("linear", "full", "lp-ft", "lora", "none"))
        # checked here, not when the stage loads it: "no such folder", not a Hub error, and before anything runs
        check_model_source(self.teacher, "--teacher")
        self.teacher = absolute_local_path(self.teacher)
        self.teacher_epochs = check_number(self.teacher_epochs, "--teacher_epochs", above=0)
        self.teacher_learning_rate = check_number(
            self.teacher_learning_rate, "--teacher_learning_rate", above=0
        )
        self.teacher_probe_epochs = check_int(self.teacher_probe_epochs, "--teacher_probe_epochs", minimum=1)
        self.teacher_layer_decay = check_number(
            self.teacher_layer_decay, "--teacher_layer_decay", above=0, maximum=1
        )


@dataclass
class _TransferSource:
    """Where the transfer set comes from (listed first in the transfer group's help)."""

    transfer: str = field(
        default="task",
        metadata={
            "help": "'task': the task's training images, unlabelled; 'retrieval': pool images nearest to "
            "the labelled ones; 'random': a uniform pool sample; or a dataset (Hub id or folder)."
        },
    )
    pool: str | None = field(
        default=None,
        metadata={"help": "Retrieval pool: Hub id, image folder, parquet/webdataset files (glob)."},
    )
    pool_streaming: bool = field(
        default=False, metadata={"help": "Stream the pool instead of converting it."}
    )
    pool_embeddings_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of pool embeddings, shared by runs."},
    )


@dataclass
class TransferArguments(RetrievalSettings, _TransferSource):
    """Stage 2: the unlabelled images the teacher's knowledge is transferred on.

    The retrieval fields (``per_query_k`` ... ``recall_target``) are those of
    :class:`~hf_task_distill.options.RetrievalSettings`, which
    :class:`~hf_task_distill.retrieval.RetrievalConfig` inherits too: one definition, one default.
    """

    _argument_group_name = "stage 2, transfer set (the unlabelled images to distil on)"

    retrieval_encoder: str | None = field(
        default=None,
        metadata={"help": "Embedding model for retrieval (default: the teacher before finetuning)."},
    )

    def retrieval_config(self, **embedding: Any):
        """The :class:`~hf_task_distill.retrieval.RetrievalConfig` of ``--transfer retrieval``: the
        shared fields, plus ``embedding`` (``batch_size=``, ``seed=``, ``shard_size=``)."""
        from .retrieval.builder import RetrievalConfig

        return RetrievalConfig(**self.retrieval_settings(), **embedding)

    def __post_init__(self):
        # checked here, not when stage 2 starts: a typo must not cost a finetuned teacher first
        self.check_retrieval_settings(flag="--")
        if self.transfer not in ("retrieval", "random") and (
            self.pool or self.per_query_k or self.transfer_budget
        ):
            given = [f for f in ("pool", "per_query_k", "transfer_budget") if getattr(self, f) is not None]
            modes = "retrieval" if given[0] == "per_query_k" else "retrieval or random"
            raise ValueError(
                f"--{given[0]} applies to --transfer {modes} only (--transfer is '{self.transfer}')"
            )
        for name in ("pool_embeddings_dir", *RETRIEVAL_ONLY):
            if getattr(self, name) is not None and self.transfer != "retrieval":
                raise ValueError(
                    f"--{name} applies to --transfer retrieval only (--transfer is '{self.transfer}')"
                )
        if self.transfer == "random":
            if self.pool is None or self.transfer_budget is None or self.per_query_k is not None:
                raise ValueError(
                    "--transfer random samples --transfer_budget images from --pool: give both (and no --per_query_k)"
                )
            if self.pool_streaming:
                raise ValueError(
                    "--transfer random draws from the whole pool: it cannot be streamed (--pool_streaming)"
                )
        if self.transfer == "retrieval":
            if self.pool is None:
                raise ValueError(
                    "--transfer retrieval needs --pool (a Hub id, image folder or parquet/webdataset files)"
                )
            if (self.per_query_k is None) == (self.transfer_budget is None):
                raise ValueError(
                    "--transfer retrieval needs exactly one of --per_query_k or --transfer_budget"
                )
            from .retrieval.search import require_faiss

            require_faiss()
        # then what is on disk: "no such folder", not a Hub error when the stage starts
        if self.retrieval_encoder is not None:
            check_model_source(self.retrieval_encoder, "--retrieval_encoder")
        modes = TRANSFER_MODES
        _check_not_a_mode_typo(self.transfer, modes)
        if self.transfer not in modes and is_local_path(self.transfer):
            if not os.path.isdir(self.transfer):
                raise ValueError(f"--transfer: no such folder '{self.transfer}'")
        if self.pool is not None and is_local_path(self.pool) and not glob.glob(self.pool):
            raise ValueError(f"--pool: no such file or folder '{self.pool}'")
        if self.transfer not in TRANSFER_MODES:  # the modes are names, never folders
            self.transfer = absolute_local_path(self.transfer)
        self.pool = absolute_local_path(self.pool)
        self.retrieval_encoder = absolute_local_path(self.retrieval_encoder)
        if self.pool_embeddings_dir is not None:  # a folder that may not exist yet
            self.pool_embeddings_dir = os.path.abspath(os.path.expanduser(self.pool_embeddings_dir))


def _check_not_a_mode_typo(transfer: str, modes: tuple[str, ...]) -> None:
    """Refuse a ``--transfer`` value that is no folder or Hub id but close to a mode (``retreival``):
    a typo of a mode, not a dataset, said before the teacher trains."""
    if transfer in modes or "/" in transfer or os.path.exists(transfer):
        return
    import difflib

    close = difflib.get_close_matches(transfer, modes, n=1, cutoff=0.6)
    if close:
        raise ValueError(
            f"--transfer '{transfer}' is neither task, retrieval nor random, nor a folder or Hub "
            f"dataset id (owner/name); did you mean {close[0]}?"
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
    student_crop_pct: float | None = field(
        default=None,
        metadata={"help": "A timm student's eval crop (0, 1]; 1: none."},
    )
    distill_epochs: float = field(
        default=50.0, metadata={"help": "Epochs over the transfer set (not from the paper)."}
    )
    distill_learning_rate: float = field(default=1e-3, metadata={"help": "Distillation learning rate."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of KD."})
    distill_loss: str = distill_loss_field()
    teacher_cache_views: int = field(
        default=0,
        metadata={
            "help": "0: the teacher runs at every step. K > 0: it runs once on K views per "
            "transfer image, stored and replayed (docs/performance.md)."
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
        _check_student_name(self.student)
        from .models.families.transformers_segmentation import SEGMENTATION_STUDENTS

        if self.pretrained_student and self.student in SEGMENTATION_STUDENTS:
            raise ValueError(
                f"--pretrained_student: '{self.student}' is built from its configuration, with no weights; for "
                "pretrained weights give a Hub id or folder (e.g. nvidia/mit-b0 for SegFormer-B0's encoder)"
            )
        self.student = absolute_local_path(self.student)
        self.student_image_size = check_int(
            self.student_image_size, "--student_image_size", minimum=8, optional=True
        )
        self.student_crop_pct = check_number(
            self.student_crop_pct, "--student_crop_pct", above=0, maximum=1, optional=True
        )
        self._check_timm_only_flags()
        self.distill_epochs = check_number(self.distill_epochs, "--distill_epochs", above=0)
        self.distill_learning_rate = check_number(
            self.distill_learning_rate, "--distill_learning_rate", above=0
        )
        self.temperature = check_number(self.temperature, "--temperature", above=0)
        self.teacher_cache_views = check_int(self.teacher_cache_views, "--teacher_cache_views", minimum=0)
        self.teacher_cache_top_k = check_int(
            self.teacher_cache_top_k, "--teacher_cache_top_k", minimum=1, optional=True
        )
        self.finetune_epochs = check_number(self.finetune_epochs, "--finetune_epochs", above=0)
        self.finetune_learning_rate = check_number(
            self.finetune_learning_rate, "--finetune_learning_rate", above=0
        )
        if self.teacher_cache_top_k is not None and not self.teacher_cache_views:
            raise ValueError(
                "--teacher_cache_top_k applies to a teacher cache: give --teacher_cache_views K too"
            )
        if self.teacher_cache_views and self.distill_loss.startswith("feature_"):
            raise ValueError(
                f"--distill_loss {self.distill_loss} matches the teacher's features, which a teacher cache "
                "does not store: use --teacher_cache_views 0"
            )

    def _check_timm_only_flags(self) -> None:
        """``--student_image_size`` sets a timm folder's input size and records a segmentation
        student's; ``--student_crop_pct`` is a timm student's evaluation crop. Other students take
        both from their image processor."""
        from .models.families.transformers_segmentation import SEGMENTATION_STUDENTS

        if self.student_crop_pct is not None and self.student in SEGMENTATION_STUDENTS:
            raise ValueError(
                f"--student_crop_pct applies to timm students; '{self.student}' is a semantic-segmentation "
                "student, which resizes the whole image without a crop: leave it out"
            )
        given = [f for f in ("student_image_size", "student_crop_pct") if getattr(self, f) is not None]
        if not given or not os.path.isfile(os.path.join(self.student, "config.json")):
            return
        with open(os.path.join(self.student, "config.json"), encoding="utf-8") as file:
            saved = json.load(file)
        model_type = saved.get("model_type")
        segmentation = any(a.endswith("ForSemanticSegmentation") for a in saved.get("architectures") or ())
        for flag in given:
            if model_type != "timm_wrapper" and not (segmentation and flag == "student_image_size"):
                what = "size" if flag == "student_image_size" else "crop"
                raise ValueError(
                    f"--{flag} applies to timm students; '{self.student}' is a {model_type} model: "
                    f"leave it out (its image processor sets the {what})"
                )


def _check_student_name(name: str) -> None:
    """``--student``: a timm architecture, a Hub id, a folder, or a segmentation student's short name
    (``segformer-b0``; whether it fits the task's type is checked when the run loads the task, before
    the first stage). A name close to a segmentation student's is a typo of it."""
    from .models.families.transformers_segmentation import SEGMENTATION_STUDENTS

    if name in SEGMENTATION_STUDENTS:
        return
    try:
        check_model_source(name, "--student", timm_architectures=True)
    except ValueError as err:
        import difflib

        close = difflib.get_close_matches(name, list(SEGMENTATION_STUDENTS), n=1, cutoff=0.75)
        if close:
            raise ValueError(
                f"--student: unknown model '{name}'; did you mean {close[0]} (a semantic-segmentation student)?"
            ) from err
        raise


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
    export_formats: list[str] = field(
        default_factory=list,
        # the export stage (off when empty): parity and CPU latency measured, onnx/ published with the student
        metadata={"help": "Export the student to F: onnx, onnx-int8.", "metavar": "F"},
    )

    def __post_init__(self):
        if self.bf16 and self.fp16:
            raise ValueError("--bf16 and --fp16 are exclusive: choose one mixed precision")
        self.batch_size = check_int(self.batch_size, "--batch_size", minimum=1)
        self.seed = check_int(self.seed, "--seed", minimum=0, maximum=SEED_MAX)
        self.dataloader_num_workers = check_int(
            self.dataloader_num_workers, "--dataloader_num_workers", minimum=0
        )
        self.crop_min_scale = check_number(self.crop_min_scale, "--crop_min_scale", above=0, maximum=1)
        self.hflip_probability = check_number(
            self.hflip_probability, "--hflip_probability", minimum=0, maximum=1
        )
        self.logging_steps = check_int(self.logging_steps, "--logging_steps", minimum=1)
        self.report_to = check_report_to(self.report_to, "--report_to")
        for name in ("hub_model_id", "hub_dataset_id"):  # a bad repo id fails now, not after training
            value = getattr(self, name)
            if value is not None:
                from huggingface_hub.utils import HFValidationError, validate_repo_id

                try:
                    validate_repo_id(value)
                except HFValidationError as err:
                    raise ValueError(f"--{name} '{value}' is not a Hub repo id (owner/name): {err}") from err
        if isinstance(self.overwrite_stage, str):  # a config file may give one stage as a string
            self.overwrite_stage = [self.overwrite_stage]
        self.export_formats = _check_export_formats(self.export_formats)
        from .stages import available_stages  # the registry: stages a plugin registered count

        unknown = [s for s in self.overwrite_stage if s not in available_stages()]
        if unknown:
            raise ValueError(
                f"--overwrite_stage: unknown stage(s) {unknown}; stages are {', '.join(available_stages())}"
            )


def _check_export_formats(formats: list[str] | str) -> list[str]:
    """``--export_formats``: registered export formats, each once, with their packages installed, so
    that a typo or a missing ``onnxruntime`` fails now, not after the student is trained.

    Raises:
        ValueError: an unknown format (the registered ones are listed).
        ImportError: a format's package is missing (naming the extra to install).
    """
    from .export import OnnxFormat, available_export_formats
    from .export.base import _FORMATS
    from .export.onnx import _require_onnx

    names = [formats] if isinstance(formats, str) else list(formats)  # a config file may give one
    unknown = [name for name in names if name not in available_export_formats()]
    if unknown:
        raise ValueError(
            f"--export_formats: unknown format(s) {unknown}; registered: {', '.join(available_export_formats())}"
        )
    if any(isinstance(_FORMATS.get(name), OnnxFormat) for name in names):
        _require_onnx()
    return list(dict.fromkeys(names))


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
            import difflib

            hints = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in unknown
                for close in [difflib.get_close_matches(name, known, n=1, cutoff=0.6)]
            ]
            raise ValueError(f"unknown setting(s) {unknown}: {', '.join(hints)}; --help lists every flag")
        if values.get("dataset") is None:
            raise ValueError(
                "--dataset is required (the labelled task: a registry name, a folder or a Hub id)"
            )
        groups = []
        for group in ARGUMENT_GROUPS:
            annotations = _annotations(group)  # as written (HfArgumentParser rewrites fields' .type)
            mine = {k: v for k, v in values.items() if k in annotations}
            for name, value in mine.items():
                _check_type(name, value, annotations[name])
            groups.append(group(**mine))
        return cls.from_groups(groups)

    @classmethod
    def from_run(cls, output_dir: str | os.PathLike, **overrides: Any) -> PipelineConfig:
        """The settings of the run in ``output_dir`` (its ``config.json``), with ``overrides`` on top:
        how to continue, evaluate or extend a run. Raises ``FileNotFoundError`` if it has none."""
        saved = saved_run_settings(output_dir)
        if saved is None:
            raise FileNotFoundError(f"{os.path.join(os.fspath(output_dir), CONFIG_FILE)} does not exist")
        return cls.from_dict({**saved, **overrides, "output_dir": os.fspath(output_dir)})

    def to_dict(self) -> dict[str, Any]:
        """The settings as one flat mapping of flag names to values (what a config file holds)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            flat.update(dataclasses.asdict(getattr(self, f.name)))
        return flat

    def save(self, path: str | os.PathLike) -> None:
        """The run's settings as JSON (not the one-command settings, :data:`INVOCATION_SETTINGS`)."""
        settings = {k: v for k, v in self.to_dict().items() if k not in INVOCATION_SETTINGS}
        write_json_atomically(os.fspath(path), settings)


def _annotations(group: type) -> dict[str, str]:
    """A group's field annotations as written, its base classes' included (``TransferArguments``
    inherits the retrieval fields)."""
    merged: dict[str, str] = {}
    for cls in reversed(group.__mro__):
        merged.update(cls.__dict__.get("__annotations__", {}))
    return merged


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Text and switch settings from a config file (JSON/YAML keep their own types); numbers are
    checked by each group's ``__post_init__``. ``annotation`` is the field's annotation as written
    (a string: this module uses ``from __future__ import annotations``)."""
    if value is None and "None" in annotation:
        return
    kind = annotation.split(" |")[0]
    if isinstance(value, (list, tuple, dict)) and not kind.startswith("list"):
        raise TypeError(f"--{name} takes one value, got {type(value).__name__} {value!r}")
    expected = {"str": str, "bool": bool, "list[str]": (list, str)}.get(kind)
    if expected is not None and not isinstance(value, expected):
        raise TypeError(
            f"--{name} must be a {annotation.split(' |')[0]}, got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise TypeError(f"--{name} must be a list of strings, got {value!r}")


#: A run directory's record of its settings, written when a command starts its stages.
CONFIG_FILE = "config.json"


def saved_run_settings(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings recorded in ``<output_dir>/config.json`` (without one-command settings), or
    ``None`` when the folder holds no run. A file that is not a JSON object is an error naming it."""
    path = os.path.join(os.fspath(output_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}): repair or remove it") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path} does not hold a mapping of settings")
    return {k: v for k, v in values.items() if k not in INVOCATION_SETTINGS}


def stage_settings(config: PipelineConfig, stage: str) -> dict[str, Any]:
    """The settings ``stage``'s result depends on, by flag name (:meth:`Stage.settings
    <hf_task_distill.stages.Stage.settings>`): part of the stage's fingerprint, and what a rerun may
    not change in a finished stage without ``--overwrite_stage``.

    Raises:
        ValueError: no stage is called ``stage``.
    """
    from .stages import get_stage

    return get_stage(stage).settings(config)


def stage_upstream(config: PipelineConfig, stage: str) -> tuple[str, ...]:
    """The stages whose results ``stage`` reads (redoing one of them redoes ``stage``)."""
    from .stages import get_stage

    return get_stage(stage).upstream(config)
