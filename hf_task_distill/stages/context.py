"""What every stage reads from a run: its configuration, the labelled task, upstream results, and
the shared ways of building models, views and training arguments."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from ..options import TRANSFER_MODES
from .base import StageNotReady, available_stages

if TYPE_CHECKING:
    from ..ledger import ComputeLedger

__all__ = [
    "LOCAL_FOLDER",
    "TASK_DATA",
    "TRANSFER_DATA",
    "TRANSFER_MODES",
    "RunContext",
    "check_models_reachable",
    "check_student_fits_task",
    "checkpoint_epoch",
    "loading",
    "resume_point",
    "train_resuming",
]

logger = logging.getLogger("hf_task_distill.pipeline")

#: Inputs that fingerprint data, not settings: a change means the files changed, not a flag.
TASK_DATA, TRANSFER_DATA = "task_data", "transfer_data"
#: How a stage's inputs name a local data folder: by its fingerprint (TASK_DATA, TRANSFER_DATA), not
#: its path, so a run and its data moved or reached by another path continue (second newcomer try).
LOCAL_FOLDER = "a local folder (compared by its contents)"


@contextlib.contextmanager
def loading(what: str, name: str):
    """Name the model or dataset in a loading error (the Hub's own message often does not).

    Raises:
        OSError: ``cannot load the <what> '<name>': <why>`` (why the Hub was unreachable, if it was).
    """
    from ..sources import hub_unreachable, is_local_path

    try:
        yield
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        why = None if is_local_path(name) else hub_unreachable(err)
        raise OSError(f"cannot load the {what} '{name}': {why or first}") from err


def checkpoint_epoch(checkpoint: str | None) -> float | None:
    """The epoch a Trainer checkpoint folder was written at (``None`` for no checkpoint)."""
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f).get("epoch")


def resume_point(checkpoints: str) -> tuple[str | None, float | None]:
    """The newest complete checkpoint in ``checkpoints`` (or ``None``) and its epoch, logged when there
    is one (read before training: the Trainer rotates old checkpoints away)."""
    from ..checkpoints import last_complete_checkpoint

    last = last_complete_checkpoint(checkpoints)
    resumed_at = checkpoint_epoch(last)
    if last is not None:
        logger.info("resuming from %s (epoch %.2f)", os.path.basename(last), resumed_at or 0.0)
    return last, resumed_at


def train_resuming(trainer, checkpoints: str, directory: str) -> tuple[str, str | None, float | None]:
    """Train from the newest complete checkpoint in ``checkpoints`` (if any); save to ``<directory>/model``.

    Returns:
        The model folder, the checkpoint resumed from (or ``None``) and its epoch (read before
        training: the Trainer rotates old checkpoints away).
    """
    last, resumed_at = resume_point(checkpoints)
    trainer.train(resume_from_checkpoint=last)
    model_dir = os.path.join(directory, "model")
    trainer.save_model(model_dir)
    return model_dir, last, resumed_at


def check_models_reachable(config, stages: list[str]) -> None:
    """Before the first stage runs: the models ``stages`` will load by name (a student or retrieval
    encoder given by Hub id, a timm student's pretrained weights; :meth:`Stage.models_needed`) can be
    reached, so that a typo or a missing network fails now, not after the teacher has been finetuned.

    Raises:
        OSError: ``cannot load the <what> '<name>': <why>``.
    """
    from transformers import AutoConfig

    from ..sources import is_local_path, resolve_model_source
    from .base import get_stage

    wanted = [model for name in stages for model in get_stage(name).models_needed(config)]
    for what, name in wanted:
        source = resolve_model_source(name)
        if is_local_path(source):
            continue  # checked when the settings were read
        with loading(what, name):
            if "/" in source:
                AutoConfig.from_pretrained(source, trust_remote_code=config.teacher.trust_remote_code)
            elif config.student.pretrained_student and what == "student":
                _timm_weights_reachable(source)


def check_student_fits_task(config, task) -> None:
    """``--student`` builds a model of the task's type: a segmentation student's short name
    (``segformer-b0``) for a segmentation task only, and for a segmentation task a short name, folder
    or Hub id of a segmentation model. Checked when the run loads its task, before the first stage.

    Raises:
        ValueError: naming ``--student``, the task and its type.
    """
    from ..models.families.transformers_segmentation import (
        SEGMENTATION_STUDENTS,
        check_segmentation_student,
    )

    student = config.student.student
    if task.task_type == "image-segmentation":
        try:
            check_segmentation_student(student, "--student")
        except ValueError as err:
            found = " (a mask column)" if config.task.task_type is None else ""
            raise ValueError(f"the task '{task.name}' is image-segmentation{found}: {err}") from err
    elif student in SEGMENTATION_STUDENTS:
        raise ValueError(
            f"--student {student} is a semantic-segmentation student, but the task '{task.name}' is "
            f"{task.task_type} (no mask column found): give a classifier (a timm architecture or Hub id), "
            "or --task_type image-segmentation for a dataset of masks"
        )


def _timm_weights_reachable(name: str) -> None:
    """Fetch (or find in the cache) the config file next to a timm model's pretrained weights."""
    import timm
    from huggingface_hub import hf_hub_download

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if hub_id:
        hf_hub_download(hub_id, "config.json")


def _with_label_budget(task, cfg):
    """``task`` with the label budget of ``cfg`` (the task's flags) applied: ``--images`` (any task
    type), ``--per_class``/``--fraction`` (classification), or none.

    Raises:
        ValueError: naming the flag: more images than the training split holds, or a per-class budget
            for a task whose images have no single class (segmentation).
    """
    if cfg.images is not None:
        if cfg.images > len(task["train"]):
            raise ValueError(
                f"--images {cfg.images}: the training split of '{task.name}' has {len(task['train'])} images"
            )
        return task.with_label_budget(images=cfg.images, seed=cfg.budget_seed)
    if cfg.per_class is None and cfg.fraction is None:
        return task
    if task.task_type != "image-classification":
        flag = "--per_class" if cfg.per_class is not None else "--fraction"
        raise ValueError(
            f"{flag}: the task '{task.name}' is {task.task_type}, whose images have no single class "
            "to draw a budget per class by: give --images N (labelled images in all)"
        )
    return task.with_label_budget(per_class=cfg.per_class, fraction=cfg.fraction, seed=cfg.budget_seed)


def _listed(names, limit: int = 8) -> str:
    if isinstance(names, str):
        return names
    return ", ".join(map(str, names[:limit])) + (", ..." if len(names) > limit else "")


class RunContext:
    """A run as its stages see it: ``config``, ``task``, the finished stages' ``manifest`` s, and the
    models, views and training arguments every stage builds the same way."""

    def __init__(self, config, folders, state):
        self.config = config
        self.folders = folders
        self.state = state
        self.run_dir = folders.path
        self._task = None
        self._unbudgeted = None
        self._full_train = None
        self._task_fingerprints: dict[tuple[str, ...], str] = {}
        self._transfer_fingerprint: str | None = None

    # -- the labelled task ---------------------------------------------------------------------
    @property
    def task(self):
        """The labelled task with its label budget applied (``full_train`` keeps every image)."""
        if self._task is None:
            self._task = self._load_task()
        return self._task

    def _load_task(self):
        from ..data import load_target_task

        cfg = self.config.task
        task = load_target_task(cfg.dataset, task_type=cfg.task_type)
        check_student_fits_task(self.config, task)
        if not any(split in task.splits for split in ("test", "validation")):
            task = task.with_test_split(cfg.test_fraction, seed=cfg.budget_seed)
            logger.info(
                "task '%s' has no test or validation split: %d images (%.0f%% of %s) are held out "
                "as its test split (--test_fraction)",
                task.name,
                len(task["test"]),
                100 * cfg.test_fraction,
                "each class" if task.task_type == "image-classification" else "the images",
            )
        self._unbudgeted = task
        self._full_train = task["train"]
        return _with_label_budget(task, cfg)

    @property
    def full_train(self):
        """The task's whole training split, before the label budget."""
        self.task  # noqa: B018 - loads both
        return self._full_train

    @property
    def unbudgeted_task(self):
        """The task before its label budget (every split whole)."""
        self.task  # noqa: B018 - loads both
        return self._unbudgeted

    @property
    def eval_split(self) -> str:
        """The split models are evaluated on: ``test``, or ``validation`` when there is no test split."""
        return "test" if "test" in self.task.splits else "validation"

    def task_fingerprint_of(self, splits: list[str]) -> str:
        """The identity of the task's ``splits``: its class names, and per split its size, labels and a
        sample of its images (``data.fingerprints.task_fingerprint``); before any label budget."""
        key = tuple(splits)
        if key not in self._task_fingerprints:
            from ..data.fingerprints import task_fingerprint

            self._task_fingerprints[key] = task_fingerprint(self.unbudgeted_task, splits)
        return self._task_fingerprints[key]

    def transfer_fingerprint(self) -> str:
        """The identity of a transfer set given as a dataset (``--transfer`` a Hub id or folder),
        computed once per run."""
        if self._transfer_fingerprint is not None:
            return self._transfer_fingerprint
        from ..data import load_image_dataset
        from ..data.fingerprints import dataset_fingerprint
        from ..data.loading import find_image_column

        dataset = load_image_dataset(self.config.transfer.transfer)
        self._transfer_fingerprint = dataset_fingerprint(
            dataset, find_image_column(dataset.features) or "image"
        )
        return self._transfer_fingerprint

    def stage_settings(self, name: str) -> dict[str, Any]:
        """A stage's settings (:meth:`Stage.settings`) and a fingerprint of the data they name: an
        image folder whose images or classes change is not the same task; a folder is compared by its
        contents, wherever it is now."""
        from ..sources import is_local_path
        from .base import get_stage

        settings = get_stage(name).settings(self.config)
        if "dataset" in settings:
            settings[TASK_DATA] = self.task_fingerprint_of(self.splits_read_by(name))
            if is_local_path(settings["dataset"]):
                settings["dataset"] = LOCAL_FOLDER
        if settings.get("transfer") not in (None, *TRANSFER_MODES):
            settings[TRANSFER_DATA] = self.transfer_fingerprint()
            if is_local_path(settings["transfer"]):
                settings["transfer"] = LOCAL_FOLDER
        return settings

    def splits_read_by(self, stage: str) -> list[str]:
        """The task's splits a stage's result depends on (:meth:`Stage.task_splits`; all by default)."""
        from .base import get_stage

        available = self.unbudgeted_task.splits
        wanted = get_stage(stage).task_splits(self.config, self.eval_split)
        return sorted(set(wanted or available) & set(available))

    # -- finished stages -----------------------------------------------------------------------
    def manifest(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest (output paths resolved), or ``None`` when it is missing or unreadable
        (the stage is then not complete)."""
        return self.folders.manifest(name)

    def outputs(self, name: str) -> dict[str, Any]:
        """A completed stage's outputs.

        Raises:
            StageNotReady: the stage has not completed in this run.
        """
        manifest = self.manifest(name)
        if manifest is None:
            raise StageNotReady(f"stage '{name}' has not completed in {self.run_dir}: run it first")
        return manifest["outputs"]

    def ledger(self) -> ComputeLedger:
        """Every completed stage's compute, in stage order."""
        from ..ledger import ComputeLedger

        total = ComputeLedger()
        for name in available_stages():
            manifest = self.manifest(name)
            if manifest is not None:
                total.extend(ComputeLedger.from_dict(manifest["ledger"]))
        return total

    # -- models and data -----------------------------------------------------------------------
    @property
    def teacher_name(self) -> str:
        """The teacher as a person reads it in ledgers and logs: its source, and ``, finetuned`` when it
        is the run's own finetuned teacher (not a folder path in the run)."""
        cfg = self.config.teacher
        return cfg.teacher if cfg.teacher_strategy == "none" else f"{cfg.teacher}, finetuned"

    def teacher_path(self) -> str:
        """The finetuned teacher's folder, or the source of a teacher used as it is (strategy none)."""
        outputs = (self.manifest("teacher") or {}).get("outputs") or {}
        return outputs.get("model") or outputs.get("source") or self.config.teacher.teacher

    def transfer_dataset(self):
        """The transfer set the ``transfer`` stage chose, as a ``datasets.Dataset`` of images.

        Raises:
            StageNotReady: the ``transfer`` stage has not completed.
        """
        outputs = self.outputs("transfer")
        if outputs["kind"] in ("retrieval", "random"):
            from datasets import load_from_disk

            return load_from_disk(outputs["path"])
        if outputs["kind"] == "dataset":
            from ..data import load_image_dataset

            return load_image_dataset(outputs["source"])
        return self.full_train.remove_columns([self.task.label_column])

    def training_args(self, cls, output_dir: str, **kwargs):
        """``cls`` (a ``TrainingArguments`` subclass) with the run's shared training settings."""
        from ..devices import cpu_ranks_need_use_cpu, has_accelerator

        run = self.config.run
        return cls(
            output_dir=output_dir,
            use_cpu=cpu_ranks_need_use_cpu(False),
            per_device_train_batch_size=run.batch_size,
            per_device_eval_batch_size=run.batch_size,
            seed=run.seed,
            bf16=run.bf16,
            fp16=run.fp16,
            dataloader_num_workers=run.dataloader_num_workers,
            dataloader_pin_memory=has_accelerator(),  # torch warns on every DataLoader otherwise
            report_to=run.report_to,
            logging_steps=run.logging_steps,
            save_total_limit=1,
            **kwargs,
        )

    @property
    def augmentation(self):
        """The random crop and flip every training stage shares (``--crop_min_scale``, ``--hflip_probability``)."""
        from ..data import ViewAugmentation

        run = self.config.run
        return ViewAugmentation(scale=(run.crop_min_scale, 1.0), hflip=run.hflip_probability)

    def new_student(self, labels: list[str] | None = None):
        """A new student for ``labels`` (default: the task's classes, in the task's order), seeded by
        ``--seed`` so that a new head (or a whole new student) starts the same in every rerun."""
        from transformers import set_seed

        from ..models import create_student

        cfg = self.config.student
        set_seed(self.config.run.seed)
        task_type = self.task.task_type
        return create_student(
            cfg.student,
            labels or self.task.label_names,
            pretrained=cfg.pretrained_student,
            image_size=cfg.student_image_size,
            crop_pct=cfg.student_crop_pct,
            **({} if task_type == "image-classification" else {"task_type": task_type}),
        )

    @property
    def distillation_uses_teacher_predictions(self) -> bool:
        """False for a task-agnostic (feature) loss: the teacher's classes then do not matter."""
        from ..losses import build_loss

        return build_loss(self.config.student.distill_loss).requires_teacher_logits

    def teacher_classes(self, config) -> list[str]:
        """The classes a teacher (its ``config``) predicts, in its output order: exactly the task's, in
        any order for classification (a student distilled from it gets these; labels are matched to
        them by name), in the task's order for a task whose targets are masks of class ids.

        Raises:
            ValueError: the teacher predicts other or more classes than the task has, or a segmentation
                task's classes in another order.
        """
        from ..models.labels import label_names_of

        names, task_names = label_names_of(config), list(self.task.label_names)
        same = (
            sorted(names) == sorted(task_names) if names is not None else config.num_labels == len(task_names)
        )
        if not same:
            shown = names if names is not None else f"{config.num_labels} unnamed classes"
            raise ValueError(
                f"the teacher '{self.config.teacher.teacher}' predicts {config.num_labels} classes "
                f"({_listed(shown)}), the task '{self.task.name}' has {len(task_names)} ({_listed(task_names)}): "
                "a teacher used as it is (--teacher_strategy none) must predict the task's classes; "
                "finetune it on the task instead (--teacher_strategy linear, full, lp-ft or lora)"
            )
        if names is not None and names != task_names and self.task.task_type != "image-classification":
            # a mask holds class ids, not names: the student (which takes the teacher's order) would
            # learn the finetune stage's masks under the wrong names, and be scored against them so
            raise ValueError(
                f"the teacher '{self.config.teacher.teacher}' predicts the task's classes in another order "
                f"({_listed(names)}) than the task '{self.task.name}' numbers them in its masks "
                f"({_listed(task_names)}): a {self.task.task_type} teacher used as it is (--teacher_strategy "
                "none) must list them in the masks' order; finetune it on the task instead (--teacher_strategy "
                "linear, full, lp-ft or lora)"
            )
        return names or task_names
