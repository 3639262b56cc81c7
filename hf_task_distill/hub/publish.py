"""Publish a run: the student and (for a retrieved set) the transfer set, as folders first.

The folders are exactly what is uploaded, so they can be checked offline with the real clients
(``AutoModelForImageClassification``, ``pipeline``, ``timm.create_model``, ``datasets.load_dataset``)
before anything leaves the machine. Uploads go through ``huggingface_hub``; the token is resolved
by it (``huggingface-cli login``, ``HF_TOKEN``) and never written into a folder, card or manifest.
Pickled files the Trainer writes (``training_args.bin``) are not published.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

__all__ = ["publish_run", "upload_folder", "write_parquet_dataset"]

_STUDENT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def write_parquet_dataset(dataset, output_dir: str, max_shard_rows: int = 10_000) -> list[str]:
    """``dataset`` as ``data/train-XXXXX-of-XXXXX.parquet`` with image bytes embedded, the layout
    ``datasets.load_dataset(folder)`` and the Hub's viewer read."""
    from datasets.table import embed_table_storage

    data_dir = os.path.join(output_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    num_shards = max(1, -(-len(dataset) // max_shard_rows))
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        path = os.path.join(data_dir, f"train-{index:05d}-of-{num_shards:05d}.parquet")
        shard.to_parquet(path)
        paths.append(path)
    return paths


def upload_folder(folder: str, repo_id: str, *, repo_type: str, private: bool = False) -> str:
    """Create the repo if needed and upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message="Upload with hf_task_distill",
    )
    return str(getattr(info, "commit_url", info))


def _transfer_description(outputs: dict[str, Any], cfg) -> str:
    if outputs["kind"] == "task":
        return f"the task's own {outputs['rows']:,} training images (labels unused)"
    if outputs["kind"] == "dataset":
        return f"{outputs['rows']:,} images of `{outputs['source']}` (a generic transfer set)"
    how = f"{cfg.per_query_k} per labelled image" if cfg.per_query_k else f"a budget of {cfg.transfer_budget}"
    return f"{outputs['rows']:,} images retrieved from `{cfg.pool}` ({how})"


def publish_run(pipeline, directory: str) -> dict[str, Any]:
    """Write ``student/`` (and ``transfer_set/``) under ``directory``; push them if asked."""
    from transformers import AutoConfig

    from .cards import StudentCardData, label_budget_summary, render_student_card

    config, task = pipeline.config, pipeline.task
    finetuned = pipeline.manifest("finetune")["outputs"]["model"]
    evaluation = pipeline.manifest("evaluate")["outputs"]
    transfer = pipeline.manifest("transfer")["outputs"]
    student_dir = os.path.join(directory, "student")
    outputs: dict[str, Any] = {"student": student_dir}
    if pipeline.state.is_main_process:
        os.makedirs(student_dir, exist_ok=True)
        for name in _STUDENT_FILES:
            if os.path.exists(os.path.join(finetuned, name)):
                shutil.copy2(os.path.join(finetuned, name), os.path.join(student_dir, name))
        model_config = AutoConfig.from_pretrained(student_dir)
        pretrained_cfg = getattr(model_config, "pretrained_cfg", None) or {}
        ledger = pipeline.ledger()
        teacher_outputs = pipeline.manifest("teacher")["outputs"]
        card = StudentCardData(
            model_name=config.run.hub_model_id or os.path.basename(pipeline.run_dir),
            architecture=getattr(model_config, "architecture", None) or model_config.model_type,
            task_name=task.name,
            label_names=list(task.label_names),
            teacher_base=config.teacher.teacher,
            teacher_strategy=teacher_outputs.get("strategy", config.teacher.teacher_strategy),
            distill_loss=config.student.distill_loss,
            temperature=config.student.temperature,
            transfer_description=_transfer_description(transfer, config.transfer),
            train_size=len(task["train"]),
            image_size=int(pretrained_cfg.get("input_size", (3, 0, 0))[1]) or 0,
            eval_split=evaluation["split"],
            eval_images=evaluation["images"],
            results=evaluation["results"],
            ledger=ledger.markdown(),
            base_model=pretrained_cfg.get("hf_hub_id") if config.student.pretrained_student else None,
            teacher_repo=config.teacher.teacher if config.teacher.teacher_strategy == "none" else None,
            transfer_repo=config.run.hub_dataset_id if transfer["kind"] == "retrieval" else None,
            dataset_id=task.spec.hub_id if task.spec is not None else None,
            license=task.spec.license if task.spec is not None else None,
            label_budget=label_budget_summary(task),
        )
        render_student_card(card).save(os.path.join(student_dir, "README.md"))
        ledger.save(os.path.join(student_dir, "compute_ledger.json"))
        with open(os.path.join(student_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(evaluation, f, indent=2)

        if transfer["kind"] == "retrieval":
            from datasets import load_from_disk

            transfer_dir = os.path.join(directory, "transfer_set")
            write_parquet_dataset(load_from_disk(transfer["path"]), transfer_dir)
            for name in ("README.md", "contact_sheet.png"):
                source = os.path.join(transfer["path"], name)
                if os.path.exists(source):
                    shutil.copy2(source, os.path.join(transfer_dir, name))
            outputs["transfer_set"] = transfer_dir
        if config.run.push_to_hub:
            if not config.run.hub_model_id:
                raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/mobilevitv2-cub)")
            outputs["student_commit"] = upload_folder(
                student_dir, config.run.hub_model_id, repo_type="model", private=config.run.hub_private
            )
            if "transfer_set" in outputs and config.run.hub_dataset_id:
                outputs["transfer_set_commit"] = upload_folder(
                    outputs["transfer_set"],
                    config.run.hub_dataset_id,
                    repo_type="dataset",
                    private=config.run.hub_private,
                )
    pipeline.state.wait_for_everyone()
    return outputs
