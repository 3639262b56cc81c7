"""The three stages of task-oriented knowledge transfer, chained in a run directory.

teacher (finetune the VFM on the labels) -> transfer (the unlabelled images to distil on) -> distill
(match the teacher on them) -> finetune (the student on the labels) -> evaluate -> publish; plus an
optional baseline (the student on the labels alone) for comparison.

Each stage writes into ``<run>/<stage>/`` and finishes by writing ``manifest.json`` (atomically,
last): its inputs' fingerprint, its outputs, its compute-ledger entries and wall time. A rerun skips
a stage whose manifest is there with the same fingerprint; a stage's inputs include the ids of the
upstream runs it used, so redoing a stage (``overwrite_stage``) redoes what depends on it. A stage
killed part-way has no manifest and is run again; its Trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from typing import Any

import numpy as np

from .checkpoints import last_complete_checkpoint
from .compute import ComputeLedger, LedgerEntry, Stopwatch, count_flops_per_image, describe_device
from .config import RECOMPUTED_FREELY, STAGES, PipelineConfig, stage_settings, stage_upstream
from .devices import cpu_ranks_need_use_cpu, has_accelerator, process_state
from .files import write_json_atomically
from .run_directory import NOT_HASHED, RunDirectory, RunInUse
from .sources import is_local_path

__all__ = ["Pipeline", "RunInUse", "StageNotReady", "StageSettingsChanged"]

logger = logging.getLogger(__name__)

#: Kept for callers of earlier versions: see :mod:`hf_task_distill.run_directory`.
_NOT_HASHED = NOT_HASHED
#: Inputs that fingerprint data, not settings: a change means the files changed, not a flag.
TASK_DATA, TRANSFER_DATA = "task_data", "transfer_data"
#: How a stage's inputs name a local data folder: by its fingerprint (TASK_DATA, TRANSFER_DATA), not
#: its path, so a run and its data moved or reached by another path continue (second newcomer try).
LOCAL_FOLDER = "a local folder (compared by its contents)"
_DATA_INPUTS = {
    TASK_DATA: "task's data (its images, labels or classes)",
    TRANSFER_DATA: "transfer set's images",
}


class StageNotReady(RuntimeError):
    """A stage was asked for before the stage it depends on has completed."""


class StageSettingsChanged(ValueError):
    """A command asked for settings other than those a finished stage was computed with.

    ``changes`` lists ``(stage, setting, recorded value, requested value)``. Nothing was changed:
    the finished stages stay as they are until ``overwrite_stage`` asks for them to be redone.
    """

    def __init__(self, run_dir: str, changes: list[tuple[str, str, Any, Any]]):
        self.changes = changes
        stages = list(dict.fromkeys(stage for stage, *_ in changes))
        settings = [(stage, k, old, new) for stage, k, old, new in changes if k not in _DATA_INPUTS]
        data = [(stage, k) for stage, k, *_ in changes if k in _DATA_INPUTS]
        listed = [
            f"stage {stage} finished with {setting}={old!r}, this command asks for {new!r}"
            for stage, setting, old, new in settings
        ]
        by_data: dict[str, list[str]] = {}
        for stage, k in data:  # one clause per kind of data, naming every stage it touches
            by_data.setdefault(k, []).append(stage)
        listed += [
            f"the {_DATA_INPUTS[k]} changed since stage{'s' if len(names) > 1 else ''} {', '.join(names)} finished"
            for k, names in by_data.items()
        ]
        advice = []
        if settings:
            keep = " ".join(dict.fromkeys(f"--{setting} {old}" for _, setting, old, _ in settings))
            advice.append(f"to keep the finished result, give {keep}")
        if data:
            advice.append("to keep it, put the data back as it was")
        advice.append(f"to redo it and the stages after it, add --overwrite_stage {' '.join(stages)}")
        super().__init__(
            f"{'; '.join(listed)} (run {run_dir}; its settings are its config.json with the command's flags on "
            f"top). Nothing was changed. {'; '.join(advice)[:1].upper()}{'; '.join(advice)[1:]}; or use another "
            "--output_dir"
        )


def _fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setting_changes(recorded: dict[str, Any], current: dict[str, Any], upstream: tuple[str, ...]):
    """``(setting, recorded, current)`` for every setting (not an upstream run id) that differs."""
    names = [k for k in dict.fromkeys([*current, *recorded]) if k not in upstream]
    missing = "(not recorded)"
    return [
        (name, recorded.get(name, missing), current.get(name, missing))
        for name in names
        if _canonical(recorded.get(name, missing)) != _canonical(current.get(name, missing))
    ]


def _listed(names, limit: int = 8) -> str:
    if isinstance(names, str):
        return names
    return ", ".join(map(str, names[:limit])) + (", ..." if len(names) > limit else "")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@contextlib.contextmanager
def _loading(what: str, name: str):
    """Name the model or dataset in a loading error (the Hub's own message often does not)."""
    from .sources import hub_unreachable, is_local_path

    try:
        yield
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        why = None if is_local_path(name) else hub_unreachable(err)
        raise OSError(f"cannot load the {what} '{name}': {why or first}") from err


def _train_resuming(trainer, checkpoints: str, directory: str) -> tuple[str, str | None, float | None]:
    """Train from the newest complete checkpoint (if any), save to ``<directory>/model``.

    Returns the model folder, the checkpoint resumed from and its epoch (read before training:
    the Trainer rotates old checkpoints away).
    """
    last = last_complete_checkpoint(checkpoints)
    resumed_at = _checkpoint_epoch(last)
    if last is not None:
        logger.info("resuming from %s (epoch %.2f)", os.path.basename(last), resumed_at or 0.0)
    trainer.train(resume_from_checkpoint=last)
    model_dir = os.path.join(directory, "model")
    trainer.save_model(model_dir)
    return model_dir, last, resumed_at


def _timm_weights_reachable(name: str) -> None:
    """Fetch (or find in the cache) the config file next to a timm model's pretrained weights."""
    import timm
    from huggingface_hub import hf_hub_download

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if hub_id:
        hf_hub_download(hub_id, "config.json")


def _checkpoint_epoch(checkpoint: str | None) -> float | None:
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f).get("epoch")


