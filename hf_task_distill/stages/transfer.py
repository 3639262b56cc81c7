"""Stage 2, ``transfer``: the unlabelled images the teacher's knowledge is transferred on: the task's
own training images, a uniform pool sample, a dataset, or images retrieved from a pool for the task
(:class:`~hf_task_distill.retrieval.RetrievalTransferSetBuilder`)."""

from __future__ import annotations

import dataclasses
import os

from ..options import RetrievalSettings
from ._settings import TASK
from .base import Stage, StageResult, register_stage
from .context import loading

#: Retrieval settings added after runs were first recorded: part of the fingerprint when not at default.
RETRIEVAL_FILTERS = ("min_similarity", "min_teacher_confidence", "memory_budget_gb", "recall_target")


@register_stage
class TransferStage(Stage):
    """The transfer set: ``task``, ``random``, ``retrieval`` or a dataset; output ``data/`` when built."""

    name = "transfer"
    command = "build-transfer-set"
    command_help = "Stage 2: the unlabelled transfer set (task images, retrieval or a dataset)."
    settings_read = (
        *TASK,
        "transfer",
        "pool",
        "pool_streaming",
        "per_query_k",
        "transfer_budget",
        "leakage_threshold",
        "seed",
    )

    def settings(self, config):
        flat, mode = config.to_dict(), config.transfer.transfer
        if mode == "task":
            names = ("transfer", "dataset")
        elif mode == "random":
            names = ("transfer", "pool", "transfer_budget", "seed")
        elif mode != "retrieval":
            names = ("transfer",)
        else:
            settings = super().settings(config)
            settings["retrieval_encoder"] = flat["retrieval_encoder"] or flat["teacher"]
            # recorded only when not at their default, so that runs made before these flags existed continue
            defaults = {f.name: f.default for f in dataclasses.fields(RetrievalSettings)}
            settings.update({k: flat[k] for k in RETRIEVAL_FILTERS if flat[k] != defaults[k]})
            return settings
        return {name: flat[name] for name in names}

    def upstream(self, config):
        if config.transfer.min_teacher_confidence is not None:
            return ("teacher",)  # the finetuned teacher's confidence filters the retrieved images
        return ()

    def models_needed(self, config):
        cfg = config.transfer
        return (
            [("retrieval encoder", cfg.retrieval_encoder)]
            if cfg.transfer == "retrieval" and cfg.retrieval_encoder
            else []
        )

    def task_splits(self, config, eval_split):
        # retrieval also reads validation and test, to keep their copies out of the transfer set
        return ("train",) if config.transfer.transfer == "task" else ("train", "validation", "test")

    def skipped_images(self, outputs):
        stats = outputs.get("stats", {})
        return {
            "retrieval pool": stats.get("pool_unreadable", 0),
            "retrieval queries": stats.get("queries_unreadable", 0),
        }

    def run(self, context, directory):
        mode = context.config.transfer.transfer
        if mode == "task":
            return StageResult({"kind": "task", "rows": len(context.full_train)})
        if mode == "random":
            return StageResult(_random_transfer_set(context, directory))
        if mode != "retrieval":
            from ..data import load_image_dataset

            return StageResult({"kind": "dataset", "source": mode, "rows": len(load_image_dataset(mode))})
        return _retrieved_transfer_set(context, directory)


def _random_transfer_set(context, directory: str) -> dict:
    """``--transfer random``: ``transfer_budget`` pool images drawn uniformly without replacement
    (seeded by ``--seed``): the generic transfer set the paper compares retrieval against.

    Raises:
        ValueError: the budget is larger than the pool.
    """
    import numpy as np

    from ..retrieval import load_pool

    cfg = context.config.transfer
    pool = load_pool(cfg.pool)
    if cfg.transfer_budget > len(pool):
        raise ValueError(
            f"--transfer_budget {cfg.transfer_budget} is more than the pool holds ({len(pool)} images in "
            f"'{cfg.pool}'): lower the budget or add images to the pool"
        )
    rows = np.random.default_rng(context.config.run.seed).choice(
        len(pool), cfg.transfer_budget, replace=False
    )
    rows = sorted(rows.tolist())
    sample = pool.select(rows).add_column("pool_index", rows)  # as a retrieved set records it
    path = os.path.join(directory, "data")
    if context.state.is_main_process:
        sample.save_to_disk(path)
    return {"kind": "random", "path": path, "rows": len(sample), "pool_rows": len(pool)}


def _retrieved_transfer_set(context, directory: str) -> StageResult:
    """``--transfer retrieval``: the pool images nearest to the labelled ones, saved with its card."""
    from ..hub.cards import TransferSetCardData
    from ..ledger import LedgerEntry, count_flops_per_image, describe_device
    from ..retrieval import (
        ImageEncoder,
        RetrievalTransferSetBuilder,
        contact_sheet,
        load_pool,
        save_transfer_set,
    )

    cfg, task = context.config.transfer, context.task
    encoder_name = cfg.retrieval_encoder or context.config.teacher.teacher
    with loading("retrieval encoder", encoder_name):
        encoder = ImageEncoder.from_pretrained(
            encoder_name, trust_remote_code=context.config.teacher.trust_remote_code
        )
    run = context.config.run
    builder = RetrievalTransferSetBuilder(
        encoder, cfg.retrieval_config(batch_size=run.batch_size, seed=run.seed)
    )
    pool = load_pool(cfg.pool, streaming=cfg.pool_streaming)
    heldout = [task[s] for s in ("validation", "test") if s in task.splits]
    transfer, stats = builder.build(
        pool,
        task["train"],
        heldout=heldout,
        embeddings_dir=os.path.join(directory, "embeddings"),
        pool_embeddings_dir=cfg.pool_embeddings_dir,
        teacher=_confidence_teacher(context),
    )
    path = os.path.join(directory, "data")
    if context.state.is_main_process:
        card = TransferSetCardData.from_build(
            builder, transfer, pool, name=f"{task.name}-transfer-set", task_name=task.name, pool_name=cfg.pool
        )
        save_transfer_set(transfer, path, card, contact_sheet(task["train"], transfer))
    embedded = stats.pool_embedded + stats.queries + sum(len(h) for h in heldout)
    flops = count_flops_per_image(encoder.model, encoder.spec.size)
    entry = LedgerEntry("transfer", "retrieval embedding", encoder_name, embedded, flops, describe_device())
    outputs = {"kind": "retrieval", "path": path, "rows": len(transfer), "stats": stats.as_dict()}
    return StageResult(outputs, [entry])


def _confidence_teacher(context):
    """The run's finetuned teacher, when ``--min_teacher_confidence`` filters the retrieved images by
    its top-class probability (``None`` otherwise)."""
    if context.config.transfer.min_teacher_confidence is None:
        return None
    from ..models import load_teacher

    with loading("teacher", context.teacher_path()):
        return load_teacher(
            context.teacher_path(), trust_remote_code=context.config.teacher.trust_remote_code
        )
