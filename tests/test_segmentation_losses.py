"""Per-pixel distillation (semantic segmentation): the loss against a NumPy reference, ignored pixels,
and the window normalisation (2x16 accumulation = 1x32, two processes = one) with masks whose
micro-batches hold different numbers of labelled pixels."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import distill_args

from hf_task_distill import DistillationTrainer
from hf_task_distill.data.validation import IGNORE_INDEX, labelled_positions
from hf_task_distill.data.views import PairedViews, ViewSpec
from hf_task_distill.losses import (
    DistillationLoss,
    FeatureCosine,
    LabelCrossEntropy,
    LossInputs,
    SoftTargetKL,
    build_loss,
)
from hf_task_distill.metrics import distillation_metrics, mean_iou

NUM_LABELS = 5
CLASSES = [f"class{i}" for i in range(NUM_LABELS)]


def tiny_segformer(seed: int, *, batch_norm: bool = True, hidden_sizes=(8, 16)):
    """A 2-stage, 8/16-wide SegFormer (logits at a quarter of the input size), without dropout,
    initialised wide enough that two of them disagree.

    ``batch_norm=False`` replaces its decode head's BatchNorm by the identity: batch statistics
    differ between a batch of 16 and one of 32 by design, so only without it can those runs agree.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=list(hidden_sizes),
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
        initializer_range=0.5,  # logits of spread ~1.4 (the default 0.02 gives ~0.05: KL ~ 0)
        num_labels=NUM_LABELS,
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
    )
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config)
    if not batch_norm:
        model.decode_head.batch_norm = torch.nn.Identity()
    return model


class MaskDataset(torch.utils.data.Dataset):
    """Pre-rendered views with masks: each row keeps a random share of its pixels (0 to 100%), every
    third row is an unlabelled transfer image (all ``255``), so micro-batches differ in labelled pixels."""

    def __init__(self, n: int, seed: int, size: int = 32, teacher_size: int = 64):
        g = torch.Generator().manual_seed(seed)
        self.student = torch.randn(n, 3, size, size, generator=g)
        self.teacher = torch.randn(n, 3, teacher_size, teacher_size, generator=g)
        masks = torch.randint(0, NUM_LABELS, (n, size, size), generator=g)
        share = torch.rand(n, 1, 1, generator=g)
        keep = torch.rand(n, size, size, generator=g) < share
        keep[torch.arange(n) % 3 == 1] = False
        self.masks = torch.where(keep, masks, torch.full_like(masks, IGNORE_INDEX))

    def __len__(self):
        return len(self.student)

    def __getitem__(self, i):
        return {
            "pixel_values": self.student[i],
            "teacher_pixel_values": self.teacher[i],
            "labels": self.masks[i],
        }


# ---- the loss against a float64 NumPy reference ------------------------------------------------------