class Pipeline:
    """Run the stages of :class:`~hf_task_distill.config.PipelineConfig` in ``config.run.output_dir``."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.run_dir = os.path.abspath(config.run.output_dir)
        self.state = process_state()
        self.folders = RunDirectory(self.run_dir, is_main_process=self.state.is_main_process)
        self._task = None
        self._unbudgeted = None
        self._task_fingerprints: dict[tuple[str, ...], str] = {}
        self._full_train = None
        self._redone: set[str] = set()

    # -- task ----------------------------------------------------------------------------------
    @property
    def task(self):
        """The labelled task with its label budget applied (``full_train`` keeps every image)."""
        if self._task is None:
            from .data import load_target_task

            cfg = self.config.task
            task = load_target_task(cfg.dataset)
            if not any(split in task.splits for split in ("test", "validation")):
                task = task.with_test_split(cfg.test_fraction, seed=cfg.budget_seed)
                logger.info(
                    "task '%s' has no test or validation split: %d images (%.0f%% of each class) are held out "
                    "as its test split (--test_fraction)",
                    task.name,
                    len(task["test"]),
                    100 * cfg.test_fraction,
                )
            self._unbudgeted = task
            self._full_train = task["train"]
            if cfg.per_class is not None or cfg.fraction is not None:
                task = task.with_label_budget(
                    per_class=cfg.per_class, fraction=cfg.fraction, seed=cfg.budget_seed
                )
            self._task = task
        return self._task

    @property
    def full_train(self):
        self.task  # noqa: B018 - loads both
        return self._full_train

    @property
    def eval_split(self) -> str:
        return "test" if "test" in self.task.splits else "validation"

    # -- stage bookkeeping -----------------------------------------------------------------------
    def stage_dir(self, name: str) -> str:
        return self.folders.stage_dir(name)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest (output paths resolved), or ``None`` when it is missing or unreadable
        (the stage is then not complete)."""
        return self.folders.manifest(name)

    def _changed_output(self, name: str, manifest: dict[str, Any]) -> str | None:
        return self.folders.changed_output(name, manifest)

    def _upstream(self, name: str) -> str:
        manifest = self.manifest(name)
        if manifest is None:
            raise StageNotReady(f"stage '{name}' has not completed in {self.run_dir}: run it first")
        return manifest["run_id"]

    def _inputs(self, name: str) -> dict[str, Any]:
        """What the stage's result depends on: its settings (by flag name) and the run id of each
        upstream stage it reads."""
        inputs = self._settings(name)
        for upstream in stage_upstream(self.config, name):
            inputs[upstream] = self._upstream(upstream)
        return inputs

    def _settings(self, name: str) -> dict[str, Any]:
        """The stage's settings (:func:`~hf_task_distill.config.stage_settings`) and a fingerprint of
        the data they name: an image folder whose images or classes change is not the same task."""
        if name not in STAGES:
            raise ValueError(f"unknown stage '{name}'; stages are {', '.join(STAGES)}")
        settings = stage_settings(self.config, name)
        if "dataset" in settings:
            settings[TASK_DATA] = self.task_fingerprint_of(self._splits_read_by(name))
            if is_local_path(settings["dataset"]):  # a folder is its contents, wherever it is now
                settings["dataset"] = LOCAL_FOLDER
        if settings.get("transfer") not in (None, "task", "retrieval", "random") and name == "transfer":
            settings[TRANSFER_DATA] = self._transfer_fingerprint()
            if is_local_path(settings["transfer"]):
                settings["transfer"] = LOCAL_FOLDER
        return settings

    def task_fingerprint_of(self, splits: list[str]) -> str:
        """The identity of the task's ``splits``: its class names, and per split its size, labels and a
        sample of its images (``data.fingerprints.task_fingerprint``); before any label budget."""
        key = tuple(splits)
        if key not in self._task_fingerprints:
            from .data.fingerprints import task_fingerprint

            self.task  # noqa: B018 - loads the splits
            self._task_fingerprints[key] = task_fingerprint(self._unbudgeted, splits)
        return self._task_fingerprints[key]

    def _splits_read_by(self, stage: str) -> list[str]:
        """The task's splits a stage's result depends on: a fixed test image must not redo training."""
        wanted = {
            "teacher": ("train", "validation"),  # validation: model selection
            "baseline": ("train",),
            "finetune": ("train",),
            "evaluate": (self.eval_split,),
        }.get(stage)
        if stage == "transfer":  # retrieval also reads validation and test, to keep their copies out
            wanted = (
                ("train",) if self.config.transfer.transfer == "task" else ("train", "validation", "test")
            )
        self.task  # noqa: B018 - loads the splits
        return sorted(set(wanted or self._unbudgeted.splits) & set(self._unbudgeted.splits))

    def _transfer_fingerprint(self) -> str:
        from .data import load_image_dataset
        from .data.fingerprints import dataset_fingerprint
        from .data.loading import find_image_column

        dataset = load_image_dataset(self.config.transfer.transfer)
        return dataset_fingerprint(dataset, find_image_column(dataset.features) or "image")

    def check_settings(self, stages) -> None:
        """Raise :class:`StageSettingsChanged` if any of ``stages`` is complete with other settings than
        the configuration's (and is not to be overwritten): before anything in the run is touched."""
        changes = []
        for name in stages:
            manifest = self.manifest(name)
            if manifest is None or name in self.config.run.overwrite_stage or name in RECOMPUTED_FREELY:
                continue
            current = self._settings(name)
            upstream = stage_upstream(self.config, name)
            for setting, old, new in _setting_changes(manifest.get("inputs", {}), current, upstream):
                changes.append((name, setting, old, new))
        if changes:
            raise StageSettingsChanged(self.run_dir, changes)

    def run(self, stages: tuple[str, ...] | list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run ``stages`` in order (default: all; ``baseline`` only if enabled), skipping completed ones.

        Raises :class:`StageSettingsChanged` before anything runs when a finished stage was computed
        with other settings and ``overwrite_stage`` does not name it.
        """
        if stages is None:
            stages = [s for s in STAGES if s != "baseline" or self.config.student.baseline]
        self.task  # noqa: B018 - a task that cannot be loaded fails here, before the run folder is written
        overwrite = self.config.run.overwrite_stage
        with self.folders.locked():
            for name in stages:
                self.folders.recover(name)
            self.state.wait_for_everyone()
            self.check_settings(stages)
            self._check_models_load([s for s in stages if self.manifest(s) is None or s in overwrite])
            os.makedirs(self.run_dir, exist_ok=True)
            config_path = os.path.join(self.run_dir, "config.json")
            # config.json holds the settings the finished stages have: a command that changes them
            # records them once its stages are done (a failed or interrupted redo leaves the old
            # ones, so a plain command afterwards continues the finished run); a first command
            # records them at once, so that a plain command continues it too
            if self.state.is_main_process and not os.path.isfile(config_path):
                self.config.save(config_path)
            results = {name: self.run_stage(name) for name in stages}
            if self.state.is_main_process:
                self.config.save(config_path)
            return results

    def _check_models_load(self, stages: list[str]) -> None:
        """Before the first stage runs: the models later stages will load from the Hub (a student or
        retrieval encoder given by Hub id, a timm student's pretrained weights) can be reached, so that
        a typo or a missing network fails now, not after the teacher has been finetuned."""
        from transformers import AutoConfig

        from .sources import is_local_path, resolve_model_source

        cfg = self.config
        wanted = []
        if {"distill", "baseline"} & set(stages):
            wanted.append(("student", cfg.student.student))
        if "transfer" in stages and cfg.transfer.transfer == "retrieval" and cfg.transfer.retrieval_encoder:
            wanted.append(("retrieval encoder", cfg.transfer.retrieval_encoder))
        for what, name in wanted:
            source = resolve_model_source(name)
            if is_local_path(source):
                continue  # checked when the settings were read
            with _loading(what, name):
                if "/" in source:
                    AutoConfig.from_pretrained(source, trust_remote_code=cfg.teacher.trust_remote_code)
                elif cfg.student.pretrained_student and what == "student":
                    _timm_weights_reachable(source)

    def _redo_reason(self, name: str, manifest: dict[str, Any], inputs: dict[str, Any]) -> str:
        """Why a complete stage whose fingerprint differs is redone, or raise if it may not be."""
        upstream = stage_upstream(self.config, name)
        changes = _setting_changes(manifest.get("inputs", {}), inputs, upstream)
        if changes and name not in RECOMPUTED_FREELY:
            raise StageSettingsChanged(self.run_dir, [(name, *change) for change in changes])
        redone = [u for u in upstream if manifest.get("inputs", {}).get(u) != inputs.get(u)]
        parts = [f"{setting} {old!r} -> {new!r}" for setting, old, new in changes]
        parts += [f"stage {u} was redone" for u in redone]
        return "its inputs changed: " + ", ".join(parts or ["(recorded by another version)"])

    def run_stage(self, name: str) -> dict[str, Any]:
        """Run one stage, or skip it when it is complete with the same inputs and intact outputs.

        A complete stage is only replaced when ``overwrite_stage`` names it, an upstream stage was
        redone, or (``evaluate``, ``publish``) its settings changed; the finished result stays in
        place until the new one is complete. Other setting changes raise :class:`StageSettingsChanged`.
        """
        self.folders.recover(name)
        self.state.wait_for_everyone()
        inputs = self._inputs(name)
        fingerprint = _fingerprint(inputs)
        manifest = self.manifest(name)
        overwrite = name in self.config.run.overwrite_stage and name not in self._redone
        reason, damaged = None, False
        if manifest is not None and not overwrite:
            if manifest.get("fingerprint") == fingerprint:
                changed = self._changed_output(name, manifest)
                if changed is None:
                    logger.info("stage %s: complete (%s), skipped", name, manifest["run_id"])
                    self.folders.drop_checkpoints(name)
                    if os.path.isdir(self.folders.redo_dir(name)):
                        logger.info(
                            "stage %s: %s holds an interrupted redo; the command that started it "
                            "resumes it (with --overwrite_stage %s), or delete the folder",
                            name,
                            self.folders.redo_dir(name),
                            name,
                        )
                    return manifest
                # its files were changed since: nothing there is worth keeping
                reason, damaged = f"its output {changed} is not what it wrote", True
            else:
                reason = self._redo_reason(name, manifest, inputs)
        elif manifest is not None:
            reason = "--overwrite_stage"
        # a finished result is kept until its replacement is complete; derived stages (evaluate,
        # publish: seconds of work, and publish's folders are what a failed push points the user at)
        # are rewritten in place
        replacing = manifest is not None and not damaged and name not in RECOMPUTED_FREELY
        # an attempt that started in the work folder and never finished (a finished stage rewritten in
        # place keeps its own started.json there: that one was not interrupted)
        interrupted = self.folders.started(self.folders.work_dir(name, replacing=replacing))
        if manifest is not None and not replacing:
            interrupted = {}
        if interrupted and interrupted.get("fingerprint") != fingerprint and not damaged:
            changes = _setting_changes(interrupted.get("inputs", {}), inputs, ())
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes) or "its inputs changed"
            logger.info(
                "stage %s: an interrupted attempt had other settings (%s): starting over", name, listed
            )
        self.state.wait_for_everyone()  # every process has decided before a folder changes
        directory, resumed = self.folders.begin(name, fingerprint, inputs, replacing=replacing, fresh=damaged)
        self.state.wait_for_everyone()
        if reason:
            kept = "; the finished result is kept until the new one is complete" if replacing else ""
            logger.info("stage %s: redoing, %s%s", name, reason, kept)
        logger.info("stage %s: %s", name, "resuming an interrupted run" if resumed else "starting")
        ledger = ComputeLedger()
        with Stopwatch() as watch:
            outputs = getattr(self, f"_stage_{name}")(directory, ledger)
        ledger.wall_s[name] = watch.seconds
        manifest = {
            "stage": name,
            "run_id": uuid.uuid4().hex[:12],
            "fingerprint": fingerprint,
            "inputs": inputs,
            "outputs": outputs,
            "ledger": ledger.as_dict(),
            "device": describe_device(),
            "num_processes": self.state.num_processes,
            "versions": _versions(),
        }
        self.state.wait_for_everyone()  # every process's outputs are on disk before they are hashed
        self.folders.complete(name, directory, manifest)
        self.state.wait_for_everyone()
        manifest = self.manifest(name)  # every process continues from what was written
        self._redone.add(name)
        logger.info("stage %s: done in %.1f s", name, watch.seconds)
        return manifest

    def ledger(self) -> ComputeLedger:
        """Every completed stage's compute, in stage order."""
        total = ComputeLedger()
        for name in STAGES:
            manifest = self.manifest(name)
            if manifest is not None:
                total.extend(ComputeLedger.from_dict(manifest["ledger"]))
        return total

    # -- models and data -------------------------------------------------------------------------
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
        outputs = (self.manifest("transfer") or {}).get("outputs")
        if outputs is None:
            raise StageNotReady(f"stage 'transfer' has not completed in {self.run_dir}: run it first")
        if outputs["kind"] in ("retrieval", "random"):
            from datasets import load_from_disk

            return load_from_disk(outputs["path"])
        if outputs["kind"] == "dataset":
            from .data import load_image_dataset

            return load_image_dataset(outputs["source"])
        return self.full_train.remove_columns([self.task.label_column])

    def _training_args(self, cls, output_dir: str, **kwargs):
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
        from .data import ViewAugmentation

        run = self.config.run
        return ViewAugmentation(scale=(run.crop_min_scale, 1.0), hflip=run.hflip_probability)

    def _new_student(self, labels: list[str] | None = None):
        """A new student for ``labels`` (default: the task's classes, in the task's order)."""
        from transformers import set_seed

        from .models import create_student

        cfg = self.config.student
        set_seed(self.config.run.seed)  # a new head (or a whole new student) starts the same in every rerun
        return create_student(
            cfg.student,
            labels or self.task.label_names,
            pretrained=cfg.pretrained_student,
            image_size=cfg.student_image_size,
        )

    @property
    def _distillation_uses_teacher_predictions(self) -> bool:
        """False for a task-agnostic (feature) loss: the teacher's classes then do not matter."""
        from .losses import build_loss

        return build_loss(self.config.student.distill_loss).requires_teacher_logits

    def _teacher_classes(self, config) -> list[str]:
        """The classes a teacher predicts, in its output order: exactly the task's, in any order (a
        student distilled from it gets these; labels are matched to them by name when it meets the
        task). A teacher with other or more classes would give a student of another task."""
        from .models.labels import label_names_of

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
        return names or task_names

    # -- stages ----------------------------------------------------------------------------------
    def _stage_teacher(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from .teacher import TeacherFinetuner, TeacherFinetuningArguments

        cfg = self.config.teacher
        if cfg.teacher_strategy == "none":  # used as it is: its classes must be the task's
            from transformers import AutoConfig

            from .sources import resolve_model_source

            with _loading("teacher", cfg.teacher):
                config = AutoConfig.from_pretrained(
                    resolve_model_source(cfg.teacher), trust_remote_code=cfg.trust_remote_code
                )
            if self._distillation_uses_teacher_predictions:
                self._teacher_classes(config)
            return {"source": cfg.teacher, "strategy": "none"}
        args = self._training_args(
            TeacherFinetuningArguments,
            os.path.join(directory, "checkpoints"),
            strategy=cfg.teacher_strategy,
            num_train_epochs=cfg.teacher_epochs,
            learning_rate=cfg.teacher_learning_rate,
            probe_epochs=cfg.teacher_probe_epochs,
            layer_decay=cfg.teacher_layer_decay,
            crop_min_scale=self.config.run.crop_min_scale,
            hflip_probability=self.config.run.hflip_probability,
        )
        finetuner = TeacherFinetuner(cfg.teacher, self.task, args, trust_remote_code=cfg.trust_remote_code)
        with _loading("teacher", cfg.teacher):
            finetuner.processor  # noqa: B018 - fails early, with the name, if the model cannot be found
        last = last_complete_checkpoint(args.output_dir)
        resumed_at = _checkpoint_epoch(last)
        if last is not None:
            logger.info("resuming from %s (epoch %.2f)", os.path.basename(last), resumed_at or 0.0)
        result = finetuner.train(resume_from_checkpoint=last)
        model_dir = os.path.join(directory, "model")
        if self.state.is_main_process:
            finetuner.save(model_dir)
        model, size = result.model, finetuner.spec.size
        forward = count_flops_per_image(model, size)
        probe_images = 0
        if cfg.teacher_strategy in ("linear", "lp-ft"):
            probe_images = len(finetuner.train_split) * args.probe_views + len(finetuner.validation_split)
        trained = 0
        if finetuner.trainer is not None:
            trained = round(finetuner.trainer.state.epoch * len(finetuner.train_split))
            evaluated = round(finetuner.trainer.state.epoch) * len(finetuner.validation_split)
            ledger.add(
                LedgerEntry(
                    "teacher",
                    "teacher training",
                    cfg.teacher,
                    trained,
                    count_flops_per_image(model, size, training=True),
                    describe_device(),
                )
            )
            probe_images += evaluated
        ledger.add(
            LedgerEntry(
                "teacher",
                "teacher forward (probe features, validation)"
                if cfg.teacher_strategy in ("linear", "lp-ft")
                else "teacher forward (validation)",
                cfg.teacher,
                probe_images,
                forward,
                describe_device(),
            )
        )
        return {
            "model": model_dir,
            "strategy": result.strategy,
            "metrics": result.metrics,
            "validation_source": result.validation_source,
            "resumed_from": last,
            "resumed_at_epoch": resumed_at,
        }

    def _stage_transfer(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        cfg = self.config.transfer
        if cfg.transfer == "task":
            return {"kind": "task", "rows": len(self.full_train)}
        if cfg.transfer == "random":
            return self._random_transfer_set(directory)
        if cfg.transfer != "retrieval":
            from .data import load_image_dataset

            return {"kind": "dataset", "source": cfg.transfer, "rows": len(load_image_dataset(cfg.transfer))}
        from .hub.cards import TransferSetCardData
        from .retrieval import (
            ImageEncoder,
            RetrievalTransferSetBuilder,
            contact_sheet,
            load_pool,
            save_transfer_set,
        )

        encoder_name = cfg.retrieval_encoder or self.config.teacher.teacher
        with _loading("retrieval encoder", encoder_name):
            encoder = ImageEncoder.from_pretrained(
                encoder_name, trust_remote_code=self.config.teacher.trust_remote_code
            )
        builder = RetrievalTransferSetBuilder(
            encoder,
            per_query_k=cfg.per_query_k,
            budget=cfg.transfer_budget,
            leakage_threshold=cfg.leakage_threshold,
            batch_size=self.config.run.batch_size,
            seed=self.config.run.seed,
        )
        pool = load_pool(cfg.pool, streaming=cfg.pool_streaming)
        heldout = [self.task[s] for s in ("validation", "test") if s in self.task.splits]
        transfer, stats = builder.build(
            pool,
            self.task["train"],
            heldout=heldout,
            embeddings_dir=os.path.join(directory, "embeddings"),
            pool_embeddings_dir=cfg.pool_embeddings_dir,
        )
        path = os.path.join(directory, "data")
        if self.state.is_main_process:
            card = TransferSetCardData.from_build(
                builder,
                transfer,
                pool,
                name=f"{self.task.name}-transfer-set",
                task_name=self.task.name,
                pool_name=cfg.pool,
            )
            save_transfer_set(transfer, path, card, contact_sheet(self.task["train"], transfer))
        embedded = stats.pool_embedded + stats.queries + sum(len(h) for h in heldout)
        ledger.add(
            LedgerEntry(
                "transfer",
                "retrieval embedding",
                encoder_name,
                embedded,
                count_flops_per_image(encoder.model, encoder.spec.size),
                describe_device(),
            )
        )
        return {"kind": "retrieval", "path": path, "rows": len(transfer), "stats": stats.as_dict()}

    def _random_transfer_set(self, directory: str) -> dict[str, Any]:
        """``--transfer random``: ``transfer_budget`` pool images drawn uniformly without replacement
        (seeded by ``--seed``): the generic transfer set the paper compares retrieval against."""
        import numpy as np

        from .retrieval import load_pool

        cfg = self.config.transfer
        pool = load_pool(cfg.pool)
        if cfg.transfer_budget > len(pool):
            raise ValueError(
                f"--transfer_budget {cfg.transfer_budget} is more than the pool holds ({len(pool)} images in "
                f"'{cfg.pool}'): lower the budget or add images to the pool"
            )
        rows = np.random.default_rng(self.config.run.seed).choice(
            len(pool), cfg.transfer_budget, replace=False
        )
        rows = sorted(rows.tolist())
        sample = pool.select(rows).add_column("pool_index", rows)  # as a retrieved set records it
        path = os.path.join(directory, "data")
        if self.state.is_main_process:
            sample.save_to_disk(path)
        return {"kind": "random", "path": path, "rows": len(sample), "pool_rows": len(pool)}

    def _stage_distill(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from .data import PairedViews
        from .models import load_teacher
        from .trainer import DistillationArguments, DistillationTrainer

        cfg = self.config.student
        # a feature loss reads the teacher's image features only: any backbone serves, its head (new
        # for the task's classes if it has none) is never used
        labels = None if self._distillation_uses_teacher_predictions else self.task.label_names
        with _loading("teacher", self.teacher_path()):
            teacher = load_teacher(
                self.teacher_path(),
                labels,
                trust_remote_code=self.config.teacher.trust_remote_code,
                warn_new_head=False,
            )
        with _loading("student", cfg.student):
            student = self._new_student(self._teacher_classes(teacher.config))
        transfer = self.transfer_dataset()
        checkpoints = os.path.join(directory, "checkpoints")
        args = self._training_args(
            DistillationArguments,
            checkpoints,
            num_train_epochs=cfg.distill_epochs,
            learning_rate=cfg.distill_learning_rate,
            temperature=cfg.temperature,
            loss_name=cfg.distill_loss,
            save_strategy="epoch",
        )
        views = PairedViews.from_models(teacher, student, augmentation=self.augmentation)
        teacher_flops = count_flops_per_image(teacher, views.teacher.size)
        if cfg.teacher_cache_views:
            cache = self._build_teacher_cache(
                teacher, transfer, views, os.path.join(directory, "teacher_cache")
            )
            del teacher  # the teacher's work is done: free its memory for the student
            trainer = DistillationTrainer(
                model=student, teacher_cache=cache, args=args, train_dataset=transfer, views=views
            )
            teacher_work, teacher_images = (
                f"teacher forward (cache of {cache.num_views} views)",
                len(transfer) * cache.num_views,
            )
        else:
            trainer = DistillationTrainer(
                model=student, teacher_model=teacher, args=args, train_dataset=transfer, views=views
            )
            teacher_work, teacher_images = "teacher forward", None
        model_dir, last, resumed_at = _train_resuming(trainer, checkpoints, directory)
        unreadable = [s["row"] for s in cache.skipped] if cfg.teacher_cache_views else trainer.skipped_rows
        images = round(trainer.state.epoch * len(transfer))
        ledger.add(
            LedgerEntry(
                "distill",
                teacher_work,
                self.teacher_name,
                teacher_images if teacher_images is not None else images,
                teacher_flops,
                describe_device(),
            )
        )
        ledger.add(
            LedgerEntry(
                "distill",
                "student training",
                cfg.student,
                images,
                count_flops_per_image(student, views.student.size, training=True),
                describe_device(),
            )
        )
        return {
            "model": model_dir,
            "transfer_rows": len(transfer),
            "transfer_unreadable": len(unreadable),
            "transfer_unreadable_rows": unreadable[:1000],
            "resumed_from": last,
            "resumed_at_epoch": resumed_at,
            "steps": trainer.state.global_step,
            "train_loss": trainer.state.log_history[-1].get("train_loss"),
        }

    def _build_teacher_cache(self, teacher, transfer, views, folder: str):
        from .teacher_cache import TeacherCacheConfig, build_teacher_cache

        cfg, run = self.config.student, self.config.run
        state = process_state()
        config = TeacherCacheConfig(
            num_views=cfg.teacher_cache_views,
            top_k=cfg.teacher_cache_top_k,
            view_seed=run.seed,
            batch_size=run.batch_size,
            num_workers=run.dataloader_num_workers,
            precision="bf16" if run.bf16 else "fp16" if run.fp16 else "auto",
        )
        return build_teacher_cache(
            teacher.to(state.device),
            transfer,
            folder,
            config=config,
            teacher_view=views.teacher,
            augmentation=views.augmentation,
        )

    def _train_on_labels(self, model, directory: str, stage: str, ledger: ComputeLedger) -> dict[str, Any]:
        from transformers import Trainer, TrainingArguments

        from .data import ViewSpec, single_view_dataset
        from .models.labels import label_names_of
        from .trainer import EpochSeededViewsMixin, NativeCheckpointsMixin, NoSingleRowBatchMixin

        class _StudentTrainer(EpochSeededViewsMixin, NoSingleRowBatchMixin, NativeCheckpointsMixin, Trainer):
            pass

        cfg, task = self.config.student, self.task
        spec = ViewSpec.from_model(model)
        train = single_view_dataset(
            task["train"],
            spec,
            train=True,
            augmentation=self.augmentation,
            image_column=task.image_column,
            label_column=task.label_column,
            num_labels=model.config.num_labels,
            label_names=label_names_of(model.config),
            where=f"{task.name} training split",
            check_images=True,
            seed=self.config.run.seed,
        )
        checkpoints = os.path.join(directory, "checkpoints")
        args = self._training_args(
            TrainingArguments,
            checkpoints,
            num_train_epochs=cfg.finetune_epochs,
            learning_rate=cfg.finetune_learning_rate,
            save_strategy="epoch",
            remove_unused_columns=False,
        )
        trainer = _StudentTrainer(model=model, args=args, train_dataset=train)
        model_dir, last, resumed_at = _train_resuming(trainer, checkpoints, directory)
        images = round(trainer.state.epoch * len(train))
        ledger.add(
            LedgerEntry(
                stage,
                "student training",
                cfg.student,
                images,
                count_flops_per_image(model, spec.size, training=True),
                describe_device(),
            )
        )
        return {
            "model": model_dir,
            "resumed_from": last,
            "resumed_at_epoch": resumed_at,
            "steps": trainer.state.global_step,
        }

    def _stage_baseline(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        return self._train_on_labels(self._new_student(), directory, "baseline", ledger)

    def _stage_finetune(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from transformers import AutoModelForImageClassification

        distilled = AutoModelForImageClassification.from_pretrained(
            self.manifest("distill")["outputs"]["model"]
        )
        return self._train_on_labels(distilled, directory, "finetune", ledger)

    def _stage_evaluate(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        """Metrics of every model on the test split (validation if none), and their confusion matrices
        in ``confusion_matrices.json`` (rows: true class, columns: predicted, both in the task's order)."""
        from transformers import AutoModelForImageClassification

        from .evaluation import confusion_matrix, predict
        from .metrics import classification_metrics
        from .models.labels import label_names_of
        from .sources import resolve_model_source

        if not self.state.is_main_process:
            return {}  # only the main process writes the manifest: the others would repeat its work
        models = {}
        if self.config.teacher.teacher_strategy != "none" or self._distillation_uses_teacher_predictions:
            models["teacher"] = self.teacher_path()  # not a backbone that only lent its features
        if self.manifest("baseline") is not None and self.config.student.baseline:
            models["student, labels only"] = self.manifest("baseline")["outputs"]["model"]
        models["student, distilled"] = self.manifest("distill")["outputs"]["model"]
        models["student, distilled + finetuned"] = self.manifest("finetune")["outputs"]["model"]
        dataset, names = self.task[self.eval_split], list(self.task.label_names)
        results, matrices = {}, {}
        for label, path in models.items():
            model = AutoModelForImageClassification.from_pretrained(
                resolve_model_source(path), trust_remote_code=self.config.teacher.trust_remote_code
            )
            where = f"the {self.eval_split} split of '{self.task.name}' ({label})"
            predictions, labels = predict(
                model,
                dataset,
                task=self.task,
                batch_size=self.config.run.batch_size,
                where=where,
                progress=True,
            )
            labelled = labels != -100
            results[label] = classification_metrics(predictions[labelled], labels[labelled])
            order = label_names_of(model.config) or names
            if sorted(order) == sorted(names):  # into the task's class order
                matrix = confusion_matrix(predictions, labels, len(order))
                index = [order.index(n) for n in names]
                matrices[label] = matrix[np.ix_(index, index)].tolist()
        path = os.path.join(directory, "confusion_matrices.json")
        write_json_atomically(path, {"labels": names, "matrices": matrices}, indent=None)
        return {
            "split": self.eval_split,
            "images": len(dataset),
            "results": results,
            "confusion_matrices": path,
        }

    def _stage_publish(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from .hub.publish import publish_run

        return publish_run(self, directory)

    # -- summary ---------------------------------------------------------------------------------
    def skipped_images(self) -> dict[str, int]:
        """Images skipped because they could not be decoded, per where they were met (non-zero only)."""
        transfer = (self.manifest("transfer") or {}).get("outputs", {})
        distill = (self.manifest("distill") or {}).get("outputs", {})
        counts = {
            "retrieval pool": transfer.get("stats", {}).get("pool_unreadable", 0),
            "retrieval queries": transfer.get("stats", {}).get("queries_unreadable", 0),
            "transfer set (distillation)": distill.get("transfer_unreadable", 0),
        }
        return {where: n for where, n in counts.items() if n}

    def summary(self) -> str:
        """The results table and the compute per stage, one screen."""
        lines = [f"Run directory: {self.run_dir}"]
        evaluation = self.manifest("evaluate")
        if evaluation is not None:
            out = evaluation["outputs"]
            lines += [
                "",
                f"Results on the {out['split']} split ({out['images']} images):",
                "",
                "| model | accuracy | balanced accuracy | macro F1 |",
                "|---|---:|---:|---:|",
            ]
            for name, m in out["results"].items():
                lines.append(
                    f"| {name} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['macro_f1']:.4f} |"
                )
        skipped = self.skipped_images()
        if skipped:
            lines += [
                "",
                "Skipped (unreadable) images: " + "; ".join(f"{n} in the {w}" for w, n in skipped.items()),
            ]
        ledger = self.ledger()
        if ledger.entries or ledger.wall_s:
            lines += ["", "Compute per stage:", "", ledger.markdown()]
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("hf_task_distill", "torch", "transformers", "datasets", "timm", "accelerate"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = "?"
    return out
