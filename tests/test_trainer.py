"""DistillationTrainer behaviour: learning from unlabelled data, a frozen teacher, GA-correct loss, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import LABELS, distill_args, make_colour_dataset, tiny_dinov2, tiny_processor
from transformers import TrainerCallback

from hf_task_distill import DistillationTrainer, create_student, load_teacher
from hf_task_distill.data.images import ImageDecodeError
from hf_task_distill.losses import DistillationLoss, LabelCrossEntropy, SoftTargetKL, register_loss

_args = distill_args


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_student_learns_from_unlabelled_data_and_teacher_stays_frozen(
    tmp_path, trained_teacher_dir, colour_splits
):
    teacher = load_teacher(str(trained_teacher_dir))
    before = _state(teacher)
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    transfer = colour_splits["transfer"]
    assert "label" not in transfer.column_names  # the transfer set carries no labels at all

    args = _args(tmp_path, num_train_epochs=6, save_strategy="epoch", save_total_limit=1, temperature=2.0)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=transfer,
        eval_dataset=colour_splits["test"],
    )
    untrained = trainer.evaluate()
    trainer.train()
    metrics = trainer.evaluate()

    chance = 1 / len(LABELS)
    print(f"\nbefore: {untrained}\nafter: {metrics}")
    assert metrics["eval_teacher_accuracy"] > 0.95
    assert untrained["eval_accuracy"] < 0.5
    assert metrics["eval_accuracy"] > 0.85, metrics  # far above chance (0.25) without a single label
    assert metrics["eval_agreement"] > 0.85
    assert metrics["eval_accuracy"] > chance + 0.5

    after = _state(trainer.teacher_model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before), "teacher weights changed"
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not trainer.teacher_model.training

    # checkpoints hold the student only
    checkpoints = [d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-")]
    assert checkpoints
    from safetensors.torch import load_file

    keys = load_file(os.path.join(args.output_dir, checkpoints[0], "model.safetensors")).keys()
    assert not any("dinov2" in k or "embeddings" in k for k in keys)
    assert set(keys) == set(
        student.state_dict().keys()
    )  # the student, in its own key names, and nothing else


def test_training_logs_each_loss_term(tmp_path, trained_teacher_dir):
    teacher = load_teacher(str(trained_teacher_dir))
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    mixed = make_colour_dataset(64, seed=11)
    mixed = mixed.map(lambda row, i: {"label": -1 if i % 2 else row["label"]}, with_indices=True)
    args = _args(tmp_path, distill_loss="kd", ce_weight=0.5, logging_steps=1, max_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=mixed)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all({"loss_kd", "loss_ce"} <= set(entry) for entry in logged)
    for entry in logged:
        assert entry["loss"] == pytest.approx(entry["loss_kd"] + 0.5 * entry["loss_ce"], rel=1e-3)


def _tensor_dataset(n: int, seed: int, num_labels: int = 4, labelled_every: int = 3):
    """Pre-rendered views (no augmentation randomness) with a mix of labelled and unlabelled rows."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, 3, 32, 32, generator=g)
    teacher = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    labels[torch.arange(n) % labelled_every != 0] = -100
    return Dataset.from_dict(
        {"pixel_values": student.numpy(), "teacher_pixel_values": teacher.numpy(), "labels": labels.numpy()}
    ).with_format("torch")


