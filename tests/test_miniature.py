"""The offline miniature: the mini-VFM's pretraining runs through the public API, and the shipped
weights are the ones its card reports."""

from __future__ import annotations

import json
import os

import pytest

from hf_task_distill.demo.miniature import MINI_VFM, MiniVFMPretraining, mini_vfm_path, pretrain_mini_vfm


def test_pretraining_writes_a_loadable_model_with_its_card(tmp_path):
    from hf_task_distill import load_teacher

    config = MiniVFMPretraining(
        train_images=3000, validation_images=300, epochs=1, batch_size=128
    )  # every class drawn
    results = pretrain_mini_vfm(tmp_path / "mini", config)
    assert results["num_classes"] >= 200 and 0.0 <= results["validation_accuracy"] <= 1.0
    card = (tmp_path / "mini" / "README.md").read_text()
    assert f"{results['validation_accuracy']:.4f}" in card and "3000 glyph images" in card
    recorded = json.loads((tmp_path / "mini" / "pretraining.json").read_text())
    assert recorded["results"] == results and recorded["train_images"] == 3000
    teacher = load_teacher(str(tmp_path / "mini"), labels=[str(d) for d in range(10)])
    assert teacher.config.num_labels == 10 and teacher.config.architecture == MINI_VFM.name


def test_the_shipped_mini_vfm_is_what_its_card_reports():
    """Its weights, evaluated on the validation glyphs regenerated from the recorded seed, give the
    recorded accuracy: the shipped file and the card agree."""
    from transformers import AutoModelForImageClassification

    from hf_task_distill.demo.glyphs import GlyphPoolConfig, make_glyph_pool
    from hf_task_distill.evaluation import evaluate_classifier

    folder = mini_vfm_path()
    recorded = json.loads(open(os.path.join(folder, "pretraining.json"), encoding="utf-8").read())
    model = AutoModelForImageClassification.from_pretrained(folder)
    validation = make_glyph_pool(
        GlyphPoolConfig(num_images=recorded["validation_images"], seed=recorded["validation_seed"])
    )
    accuracy = evaluate_classifier(model, validation, batch_size=256)["accuracy"]
    assert accuracy == pytest.approx(recorded["results"]["validation_accuracy"], abs=2e-3)
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) < 8e6  # a few MB, as promised


def test_the_comparison_script_writes_its_table_chart_and_equal_budgets(tmp_path):
    """``benchmarks/miniature/compare.py`` at toy size: every method measured for every seed, the
    retrieved set as large as the generic sample, and the three outputs written."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "miniature", "compare.py")
    prefix = str(tmp_path / "mini")
    toy = "--per_class 2 --seeds 0 1 --budget 120 --pool_glyphs 3000 --distill_epochs 1 --finetune_epochs 1"
    subprocess.run(
        [sys.executable, script, *toy.split(), "--teacher_epochs", "1", "--output_prefix", prefix],
        check=True,
        capture_output=True,
    )
    results = json.loads(open(prefix + ".json", encoding="utf-8").read())
    assert [(r["per_class"], r["seed"]) for r in results["runs"]] == [(2, 0), (2, 1)]
    for run in results["runs"]:
        assert all(0.0 <= run[m] <= 1.0 for m in "abcde") and run["d_rows"] == 120
        assert run["d_digit_share"] > results["meta"]["pool_digit_share"]  # retrieval finds the digits
    assert "| (d) task-oriented KD, retrieved transfer set + finetune |" in open(prefix + ".md").read()
    assert open(prefix + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
