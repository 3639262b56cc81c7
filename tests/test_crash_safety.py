"""Crash safety: every long pipeline stage is SIGKILLed at a random point in a real subprocess and
rerun; the rerun completes and its result equals an uninterrupted run's, and nothing a killed
process left behind is read as complete. Also: stage outputs that change after their manifest was
written are noticed and redone, and unreadable manifests count as "not complete"."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_run_inputs
from safetensors.numpy import load_file

CLI = [sys.executable, "-m", "hf_task_distill.cli"]
STAGES = ("teacher", "transfer", "distill", "finetune")  # the long ones, in order


def _argv(root, run) -> list[str]:
    return [
        "--dataset", str(root / "task"), "--per_class", "6",
        "--teacher", str(root / "teacher-start"), "--teacher_strategy", "full", "--teacher_epochs", "8",
        "--teacher_learning_rate", "1e-3",
        "--transfer", "retrieval", "--pool", str(root / "pool"), "--per_query_k", "8",
        "--leakage_threshold", "0.9999",
        "--student", str(root / "student-start"), "--pretrained_student",
        "--distill_epochs", "8", "--distill_learning_rate", "3e-3", "--temperature", "2",
        "--finetune_epochs", "8", "--finetune_learning_rate", "1e-3",
        "--batch_size", "8", "--output_dir", str(run),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vfm_dirs):
    """The four long stages run once without interruption."""
    root = tmp_path_factory.mktemp("crash")
    write_run_inputs(root, task="task", pool="pool", teacher_from=vfm_dirs["dinov2"], teacher="teacher-start")
    run = root / "reference"
    done = subprocess.run([*CLI, "finetune", *_argv(root, run)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, run


def _manifest(run, stage) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def _kill_during(stage: str, root, run, wall_s: float, epochs_done: int | None, rng: random.Random) -> str:
    """Start the pipeline and SIGKILL it inside ``stage``: after ``epochs_done`` of its epochs are
    checkpointed plus a random part of the next (8 epochs in all), or (``None``) a random time after it starts."""
    from hf_task_distill.checkpoints import last_complete_checkpoint

    log_path = root / f"killed-{stage}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([*CLI, "finetune", *_argv(root, run)], stdout=log, stderr=log)

        def reached() -> bool:
            if not (run / stage / "started.json").exists():
                return False
            if not epochs_done:
                return True
            last = last_complete_checkpoint(run / stage / "checkpoints")
            return (
                last is not None
                and json.loads((Path(last) / "trainer_state.json").read_text())["epoch"] >= epochs_done
            )

        deadline = time.time() + 300
        while not reached() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        delay = rng.uniform(0.15, 0.8) * wall_s if epochs_done is None else rng.uniform(0, 1) * wall_s / 40
        time.sleep(delay)
        ended = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not ended, f"the run ended before the kill:\n{log_path.read_text()[-2000:]}"
    anchor = "its start" if epochs_done is None else f"checkpoint of epoch {epochs_done}"
    return f"killed {delay:.2f} s after {anchor} in '{stage}' (uninterrupted stage: {wall_s:.2f} s)"


def _outputs(run, stage):
    """What the next stage reads from ``stage``: model weights or the transfer set's rows."""
    if stage == "transfer":
        from datasets import load_from_disk

        data = load_from_disk(str(run / "transfer" / "data"))
        return {c: np.asarray(data[c]) for c in ("pool_index", "query_index", "rank", "score")}
    return load_file(str(run / stage / "model" / "model.safetensors"))