def _one_run(tmp_path, name, batch, accumulation, dataset):
    torch.manual_seed(0)
    teacher = tiny_dinov2()
    torch.manual_seed(1)
    student = create_student("test_convnext", teacher.config.id2label, image_size=32)
    args = _args(
        tmp_path / name,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=2,
        temperature=2.0,
        distill_loss="kd",
        ce_weight=0.7,
        max_grad_norm=0.0,
        logging_steps=1,
        dataloader_drop_last=True,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return _state(student), losses


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    dataset = _tensor_dataset(64, seed=5)  # a third of the rows labelled: both loss terms are exercised
    big, big_losses = _one_run(tmp_path, "big", batch=32, accumulation=1, dataset=dataset)
    small, small_losses = _one_run(tmp_path, "acc", batch=16, accumulation=2, dataset=dataset)
    assert len(big_losses) == len(small_losses) == 2
    np.testing.assert_allclose(small_losses, big_losses, rtol=1e-5)
    worst = max((small[k].float() - big[k].float()).abs().max().item() for k in big)
    print(f"\nlosses 1x32 {big_losses} vs 2x16 {small_losses}; max weight difference {worst:.2e}")
    torch.manual_seed(1)
    initial = _state(create_student("test_convnext", dict(enumerate(LABELS)), image_size=32))
    moved = max((big[k].float() - initial[k].float()).abs().max().item() for k in big)
    assert moved > 1e-3  # the comparison means something: two SGD steps changed the weights
    for key in big:
        torch.testing.assert_close(small[key], big[key], rtol=1e-4, atol=1e-6)


def test_custom_loss_from_registry_needs_no_trainer_change(tmp_path, trained_teacher_dir):
    calls = []

    class Recorded(SoftTargetKL):
        def per_row(self, inputs):
            calls.append(inputs.student_logits.shape[0])
            return super().per_row(inputs)

    @register_loss("recorded_kd")
    def _build(*, temperature=1.0, **_):
        return DistillationLoss({"kd": (1.0, Recorded(temperature)), "ce": (0.0, LabelCrossEntropy())})

    teacher = load_teacher(str(trained_teacher_dir))
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    args = _args(tmp_path, loss_name="recorded_kd", max_steps=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=make_colour_dataset(32, 4, labelled=False),
    )
    trainer.train()
    assert calls == [32]


@pytest.fixture
def teacher_and_student(trained_teacher_dir):
    teacher = load_teacher(str(trained_teacher_dir))
    return teacher, create_student("test_resnet", teacher.config.id2label, image_size=32)


def test_label_space_mismatch_is_refused(tmp_path, trained_teacher_dir):
    teacher = load_teacher(str(trained_teacher_dir))
    three = create_student("test_resnet", LABELS[:3], image_size=32)
    with pytest.raises(ValueError, match="teacher predicts 4 classes, the student 3"):
        DistillationTrainer(model=three, teacher_model=teacher, args=_args(tmp_path))
    renamed = create_student("test_resnet", ["red", "green", "yellow", "blue"], image_size=32)
    with pytest.raises(ValueError, match="teacher 'blue' vs student 'yellow'"):
        DistillationTrainer(model=renamed, teacher_model=teacher, args=_args(tmp_path))


def test_out_of_range_labels_are_refused_before_training(tmp_path, teacher_and_student):
    teacher, student = teacher_and_student
    bad = make_colour_dataset(8, seed=6).cast_column("label", __import__("datasets").Value("int64"))
    bad = bad.map(lambda row, i: {"label": 7 if i == 5 else row["label"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"label column 'label' has 1 id\(s\) outside \[0, 4\) \(row 5: 7\)"):
        DistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path), train_dataset=bad)


def test_empty_split_is_refused(tmp_path, teacher_and_student):
    teacher, student = teacher_and_student
    empty = make_colour_dataset(4, seed=6).select([])
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=_args(tmp_path),
            train_dataset=make_colour_dataset(4, seed=7),
            eval_dataset=empty,
        )


def test_dataset_without_image_column_is_refused(tmp_path, teacher_and_student):
    from datasets import Dataset

    teacher, student = teacher_and_student
    no_images = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(
        ValueError, match="train_dataset has no image column 'image' \\(columns: text, label\\)"
    ):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=_args(tmp_path), train_dataset=no_images
        )


