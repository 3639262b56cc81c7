"""The example scripts run as users run them (as subprocesses), on local tiny models and image folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import LABELS, colour_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image_folder(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(LABELS):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            colour_image(label, rng).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("cached", [False, True], ids=["online", "teacher-cache"])
def test_distill_with_trainer_example(tmp_path, trained_teacher_dir, cached):
    task = _image_folder(tmp_path / "task" / "train", 6, seed=0).parent
    _image_folder(tmp_path / "task" / "test", 3, seed=1)
    transfer = tmp_path / "transfer"
    _image_folder(transfer, 8, seed=2)  # folder names become labels; ignored with ce_weight=0
    out = tmp_path / "student"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "examples", "distill_with_trainer.py"),
        "--teacher",
        str(trained_teacher_dir),
        "--dataset",
        str(task),
        "--student",
        "test_resnet",
        "--student_image_size",
        "32",
        "--transfer_dataset",
        str(transfer),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--use_cpu",
    ]
    if cached:
        cmd += ["--teacher_cache_dir", str(tmp_path / "cache"), "--num_views", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_agreement", "eval_teacher_accuracy"} <= set(metrics)
    if cached:
        info = json.loads((tmp_path / "cache" / "cache.json").read_text())
        assert info["fingerprint"]["num_views"] == 2 and info["rows"] == 32
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()


def test_run_finetune_teacher_example(tmp_path, vfm_dirs):
    task = _image_folder(tmp_path / "task" / "train", 6, seed=3).parent
    _image_folder(tmp_path / "task" / "validation", 2, seed=4)
    out = tmp_path / "teacher"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "examples", "run_finetune_teacher.py"),
        "--model",
        str(vfm_dirs["dinov2"]),
        "--dataset",
        str(task),
        "--per_class",
        "4",
        "--strategy",
        "lp-ft",
        "--num_train_epochs",
        "1",
        "--probe_epochs",
        "5",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--use_cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "finetuning_results.json").read_text())
    assert summary["strategy"] == "lp-ft" and 0.0 <= summary["metrics"]["balanced_accuracy"] <= 1.0
    assert summary["label_budget"]["per_class"] == 4 and "teacher saved to" in done.stdout
    card = (out / "README.md").read_text()
    assert "label budget: per_class=4, seed=0" in card
    assert (out / "preprocessor_config.json").exists() and (out / "model.safetensors").exists()


def test_pipeline_examples_are_the_cli_with_every_flag():
    for script, description in (
        ("run_distill.py", "Run every stage"),
        ("run_build_transfer_set.py", "Stage 2"),
    ):
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "examples", script), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert description in done.stdout
        for flag in ("--dataset", "--per_class", "--teacher", "--transfer", "--pool", "--student"):
            assert flag in done.stdout, (script, flag)