@pytest.mark.parametrize(
    ("stage", "epochs_done"),
    [("teacher", None), ("teacher", 1), ("transfer", None), ("distill", 2), ("finetune", 1)],
)
def test_a_stage_killed_at_a_random_point_reruns_to_the_uninterrupted_result(
    reference, stage, epochs_done, tmp_path
):
    from hf_task_distill.config import PipelineConfig
    from hf_task_distill.pipeline import Pipeline

    root, ref = reference
    run = tmp_path / "run"
    run.mkdir()
    for upstream in STAGES[: STAGES.index(stage)]:  # finished stages are reused as they are
        shutil.copytree(ref / upstream, run / upstream)
    wall_s = _manifest(ref, stage)["ledger"]["wall_s"][stage]
    where = _kill_during(stage, root, run, wall_s, epochs_done, random.Random(f"{stage} {epochs_done}"))

    # nothing the killed process left is taken as complete
    pipeline = Pipeline(PipelineConfig.from_dict(json.loads((run / "config.json").read_text())))
    assert pipeline.manifest(stage) is None, where
    if stage == "transfer":
        data = run / "transfer" / "data"
        assert not data.exists() or (data / "README.md").exists(), where  # whole or absent
    leftovers = [p.name for p in (run / stage).iterdir() if ".tmp-" in p.name]

    rerun = subprocess.run([*CLI, "finetune", *_argv(root, run)], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, f"{where}\n{rerun.stderr[-3000:]}"
    assert f"stage {stage}: resuming an interrupted run" in rerun.stderr, where
    if epochs_done:  # picked up from the checkpoint, not from scratch
        assert _manifest(run, stage)["outputs"]["resumed_at_epoch"] >= epochs_done, where
    for upstream in STAGES[: STAGES.index(stage)]:
        assert f"stage {upstream}: complete" in rerun.stderr, where
    assert not [p.name for p in (run / stage).iterdir() if ".tmp-" in p.name], (where, leftovers)

    expected, got = _outputs(ref, stage), _outputs(run, stage)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{key}: {where}")
    # and the stage that reads it ran on this result
    reader = {"teacher": "distill", "transfer": "distill", "distill": "finetune"}.get(stage)
    if reader is not None:
        assert _manifest(run, reader)["inputs"][stage] == _manifest(run, stage)["run_id"]


def test_a_stage_whose_outputs_changed_after_its_manifest_is_redone(reference, tmp_path):
    root, ref = reference
    run = tmp_path / "run"
    for stage in ("teacher", "transfer"):
        shutil.copytree(ref / stage, run / stage)
    before = _manifest(run, "transfer")["run_id"]
    assert "data/README.md" in _manifest(run, "transfer")["content"]
    card = run / "transfer" / "data" / "README.md"
    card.write_text(card.read_text() + "\nedited by hand\n")
    argv = [*_argv(root, run), "--distill_epochs", "1", "--finetune_epochs", "1"]
    result = subprocess.run([*CLI, "build-transfer-set", *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage transfer: redoing, its output data/README.md is not what it wrote" in result.stderr
    assert _manifest(run, "transfer")["run_id"] != before
    assert "edited by hand" not in card.read_text()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing keys"])
def test_an_unreadable_manifest_means_not_complete(reference, tmp_path, damage):
    from hf_task_distill.config import PipelineConfig
    from hf_task_distill.pipeline import Pipeline

    _, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref / "teacher", run / "teacher")
    shutil.copy(ref / "config.json", run / "config.json")
    path = run / "teacher" / "manifest.json"
    text = path.read_text()
    path.write_text(
        {"garbage": "\x00\xff not json", "truncated": text[: len(text) // 2], "missing keys": '{"stage": 1}'}[
            damage
        ]
    )
    config = PipelineConfig.from_dict(json.loads((ref / "config.json").read_text()))
    config.run.output_dir = str(run)
    assert Pipeline(config).manifest("teacher") is None


def test_a_folder_write_that_fails_midway_leaves_the_old_folder_or_nothing(tmp_path):
    from hf_task_distill.files import write_folder_atomically

    def write(folder, *, fail):
        os.makedirs(folder)
        open(os.path.join(folder, "part-0"), "w").write("new")
        if fail:
            raise OSError("disk full")
        open(os.path.join(folder, "part-1"), "w").write("new")

    (tmp_path / "x").write_text("")
    target = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(target, lambda f: write(f, fail=True))
    assert not target.exists() and sorted(os.listdir(tmp_path)) == ["x"]
    write_folder_atomically(target, lambda f: write(f, fail=False))
    assert sorted(os.listdir(target)) == ["part-0", "part-1"]
    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(target, lambda f: write(f, fail=True))
    assert sorted(os.listdir(target)) == ["part-0", "part-1"]  # the old one, untouched
    (tmp_path / "out.tmp-999999").mkdir()  # left by a killed writer
    write_folder_atomically(target, lambda f: write(f, fail=False))
    assert sorted(os.listdir(tmp_path)) == ["out", "x"]