def test_distillation_loss_without_teacher_is_refused(tmp_path):
    student = create_student("test_resnet", LABELS, image_size=32)
    with pytest.raises(ValueError, match="loss 'kd' needs a teacher"):
        DistillationTrainer(model=student, args=_args(tmp_path, distill_loss="kd"))
    with pytest.raises(ValueError, match="loss 'function_matching' needs a teacher"):
        DistillationTrainer(model=student, args=_args(tmp_path))  # the default, the paper's


def test_evaluation_on_unlabelled_data_reports_agreement(tmp_path, teacher_and_student, colour_splits):
    teacher, student = teacher_and_student
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path),
        eval_dataset=colour_splits["transfer"].select(range(40)),
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_agreement"] <= 1.0
    assert "eval_accuracy" not in metrics
    assert metrics["eval_loss"] > 0


def test_teacher_by_path_bf16_autocast_and_loader_workers(tmp_path, trained_teacher_dir, colour_splits):
    """The configuration users run: teacher given by path, mixed precision, DataLoader workers."""
    student = create_student("test_resnet", LABELS, image_size=32)
    args = _args(tmp_path, max_steps=3, bf16=True, dataloader_num_workers=2, logging_steps=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=str(trained_teacher_dir),
        args=args,
        train_dataset=colour_splits["transfer"],
    )
    before = _state(trainer._teacher)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    teacher = trainer.teacher_model
    assert hasattr(teacher, "_original_forward")  # accelerate wrapped its forward in bf16 autocast
    x = torch.randn(2, 3, 32, 32)
    assert teacher(pixel_values=x).logits.dtype == torch.float32  # outputs converted back to fp32
    assert all(torch.equal(before[k], v) for k, v in _state(teacher).items())


def test_unusual_image_modes_flow_through_training(tmp_path, trained_teacher_dir):
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 255, (30, 34, 3), dtype=np.uint8)) for _ in range(5)]
    images = [
        rgb[0].convert("L"),
        rgb[1].convert("RGBA"),
        rgb[2].convert("CMYK"),
        Image.fromarray(rng.integers(0, 65535, (30, 34), dtype=np.uint16)),
        rgb[4].convert("P"),
    ] * 2
    ds = Dataset.from_dict({"image": images}).cast_column("image", ImageFeature())
    student = create_student("test_resnet", LABELS, image_size=32)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=str(trained_teacher_dir),
        args=_args(tmp_path, max_steps=1, per_device_train_batch_size=10),
        train_dataset=ds,
    )
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