def _log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def reference_loss(student, teacher, labels, *, temperature, kd_weight, ce_weight):
    """``kd_weight * mean over all pixels of T^2 KL + ce_weight * mean over labelled pixels of CE``, in
    NumPy float64; ``student``/``teacher`` `[batch, classes, h, w]` on the same grid, ``labels``
    `[batch, h, w]` on that grid too."""
    t = temperature
    log_q = _log_softmax(student / t, axis=1)
    log_p = _log_softmax(teacher / t, axis=1)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)  # [batch, h, w]
    kd = t * t * kl.mean()
    valid = (labels != IGNORE_INDEX) & (labels != -100)
    log_s = _log_softmax(student, axis=1)
    picked = np.take_along_axis(log_s, np.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    ce = -(picked[valid]).sum() / max(valid.sum(), 1)
    return kd_weight * kd + ce_weight * ce, kd, ce


def _dense_batch(seed, *, batch=3, grid=8):
    rng = np.random.default_rng(seed)
    student = rng.normal(0, 2, size=(batch, NUM_LABELS, grid, grid))
    teacher = rng.normal(0, 2, size=(batch, NUM_LABELS, grid, grid))
    labels = rng.integers(0, NUM_LABELS, size=(batch, grid, grid))
    labels[rng.random((batch, grid, grid)) < 0.3] = IGNORE_INDEX  # ignored pixels
    labels[-1] = IGNORE_INDEX  # an unlabelled transfer image
    return student, teacher, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("ce_weight", [0.0, 0.7])
def test_per_pixel_loss_matches_numpy_reference(temperature, ce_weight):
    student, teacher, labels = _dense_batch(seed=int(temperature * 10))
    loss = build_loss("kd", temperature=temperature, kd_weight=1.0, ce_weight=ce_weight)
    total, parts = loss(
        LossInputs(torch.from_numpy(student), torch.from_numpy(teacher), torch.from_numpy(labels))
    )
    expected, kd, ce = reference_loss(
        student, teacher, labels, temperature=temperature, kd_weight=1.0, ce_weight=ce_weight
    )
    assert total.dtype == torch.float64
    np.testing.assert_allclose(parts["kd"].item(), kd, rtol=1e-12)
    np.testing.assert_allclose(total.item(), expected, rtol=1e-12)
    if ce_weight:
        np.testing.assert_allclose(parts["ce"].item(), ce, rtol=1e-12)
    else:
        assert "ce" not in parts


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_teacher_logits_are_resized_to_the_student_grid(temperature):
    student, _, _ = _dense_batch(seed=3, grid=8)
    teacher = np.random.default_rng(4).normal(0, 2, size=(3, NUM_LABELS, 16, 16))
    on_grid = torch.nn.functional.interpolate(
        torch.from_numpy(teacher), size=(8, 8), mode="bilinear", align_corners=False
    ).numpy()
    kl = SoftTargetKL(temperature).per_row(LossInputs(torch.from_numpy(student), torch.from_numpy(teacher)))
    log_q, log_p = _log_softmax(student / temperature, 1), _log_softmax(on_grid / temperature, 1)
    expected = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean(axis=(1, 2))
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-12)


def test_masks_larger_than_the_logits_match_segformers_own_loss():
    """Logits at a quarter of the mask size are upsampled as transformers' SegFormer does for its loss."""
    model = tiny_segformer(0)
    pixels = torch.randn(4, 3, 32, 32)
    labels = MaskDataset(4, seed=2).masks
    labels[0] = IGNORE_INDEX
    with torch.no_grad():
        outputs = model(pixel_values=pixels, labels=labels)
    assert outputs.logits.shape[-2:] == (8, 8)
    total, _ = DistillationLoss({"ce": (1.0, LabelCrossEntropy())})(LossInputs(outputs.logits, labels=labels))
    torch.testing.assert_close(total, outputs.loss, rtol=1e-6, atol=1e-7)


def test_dense_feature_cosine_matches_numpy_reference():
    rng = np.random.default_rng(5)
    student, teacher = rng.normal(size=(2, 6, 4, 4)), rng.normal(size=(2, 6, 4, 4))
    values = FeatureCosine().per_row(
        LossInputs(torch.zeros(2, 3), student_features=torch.from_numpy(student),
                   teacher_features=torch.from_numpy(teacher))
    )  # fmt: skip
    cos = (student * teacher).sum(1) / np.linalg.norm(student, axis=1) / np.linalg.norm(teacher, axis=1)
    np.testing.assert_allclose(values.numpy(), (1 - cos).mean(axis=(1, 2)), rtol=1e-12)


# ---- ignored pixels ------------------------------------------------------------------------------------


def test_ignored_pixels_do_not_reach_the_label_term():
    student, _, labels = _dense_batch(seed=7)
    labels[0, 0, :4] = -100  # the row convention is honoured in masks too
    ignored = torch.from_numpy(~labelled_positions(labels))
    logits = torch.from_numpy(student)
    changed = torch.where(ignored[:, None], torch.randn_like(logits) * 50, logits)
    assert not torch.equal(changed, logits)
    term = LabelCrossEntropy()
    before = term.per_row(LossInputs(logits, labels=torch.from_numpy(labels)))
    after = term.per_row(LossInputs(changed, labels=torch.from_numpy(labels)))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert before[-1] == 0  # the all-255 row


