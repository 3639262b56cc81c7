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
import shutil
import uuid
from typing import Any

from .checkpoints import last_complete_checkpoint
from .compute import ComputeLedger, LedgerEntry, Stopwatch, count_flops_per_image, describe_device
from .config import STAGES, PipelineConfig
from .devices import cpu_ranks_need_use_cpu, has_accelerator, process_state
from .files import content_hashes, read_json, write_json_atomically

__all__ = ["Pipeline", "StageNotReady"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STARTED = "started.json"
#: Not covered by a manifest's content hashes: the manifest itself, Trainer checkpoints (only read to
#: resume an incomplete stage), and the pool embeddings and teacher cache, whose shards carry their
#: own fingerprints and are checked when read.
_NOT_HASHED = (MANIFEST, STARTED, "checkpoints", "embeddings", "teacher_cache")


class StageNotReady(RuntimeError):
    """A stage was asked for before the stage it depends on has completed."""


def _fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _loading(what: str, name: str):
    """Name the model or dataset in a loading error (the Hub's own message often does not)."""
    try:
        yield
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"cannot load the {what} '{name}': {first}") from err


def _train_resuming(trainer, checkpoints: str, directory: str) -> tuple[str, str | None, float | None]:
    """Train from the newest complete checkpoint (if any), save to ``<directory>/model``.

    Returns the model folder, the checkpoint resumed from and its epoch (read before training:
    the Trainer rotates old checkpoints away).
    """
    last = last_complete_checkpoint(checkpoints)
    resumed_at = _checkpoint_epoch(last)
    trainer.train(resume_from_checkpoint=last)
    model_dir = os.path.join(directory, "model")
    trainer.save_model(model_dir)
    return model_dir, last, resumed_at


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
        self._task = None
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
        return os.path.join(self.run_dir, name)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest, or ``None`` when it is missing or unreadable (the stage is then not complete)."""
        path = os.path.join(self.stage_dir(name), MANIFEST)
        manifest = read_json(path)
        if not manifest and os.path.exists(path):
            logger.warning("stage %s: %s is unreadable; the stage counts as not complete", name, path)
        required = ("stage", "run_id", "fingerprint", "outputs", "ledger")
        if manifest and not all(key in manifest for key in required):
            logger.warning("stage %s: %s lacks %s; the stage counts as not complete", name, path,
                           [k for k in required if k not in manifest])  # fmt: skip
            return None
        return manifest or None

    def _changed_output(self, name: str, manifest: dict[str, Any]) -> str | None:
        """The first output file (relative to the stage folder) that is missing, added or differs
        from the hash its manifest recorded, or ``None`` when every one matches."""
        recorded = manifest.get("content")
        if not isinstance(recorded, dict):
            return MANIFEST  # written by a version that recorded no hashes: cannot be checked
        found = content_hashes(self.stage_dir(name), exclude=_NOT_HASHED)
        for path in sorted(set(recorded) | set(found)):
            if recorded.get(path) != found.get(path):
                return path
        return None

    def _upstream(self, name: str) -> str:
        manifest = self.manifest(name)
        if manifest is None:
            raise StageNotReady(f"stage '{name}' has not completed in {self.run_dir}: run it first")
        return manifest["run_id"]

    def _inputs(self, name: str) -> dict[str, Any]:
        c = self.config
        task = {
            "dataset": c.task.dataset,
            "per_class": c.task.per_class,
            "fraction": c.task.fraction,
            "budget_seed": c.task.budget_seed,
        }
        training = {
            "batch_size": c.run.batch_size,
            "seed": c.run.seed,
            "bf16": c.run.bf16,
            "fp16": c.run.fp16,
            "crop_min_scale": c.run.crop_min_scale,
            "hflip": c.run.hflip_probability,
        }
        student = {
            "student": c.student.student,
            "pretrained": c.student.pretrained_student,
            "image_size": c.student.student_image_size,
        }
        if name == "teacher":
            return {
                **task,
                **training,
                **{k: v for k, v in vars(c.teacher).items() if k != "trust_remote_code"},
            }
        if name == "transfer":
            return {**task, **vars(c.transfer), "encoder": c.transfer.retrieval_encoder or c.teacher.teacher}
        if name == "distill":
            return {
                **student,
                **training,
                "epochs": c.student.distill_epochs,
                "lr": c.student.distill_learning_rate,
                "temperature": c.student.temperature,
                "loss": c.student.distill_loss,
                "teacher_cache_views": c.student.teacher_cache_views,
                "teacher_cache_top_k": c.student.teacher_cache_top_k,
                "teacher": self._upstream("teacher"),
                "transfer": self._upstream("transfer"),
            }
        if name == "baseline":
            return {
                **task,
                **student,
                **training,
                "epochs": c.student.finetune_epochs,
                "lr": c.student.finetune_learning_rate,
            }
        if name == "finetune":
            return {
                **task,
                **training,
                "epochs": c.student.finetune_epochs,
                "lr": c.student.finetune_learning_rate,
                "distill": self._upstream("distill"),
            }
        if name == "evaluate":
            upstream = ["teacher", "finetune"] + (["baseline"] if c.student.baseline else [])
            return {**task, "distill": self._upstream("distill"), **{s: self._upstream(s) for s in upstream}}
        if name == "publish":
            return {
                "finetune": self._upstream("finetune"),
                "evaluate": self._upstream("evaluate"),
                "transfer": self._upstream("transfer"),
                "push": c.run.push_to_hub,
                "hub_model_id": c.run.hub_model_id,
                "hub_dataset_id": c.run.hub_dataset_id,
            }
        raise ValueError(f"unknown stage '{name}'; stages are {', '.join(STAGES)}")

    def run(self, stages: tuple[str, ...] | list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run ``stages`` in order (default: all; ``baseline`` only if enabled), skipping completed ones."""
        if stages is None:
            stages = [s for s in STAGES if s != "baseline" or self.config.student.baseline]
        os.makedirs(self.run_dir, exist_ok=True)
        if self.state.is_main_process:
            self.config.save(os.path.join(self.run_dir, "config.json"))
        return {name: self.run_stage(name) for name in stages}

    def run_stage(self, name: str) -> dict[str, Any]:
        inputs = self._inputs(name)
        fingerprint = _fingerprint(inputs)
        directory = self.stage_dir(name)
        manifest = self.manifest(name)
        overwrite = name in self.config.run.overwrite_stage and name not in self._redone
        changed = None
        if manifest is not None and manifest.get("fingerprint") == fingerprint and not overwrite:
            changed = self._changed_output(name, manifest)
            if changed is None:
                logger.info("stage %s: complete (%s), skipped", name, manifest["run_id"])
                return manifest
        if manifest is not None:
            reason = (
                "--overwrite_stage"
                if overwrite
                else f"its output {changed} is not what it wrote"
                if changed
                else "its inputs changed"
            )
            logger.info("stage %s: redoing, %s", name, reason)
        started = os.path.join(directory, STARTED)
        resumable = (
            manifest is None and not overwrite and read_json(started).get("fingerprint") == fingerprint
        )
        self.state.wait_for_everyone()  # every process has decided before the folder changes
        if self.state.is_main_process:
            if not resumable and os.path.isdir(directory):
                shutil.rmtree(directory)  # stale or explicitly redone: nothing in it may be reused
            os.makedirs(directory, exist_ok=True)
            write_json_atomically(started, {"fingerprint": fingerprint, "inputs": inputs})
        self.state.wait_for_everyone()
        if resumable:
            logger.info("stage %s: resuming an interrupted run", name)
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
        if self.state.is_main_process:
            manifest["content"] = content_hashes(directory, exclude=_NOT_HASHED)
            write_json_atomically(os.path.join(directory, MANIFEST), manifest)
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
    def teacher_path(self) -> str:
        manifest = self.manifest("teacher")
        return manifest["outputs"]["model"] if manifest else self.config.teacher.teacher

    def transfer_dataset(self):
        outputs = (self.manifest("transfer") or {}).get("outputs")
        if outputs is None:
            raise StageNotReady(f"stage 'transfer' has not completed in {self.run_dir}: run it first")
        if outputs["kind"] == "retrieval":
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

    def _new_student(self):
        from transformers import set_seed

        from .models import create_student

        cfg = self.config.student
        set_seed(self.config.run.seed)  # a new head (or a whole new student) starts the same in every rerun
        return create_student(
            cfg.student,
            self.task.id2label,
            pretrained=cfg.pretrained_student,
            image_size=cfg.student_image_size,
        )

    # -- stages ----------------------------------------------------------------------------------
    def _stage_teacher(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from .teacher import TeacherFinetuner, TeacherFinetuningArguments

        cfg = self.config.teacher
        if cfg.teacher_strategy == "none":
            return {"model": cfg.teacher, "strategy": "none"}
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
            pool, self.task["train"], heldout=heldout, embeddings_dir=os.path.join(directory, "embeddings")
        )
        path = os.path.join(directory, "data")
        if self.state.is_main_process:
            card = TransferSetCardData.from_build(
                builder, transfer, pool, name=f"{self.task.name}-transfer-set", task_name=self.task.name
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

    def _stage_distill(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from .data import PairedViews
        from .models import load_teacher
        from .trainer import DistillationArguments, DistillationTrainer

        cfg = self.config.student
        with _loading("teacher", self.teacher_path()):
            teacher = load_teacher(
                self.teacher_path(), trust_remote_code=self.config.teacher.trust_remote_code
            )
        with _loading("student", cfg.student):
            student = self._new_student()
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
                self.teacher_path(),
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
        from .trainer import EpochSeededViewsMixin, NativeCheckpointsMixin

        class _StudentTrainer(EpochSeededViewsMixin, NativeCheckpointsMixin, Trainer):
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
            num_labels=task.num_labels,
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
        return {"model": model_dir, "resumed_from": last, "resumed_at_epoch": resumed_at}

    def _stage_baseline(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        return self._train_on_labels(self._new_student(), directory, "baseline", ledger)

    def _stage_finetune(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from transformers import AutoModelForImageClassification

        distilled = AutoModelForImageClassification.from_pretrained(
            self.manifest("distill")["outputs"]["model"]
        )
        return self._train_on_labels(distilled, directory, "finetune", ledger)

    def _stage_evaluate(self, directory: str, ledger: ComputeLedger) -> dict[str, Any]:
        from transformers import AutoModelForImageClassification

        from .evaluation import evaluate_classifier

        if not self.state.is_main_process:
            return {}  # only the main process writes the manifest: the others would repeat its work
        models = {"teacher": self.teacher_path()}
        if self.manifest("baseline") is not None and self.config.student.baseline:
            models["student, labels only"] = self.manifest("baseline")["outputs"]["model"]
        models["student, distilled"] = self.manifest("distill")["outputs"]["model"]
        models["student, distilled + finetuned"] = self.manifest("finetune")["outputs"]["model"]
        dataset = self.task[self.eval_split]
        results = {}
        for label, path in models.items():
            model = AutoModelForImageClassification.from_pretrained(
                path, trust_remote_code=self.config.teacher.trust_remote_code
            )
            results[label] = evaluate_classifier(
                model, dataset, task=self.task, batch_size=self.config.run.batch_size
            )
        return {"split": self.eval_split, "images": len(dataset), "results": results}

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
