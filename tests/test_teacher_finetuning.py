"""TeacherFinetuner: four strategies on tiny DINOv2 and CLIP, what each learns, LoRA, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import LABELS, check_card_metadata, distill_args, make_colour_dataset, make_texture_dataset
from datasets import DatasetDict

from hf_task_distill import DistillationTrainer, create_student, load_teacher
from hf_task_distill.data import load_target_task
from hf_task_distill.teacher_finetuning import (
    STRATEGIES,
    TeacherFinetuner,
    TeacherFinetuningArguments,
    layer_decay_parameter_groups,
    lora_target_modules,
)


def _args(tmp_path, strategy, **overrides):
    base = dict(
        output_dir=str(tmp_path / strategy),
        strategy=strategy,
        num_train_epochs=2,
        probe_epochs=10,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=0,
    )
    base.update(overrides)
    return TeacherFinetuningArguments(**base)


@pytest.fixture(scope="module")
def colour_task():
    return load_target_task(
        DatasetDict(
            {"train": make_colour_dataset(48, seed=21), "validation": make_colour_dataset(24, seed=22)}
        ),
        name="colours",
    )


@pytest.mark.parametrize("backbone", ["dinov2", "clip"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_a_teacher_the_distillation_trainer_uses(
    tmp_path, vfm_dirs, colour_task, backbone, strategy
):
    finetuner = TeacherFinetuner(
        str(vfm_dirs[backbone]), colour_task, _args(tmp_path, strategy, num_train_epochs=1)
    )
    result = finetuner.train()
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(result.metrics)
    folder = finetuner.save()

    teacher = load_teacher(folder)  # a classifier now: loads without labels=
    assert teacher.config.id2label == dict(enumerate(LABELS))
    assert not any("lora" in name for name, _ in teacher.named_parameters())  # adapters merged away
    card = (tmp_path / strategy / "README.md").read_text()
    assert (
        f"Strategy: `{strategy}`" in card
        and "balanced_accuracy" in card
        and "pipeline_tag: image-classification" in card
    )
    metadata = check_card_metadata(
        tmp_path / strategy / "README.md"
    )  # as the student's card (test_trainer_cards)
    assert f"finetune-{strategy}" in metadata["tags"] and "base_model" not in metadata  # a local base model

    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    args = distill_args(tmp_path / "student", max_steps=2, per_device_train_batch_size=8)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=folder,
        args=args,
        train_dataset=make_colour_dataset(16, 5, labelled=False),
    )
    trainer.train()
    assert trainer.state.global_step == 2


def _table(task, vfm, tmp_path, lrs, lora_seeds=(0,)):
    """Balanced accuracy per strategy; LoRA's averaged over ``lora_seeds`` (on these tiny tasks it
    moves by 0.2 from one seed to the next: 0.75-0.95 over seeds 0-2 at lr 5e-3)."""
    scores = {}
    for strategy in STRATEGIES:
        runs = []
        for seed in lora_seeds if strategy == "lora" else (0,):
            args = _args(
                tmp_path,
                strategy,
                num_train_epochs=15,
                probe_epochs=50,
                learning_rate=lrs.get(strategy, 3e-3),
                crop_min_scale=1.0,
                hflip_probability=0.0,
                lora_r=16,
                lora_alpha=32,
                seed=seed,
            )
            runs.append(TeacherFinetuner(str(vfm), task, args).train().metrics["balanced_accuracy"])
        scores[strategy] = sum(runs) / len(runs)
    print("\n" + task.name + ": " + "  ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    return scores


LRS = {"full": 3e-3, "lp-ft": 5e-3, "lora": 5e-3}


def test_finetuning_beats_a_linear_probe_when_frozen_features_cannot_separate(tmp_path, vfm_dirs):
    task = load_target_task(
        DatasetDict({"train": make_texture_dataset(200, 1), "validation": make_texture_dataset(100, 2)}),
        name="textures",
    )
    scores = _table(task, vfm_dirs["dinov2"], tmp_path, LRS, lora_seeds=(0, 1, 2))
    assert scores["linear"] < 0.7
    for strategy in ("full", "lp-ft", "lora"):
        assert scores[strategy] > scores["linear"] + 0.15, scores


def test_linear_probe_matches_finetuning_when_frozen_features_suffice(tmp_path, vfm_dirs):
    task = load_target_task(
        DatasetDict({"train": make_colour_dataset(120, 31), "validation": make_colour_dataset(80, 32)}),
        name="colours",
    )
    scores = _table(task, vfm_dirs["dinov2"], tmp_path, LRS)
    assert scores["linear"] > 0.95
    assert scores["linear"] >= max(scores[s] for s in ("full", "lp-ft", "lora")) - 0.03, scores


def test_linear_probe_embeds_once_whatever_the_number_of_epochs(tmp_path, vfm_dirs, colour_task):
    calls = []
    for epochs in (2, 20):
        finetuner = TeacherFinetuner(
            str(vfm_dirs["dinov2"]), colour_task, _args(tmp_path, "linear", probe_epochs=epochs)
        )
        original = finetuner.embed

        def counting_embed(model, *a, original=original, epochs=epochs, **k):
            handle = model.base_model.register_forward_hook(lambda *_: calls.append(epochs))
            try:
                return original(model, *a, **k)
            finally:
                handle.remove()

        finetuner.embed = counting_embed
        result = finetuner.train()
        assert len(result.probe_history) == epochs
    n_batches = 2 + 1  # 48 train images and 24 validation images in batches of 32
    assert calls.count(2) == calls.count(20) == n_batches


def test_probe_views_embed_augmented_copies(tmp_path, vfm_dirs, colour_task):
    finetuner = TeacherFinetuner(
        str(vfm_dirs["dinov2"]), colour_task, _args(tmp_path, "linear", probe_views=3)
    )
    model = load_teacher(str(vfm_dirs["dinov2"]), labels=LABELS)
    features, labels = finetuner.embed(model, finetuner.train_split, finetuner.spec, views=3)
    assert features.shape == (3 * 48, 64) and labels.shape == (3 * 48,)
    assert not torch.allclose(features[:48], features[48:96])  # different random views


def test_lora_trains_only_adapters_and_head_and_merges_exactly(tmp_path, vfm_dirs, colour_task):
    finetuner = TeacherFinetuner(
        str(vfm_dirs["dinov2"]), colour_task, _args(tmp_path, "lora", learning_rate=1e-2)
    )
    initial = {
        k: v.clone() for k, v in load_teacher(str(vfm_dirs["dinov2"]), labels=LABELS).state_dict().items()
    }
    result = finetuner.train()
    peft_model = finetuner.peft_model

    changed, unchanged = [], []
    for name, value in peft_model.named_parameters():
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in name or "modules_to_save" in name or "original_module" in name:
            continue  # adapters and the trained head; the head's frozen original is random, checked below
        (changed if not torch.equal(value, initial[base_name]) else unchanged).append(name)
    assert not changed, f"frozen weights moved: {changed[:5]}"
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters did learn

    x = torch.randn(4, 3, 32, 32)
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            result.model(pixel_values=x).logits, peft_model(pixel_values=x).logits, rtol=1e-4, atol=1e-5
        )


def test_lora_targets_come_from_the_model():
    from conftest import tiny_clip_config, tiny_dinov2
    from transformers import CLIPForImageClassification

    dino = lora_target_modules(tiny_dinov2())
    assert dino == [f"dinov2.encoder.layer.{i}.attention.{p}_proj" for i in (0, 1) for p in "qkvo"]
    clip = lora_target_modules(CLIPForImageClassification(tiny_clip_config()))
    assert len(clip) == 8 and {n.rsplit(".", 1)[1] for n in clip} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    }


def test_layer_decay_scales_learning_rate_by_depth():
    from conftest import tiny_dinov2

    groups = layer_decay_parameter_groups(
        tiny_dinov2(), learning_rate=1.0, weight_decay=0.05, layer_decay=0.5
    )
    by_layer = {}
    for group in groups:
        by_layer.setdefault(group["layer"], set()).add(group["lr"])
    assert by_layer == {
        0: {0.125},
        1: {0.25},
        2: {0.5},
        3: {1.0},
    }  # embeddings, block 0, block 1, norm + head
    for group in groups:
        if any(p.ndim <= 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0


def test_no_validation_split_holds_out_a_stratified_slice(tmp_path, vfm_dirs):
    task = load_target_task(make_colour_dataset(40, seed=3), name="colours")
    finetuner = TeacherFinetuner(
        str(vfm_dirs["dinov2"]), task, _args(tmp_path, "linear", validation_fraction=0.25)
    )
    assert len(finetuner.train_split) + len(finetuner.validation_split) == 40
    assert sorted(set(finetuner.validation_split["label"])) == [0, 1, 2, 3]
    assert "stratified hold-out of 25%" in finetuner.validation_source


def test_bad_label_sets_fail_clearly(tmp_path, vfm_dirs, caplog):
    ds = make_colour_dataset(40, seed=4)
    no_yellow = ds.filter(lambda r: r["label"] != 3)
    with pytest.raises(ValueError, match=r"1 class\(es\) have no labelled training image: \['yellow'\]"):
        TeacherFinetuner(str(vfm_dirs["dinov2"]), load_target_task(no_yellow), _args(tmp_path, "linear"))

    single = ds.filter(lambda r: r["label"] == 0)
    with pytest.raises(ValueError, match="no labelled training image|a single class"):
        TeacherFinetuner(str(vfm_dirs["dinov2"]), load_target_task(single), _args(tmp_path, "linear"))
    from datasets import ClassLabel

    one_class = single.cast_column("label", ClassLabel(names=["red"]))
    with pytest.raises(ValueError, match="has 1 class: a classifier needs at least two"):
        TeacherFinetuner(str(vfm_dirs["dinov2"]), load_target_task(one_class), _args(tmp_path, "linear"))

    unseen = DatasetDict({"train": no_yellow, "validation": ds})
    with pytest.raises(ValueError, match="have no labelled training image"):
        TeacherFinetuner(str(vfm_dirs["dinov2"]), load_target_task(unseen), _args(tmp_path, "linear"))

    with caplog.at_level(logging.WARNING):
        budget = load_target_task(ds).with_label_budget(per_class=1000, seed=0)
    assert len(budget["train"]) == 40  # everything there is, and a warning that says so
    assert "Label budget of 1000 per class: 4 class(es) have fewer and keep all they have" in caplog.text


def test_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from hf_task_distill.metrics import classification_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    predictions = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 5, 300))
    ours = classification_metrics(predictions, labels)
    assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert ours["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert ours["accuracy"] == pytest.approx((labels == predictions).mean())


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_the_best_validation_epoch_is_the_one_kept(tmp_path, vfm_dirs, strategy):
    """Model selection must restore the best epoch exactly (transformers' reload skips legacy key names)."""
    task = load_target_task(
        DatasetDict({"train": make_texture_dataset(120, 1), "validation": make_texture_dataset(60, 2)}),
        name="textures",
    )
    args = _args(
        tmp_path, strategy, num_train_epochs=6, learning_rate=5e-3, crop_min_scale=1.0, hflip_probability=0.0
    )
    finetuner = TeacherFinetuner(str(vfm_dirs["dinov2"]), task, args)
    result = finetuner.train()
    per_epoch = [
        e["eval_balanced_accuracy"]
        for e in finetuner.trainer.state.log_history
        if "eval_balanced_accuracy" in e
    ]
    per_epoch = per_epoch[:6]  # the last entry is the final evaluate()
    assert len(set(np.round(per_epoch, 4))) > 1  # epochs differ, so picking the best one matters
    assert result.metrics["balanced_accuracy"] == pytest.approx(max(per_epoch), abs=1e-6)
    merged_logits = result.model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert torch.isfinite(merged_logits).all()


METRIC_SCRIPT = """
import datasets
import evaluate
import numpy as np


class TopClassShare(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="share of predictions in the most predicted class", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"top_class_share": float(np.bincount(np.asarray(predictions)).max() / len(predictions))}
"""


def test_extra_evaluate_metrics_are_reported_beside_the_local_ones(tmp_path, vfm_dirs, colour_task):
    script = tmp_path / "top_class_share.py"
    script.write_text(METRIC_SCRIPT)  # a local metric script: evaluate.load without the Hub
    args = _args(tmp_path, "linear", extra_metrics=[str(script)], probe_epochs=3)
    result = TeacherFinetuner(str(vfm_dirs["dinov2"]), colour_task, args).train()
    assert 0.25 <= result.metrics["top_class_share"] <= 1.0
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(result.metrics)