def test_a_batch_without_labelled_pixels_gives_a_zero_label_term_and_no_nan():
    student = torch.randn(2, NUM_LABELS, 8, 8, requires_grad=True)
    teacher = torch.randn(2, NUM_LABELS, 8, 8)
    labels = torch.full((2, 32, 32), IGNORE_INDEX)
    loss = build_loss("kd", temperature=2.0, ce_weight=0.5)
    inputs = LossInputs(student, teacher, labels)
    assert loss.row_counts(inputs)["labelled"] == 0
    total, parts = loss(inputs)
    assert parts["ce"].item() == 0.0
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(student.grad).all()
    torch.testing.assert_close(total, parts["kd"])


def test_labelled_count_of_masks_is_their_labelled_pixels():
    _, _, labels = _dense_batch(seed=9)
    counts = DistillationLoss.row_counts(
        LossInputs(torch.zeros(3, NUM_LABELS, 8, 8), labels=torch.from_numpy(labels))
    )
    assert counts["all"] == 3
    assert counts["labelled"] == int(((labels != IGNORE_INDEX) & (labels != -100)).sum())


def test_dense_metrics_are_per_pixel():
    student = np.array([[[0, 1], [2, 2]], [[1, 1], [0, 0]]])
    teacher = np.array([[[0, 1], [2, 0]], [[1, 1], [1, 0]]])
    labels = np.array([[[0, 1], [2, IGNORE_INDEX]], [[IGNORE_INDEX] * 2, [0, 1]]])

    class Prediction:
        predictions, label_ids = (student, teacher), labels

    metrics = distillation_metrics(Prediction)
    assert metrics["agreement"] == pytest.approx(6 / 8)
    assert metrics["accuracy"] == pytest.approx(4 / 5)  # the 5 labelled pixels
    assert metrics["teacher_accuracy"] == pytest.approx(3 / 5)
    assert metrics["mean_iou"] == pytest.approx(
        mean_iou(np.array([0, 1, 2, 0, 0]), np.array([0, 1, 2, 0, 1]))
    )
    # class 0: 2 right of 3 predicted or labelled, class 1: 1 of 2, class 2: 1 of 1
    assert metrics["mean_iou"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


# ---- the trainer: the window's labelled pixels --------------------------------------------------------


class RecordingTrainer(DistillationTrainer):
    """Records each micro-batch's labelled pixels, to check that the comparison covers unequal ones."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, window = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.labelled_pixels = [*getattr(self, "labelled_pixels", []),
                                [int(labelled_positions(b["labels"]).sum()) for b in batches]]  # fmt: skip
        self.windows = [*getattr(self, "windows", []), (int(window.all), int(window.labelled))]
        return batches, window


def _one_run(tmp_path, name, batch, accumulation, dataset):
    teacher = tiny_segformer(0)
    student = tiny_segformer(1, batch_norm=False)
    args = distill_args(
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
    trainer = RecordingTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    ce = [e["loss_ce"] for e in trainer.state.log_history if "loss" in e]
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    # the window's denominators: its images, and its labelled pixels (not rows, not the 255s)
    assert trainer.windows == [(batch * accumulation, sum(p)) for p in trainer.labelled_pixels]
    return state, losses, ce, trainer.labelled_pixels


def test_gradient_accumulation_matches_one_big_batch_with_masks(tmp_path):
    dataset = MaskDataset(64, seed=5)
    big, big_losses, big_ce, _ = _one_run(tmp_path, "big", batch=32, accumulation=1, dataset=dataset)
    small, small_losses, small_ce, pixels = _one_run(
        tmp_path, "acc", batch=16, accumulation=2, dataset=dataset
    )
    assert len(pixels) == 2 and all(len(window) == 2 and window[0] != window[1] for window in pixels), pixels
    assert len(big_losses) == len(small_losses) == 2
    np.testing.assert_allclose(small_losses, big_losses, rtol=1e-5)
    np.testing.assert_allclose(small_ce, big_ce, rtol=1e-5)
    initial = tiny_segformer(1, batch_norm=False).state_dict()
    moved = max((big[k].float() - initial[k].float()).abs().max().item() for k in big)
    assert moved > 1e-3  # the comparison means something: two SGD steps changed the weights
    for key in big:
        torch.testing.assert_close(small[key], big[key], rtol=1e-4, atol=1e-6)


def test_evaluation_reports_pixel_metrics_with_and_without_masks(tmp_path):
    dataset = MaskDataset(8, seed=6)
    trainer = DistillationTrainer(
        model=tiny_segformer(1), teacher_model=tiny_segformer(0), args=distill_args(tmp_path, distill_loss="kd"),
        eval_dataset=dataset,
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_agreement", "eval_accuracy", "eval_mean_iou", "eval_teacher_mean_iou"} <= set(
        metrics
    )
    assert all(0 <= metrics[k] <= 1 for k in ("eval_agreement", "eval_accuracy", "eval_mean_iou"))
    unlabelled = [{k: v for k, v in dataset[i].items() if k != "labels"} for i in range(len(dataset))]
    metrics = trainer.evaluate(eval_dataset=unlabelled)
    assert "eval_agreement" in metrics and "eval_accuracy" not in metrics


def test_dense_feature_matching_compares_last_feature_maps_through_a_1x1_projection(tmp_path):
    teacher = tiny_segformer(0, hidden_sizes=(8, 24))
    student = tiny_segformer(1)
    dataset = MaskDataset(8, seed=7)
    args = distill_args(tmp_path, distill_loss="feature_cosine", per_device_train_batch_size=4, max_steps=2)
    views = PairedViews(
        ViewSpec((64, 64)), ViewSpec((32, 32))
    )  # models built from a config name no processor
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, views=views
    )
    projection = student.feature_projection
    assert isinstance(projection, torch.nn.Conv2d)
    assert (projection.in_channels, projection.out_channels, projection.kernel_size) == (16, 24, (1, 1))

    batch = {
        k: torch.stack([dataset[i][k] for i in range(4)]) for k in ("pixel_values", "teacher_pixel_values")
    }
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        # the reference: each model's last encoder stage, as transformers returns it
        s_map = student(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states[-1]
        t_map = teacher(pixel_values=batch["teacher_pixel_values"], output_hidden_states=True).hidden_states[
            -1
        ]
    assert s_map.shape[-2:] == (4, 4) and t_map.shape[-2:] == (8, 8)  # the teacher's map is resized
    t_map = torch.nn.functional.interpolate(t_map, size=(4, 4), mode="bilinear", align_corners=False)
    expected = (1 - torch.nn.functional.cosine_similarity(projection(s_map), t_map, dim=1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))  # the projection is a bridge, not part of the student
    from safetensors.torch import load_file

    assert not any("feature_projection" in k for k in load_file(tmp_path / "saved" / "model.safetensors"))


# ---- two processes ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one_with_masks(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_multiprocess import SCRIPT, _run, _run_two_ranks

    single, double = tmp_path / "single", tmp_path / "double"
    flags = ["--task", "segmentation"]
    _run([sys.executable, SCRIPT, "--output_dir", str(single), "--per_device_batch", "32", *flags], tmp_path)
    _run_two_ranks(
        [SCRIPT, "--output_dir", str(double), "--per_device_batch", "16", *flags], tmp_path, port=29544
    )
    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 4
    # the ranks' shares of each step held different numbers of labelled pixels
    assert any(a != b for a, b in two["labelled_pixels_by_rank"]), two["labelled_pixels_by_rank"]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(two["loss_ce"], one["loss_ce"], rtol=1e-4)
    assert one["losses"][0] != pytest.approx(one["losses"][-1], rel=1e-3)
    a = torch.load(single / "student.pt", weights_only=True)
    b = torch.load(double / "student.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)