def _poisoned(dataset, row: int, column: str):
    """``dataset`` with NaN pixels in one row of ``column``."""
    from datasets import Dataset

    data = dataset.with_format("numpy")[:]
    data[column][row] = np.nan
    return Dataset.from_dict(data).with_format("torch")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            "teacher_pixel_values",
            r"teacher logits are not finite for 1 row\(s\) of the batch in optimizer step 2",
        ),
        ("pixel_values", r"the loss is nan in optimizer step 2"),
    ],
    ids=["teacher", "student"],
)
def test_a_non_finite_batch_stops_training_before_the_weights_change(tmp_path, column, message):
    dataset = _poisoned(_tensor_dataset(16, seed=3), row=13, column=column)  # second batch of 8
    torch.manual_seed(0)
    teacher = tiny_dinov2()
    student = create_student("test_convnext", teacher.config.id2label, image_size=32)
    args = _args(tmp_path, per_device_train_batch_size=8, max_steps=2, learning_rate=0.05, optim="sgd")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset)
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append(_state(student))

    trainer.add_callback(Snapshot())
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()
    assert len(snapshots) == 1  # the first step ran; the poisoned second one never reached the weights
    after = _state(student)
    assert all(torch.equal(snapshots[0][k], after[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


RESUME_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distill_resume_run.py")


def test_a_distillation_killed_between_checkpoints_resumes_to_the_uninterrupted_result(tmp_path):
    """Optimizer, scheduler, RNG (the random views) and data position all come back from the checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([sys.executable, RESUME_SCRIPT, "--output_dir", str(killed), "--slow"])
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.05)
    time.sleep(0.7)  # into step 5 or 6, past the checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "checkpoint-4").exists() and not (killed / "final.safetensors").exists()
    for folder, extra in ((killed, ["--resume"]), (clean, [])):
        done = subprocess.run(
            [sys.executable, RESUME_SCRIPT, "--output_dir", str(folder), *extra], timeout=300
        )
        assert done.returncode == 0
    resumed, uninterrupted = load_file(killed / "final.safetensors"), load_file(clean / "final.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key  # bit-identical on CPU


def test_unreadable_transfer_images_are_skipped_counted_and_the_rest_trained_on(tmp_path):
    """Online distillation on an unchecked transfer set: bad rows are dropped from their batch and
    counted (every epoch meets them again; each is counted once); the good rows train as usual."""
    from datasets import Dataset, Features, concatenate_datasets
    from datasets import Image as ImageFeature

    good = make_colour_dataset(12, seed=5, labelled=False).cast_column("image", ImageFeature(decode=False))
    cells = [{"bytes": b"not an image", "path": None}, {"bytes": b"", "path": "empty.jpg"}]
    bad = Dataset.from_dict({"image": cells}, features=Features({"image": ImageFeature(decode=False)}))
    transfer = concatenate_datasets([good.select(range(5)), bad, good.select(range(5, 12))])
    torch.manual_seed(0)
    teacher = tiny_dinov2()
    student = create_student("test_convnext", teacher.config.id2label, image_size=32)
    before = _state(student)
    args = distill_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2, logging_steps=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        teacher_processor=tiny_processor(),
        args=args,
        train_dataset=transfer,
    )
    trainer.train()
    assert trainer.skipped_rows == [5, 6]
    assert trainer.state.global_step == 8  # 14 rows in batches of 4, two epochs: no batch was lost
    assert any(not torch.equal(before[k], v) for k, v in _state(student).items())
    # without skipping (a labelled set) the same row is an error that names it
    views = trainer.views.apply(transfer, train=True)
    with pytest.raises(ImageDecodeError, match=r"row 6 \(empty.jpg\): cannot decode"):
        views[6]


@pytest.mark.parametrize("loss_name", ["feature_cosine", "feature_contrastive"])
def test_task_agnostic_feature_distillation_aligns_features_and_saves_a_plain_student(
    tmp_path, trained_teacher_dir, colour_splits, loss_name
):
    """The paper's baseline as a loss: a learned projection of the student's features matches the
    teacher's image features; no label space is shared, and the saved student has no projection."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    teacher = load_teacher(str(trained_teacher_dir))
    student = create_student("test_resnet", ["a", "b"], image_size=32)  # another label space
    args = _args(
        tmp_path,
        loss_name=loss_name,
        temperature=0.1,
        num_train_epochs=6,
        save_strategy="epoch",
        save_total_limit=1,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=colour_splits["transfer"],
        eval_dataset=colour_splits["test"].remove_columns("label"),  # its labels are not the student's
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print(f"\n{loss_name}: eval loss {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before, (before, after)

    checkpoint = [d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-")][0]
    saved = load_file(os.path.join(args.output_dir, checkpoint, "model.safetensors"))
    assert "feature_projection.weight" in saved  # a resumed run gets its projection back
    trainer.save_model(str(tmp_path / "student"))
    final = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert not any("feature_projection" in k for k in final)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_labels == 2 and hasattr(student, "feature_projection")


def test_feature_distillation_needs_a_teacher_model_not_a_cache(tmp_path):
    student = create_student("test_resnet", LABELS, image_size=32)
    with pytest.raises(ValueError, match="matches the teacher's image features: pass teacher_model="):
        DistillationTrainer(model=student, args=_args(tmp_path, loss_name="feature_cosine"))
