"""Two processes (two CPU ranks over gloo) give the same loss curve as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distill_tensor_run.py")


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _run_two_ranks(script_and_args, cwd, port):
    """``accelerate launch --multi_gpu --num_processes 2``: two CPU ranks over gloo on this machine."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port)]  # fmt: skip
    return _run(launcher + script_and_args, cwd)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, SCRIPT, "--output_dir", str(single), "--per_device_batch", "32"], tmp_path)
    _run_two_ranks([SCRIPT, "--output_dir", str(double), "--per_device_batch", "16"], tmp_path, port=29533)

    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 4
    print(f"\none process x32: {one['losses']}\ntwo processes x16: {two['losses']}")
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(two["loss_ce"], one["loss_ce"], rtol=1e-4)
    assert one["losses"][0] != pytest.approx(
        one["losses"][-1], rel=1e-3
    )  # the curve moves: a real comparison
    a, b = (
        torch.load(single / "student.pt", weights_only=True),
        torch.load(double / "student.pt", weights_only=True),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)


BUILD_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "build_transfer_set_run.py")


@pytest.mark.slow
def test_pool_embedding_is_split_across_processes_and_gives_the_same_transfer_set(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, BUILD_SCRIPT, "--output_dir", str(single)], tmp_path)
    _run_two_ranks([BUILD_SCRIPT, "--output_dir", str(double)], tmp_path, port=29536)
    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert one["shards_by_process"] == [0] and two["shards_by_process"] == [
        0,
        1,
    ]  # each rank embedded its share
    assert one["shards"] == two["shards"] == 11
    assert two["pool_index"] == one["pool_index"] and np.allclose(two["score"], one["score"])


CACHE_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "teacher_cache_run.py")


@pytest.mark.slow
def test_the_teacher_cache_build_is_split_across_processes_into_the_same_shards(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, CACHE_SCRIPT, "--output_dir", str(single)], tmp_path)
    _run_two_ranks([CACHE_SCRIPT, "--output_dir", str(double)], tmp_path, port=29538)
    one = json.loads((single / "calls-0.json").read_text())
    ranks = [json.loads((double / f"calls-{r}.json").read_text()) for r in (0, 1)]
    assert one["num_processes"] == 1 and all(r["num_processes"] == 2 for r in ranks)
    # 10 shards of 16 images x 3 views, 4 images per forward: 40 passes, 20 on each rank
    assert one["calls"] == 40 and [r["calls"] for r in ranks] == [20, 20]
    assert one["rows"] == ranks[0]["rows"] == ranks[1]["rows"] == 160  # every rank gets the whole cache
    shards = sorted(p.name for p in single.glob("shard-*.safetensors"))
    assert len(shards) == 10
    for name in shards:
        assert (single / name).read_bytes() == (double / name).read_bytes(), name


@pytest.mark.slow
def test_the_pipeline_runs_under_accelerate_launch_with_two_processes(tmp_path):
    """``accelerate launch examples/run_distill.py`` as users run it: two CPU ranks, every stage."""
    from conftest import LABELS, make_colour_dataset, tiny_dinov2, tiny_processor
    from transformers import Dinov2Model

    for split, n, seed in (("train", 32, 21), ("test", 16, 22)):
        for i, row in enumerate(make_colour_dataset(n, seed=seed)):
            folder = tmp_path / "task" / split / LABELS[row["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{i}.png")
    torch.manual_seed(0)
    Dinov2Model(tiny_dinov2().config).save_pretrained(tmp_path / "vfm")
    tiny_processor().save_pretrained(tmp_path / "vfm")
    run = tmp_path / "run"
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "run_distill.py")
    args = [
        "--dataset", str(tmp_path / "task"), "--teacher", str(tmp_path / "vfm"),
        "--teacher_strategy", "full", "--teacher_epochs", "1", "--student", "test_resnet",
        "--student_image_size", "32", "--distill_epochs", "2", "--finetune_epochs", "1",
        "--no_baseline", "--batch_size", "8", "--output_dir", str(run),
    ]  # fmt: skip
    _run_two_ranks([script, *args], tmp_path, port=29541)
    manifests = {s: json.loads((run / s / "manifest.json").read_text()) for s in
                 ("teacher", "transfer", "distill", "finetune", "evaluate", "publish")}  # fmt: skip
    assert all(m["num_processes"] == 2 for m in manifests.values())
    distill = manifests["distill"]
    # both ranks shared the epochs: 32 images x 2 epochs counted once, not once per rank
    assert distill["ledger"]["entries"][1]["images"] == 2 * 32
    assert distill["outputs"]["steps"] == 4  # 32 images / (8 per rank x 2 ranks) = 2 steps per epoch
    assert not (run / "distill" / "checkpoints").exists()  # a complete stage keeps no checkpoints
    results = manifests["evaluate"]["outputs"]["results"]  # evaluated once, by the main process
    assert set(results) == {"teacher", "student, distilled", "student, distilled + finetuned"}
    assert (run / "publish" / "student" / "model.safetensors").exists()
