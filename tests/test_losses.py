"""Loss terms against the textbook formulas, computed independently in float64 NumPy."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from hf_task_distill.losses import DistillationLoss, LossInputs, available_losses, build_loss


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def textbook_kd(student, teacher, temperature):
    """Hinton et al.: T^2 * mean over rows of sum_j p_j (log p_j - log q_j), p = teacher, q = student."""
    p = _softmax(teacher / temperature)
    q = _softmax(student / temperature)
    return float(temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def textbook_ce(student, labels):
    rows = labels != -100
    if not rows.any():
        return 0.0
    q = _softmax(student[rows])
    return float(-np.mean(np.log(q[np.arange(rows.sum()), labels[rows]])))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("shape", [(1, 3), (7, 5), (32, 100)])
@pytest.mark.parametrize("labelled", ["none", "mixed", "all"])
def test_kd_loss_matches_textbook(temperature, shape, labelled):
    rng = np.random.default_rng(zlib.crc32(repr((temperature, shape, labelled)).encode()))
    student = rng.normal(0, 3, shape)
    teacher = rng.normal(0, 3, shape)
    labels = rng.integers(0, shape[1], shape[0])
    if labelled == "none":
        labels[:] = -100
    elif labelled == "mixed":
        labels[rng.random(shape[0]) < 0.5] = -100
        labels[0] = 0  # at least one labelled row
    kd_weight, ce_weight = 0.8, 0.3

    loss = build_loss("kd", temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight)
    total, parts = loss(LossInputs(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels)))

    expected_kd = textbook_kd(student, teacher, temperature)
    expected_ce = textbook_ce(student, labels)
    assert parts["kd"].dtype == torch.float64  # computed in the inputs' precision, not downcast
    assert parts["kd"].item() == pytest.approx(expected_kd, rel=1e-9, abs=1e-12)
    assert parts["ce"].item() == pytest.approx(expected_ce, rel=1e-9, abs=1e-12)
    assert total.item() == pytest.approx(
        kd_weight * expected_kd + ce_weight * expected_ce, rel=1e-9, abs=1e-12
    )
    # float32 logits (what a model emits) agree to float32 precision
    total32, _ = loss(
        LossInputs(torch.tensor(student).float(), torch.tensor(teacher).float(), torch.tensor(labels))
    )
    assert total32.item() == pytest.approx(total.item(), rel=1e-4, abs=1e-6)


def test_kd_is_zero_when_student_matches_teacher_and_positive_otherwise():
    logits = torch.randn(6, 10)
    loss = build_loss("function_matching", temperature=3.0)
    assert loss(LossInputs(logits, logits.clone()))[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss(LossInputs(logits, logits.flip(-1)))[0].item() > 0.1


def test_function_matching_ignores_labels():
    s, t = torch.randn(8, 4), torch.randn(8, 4)
    fm = build_loss("function_matching", temperature=2.0)
    with_labels = fm(LossInputs(s, t, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])))[0]
    without = fm(LossInputs(s, t, None))[0]
    assert with_labels.item() == pytest.approx(without.item())
    assert with_labels.item() == pytest.approx(
        textbook_kd(s.double().numpy(), t.double().numpy(), 2.0), rel=1e-5
    )
    with pytest.raises(ValueError, match="ce_weight=0"):
        build_loss("function_matching", ce_weight=0.5)


def test_row_counts_from_the_accumulation_window_set_the_denominators():
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, -100, 2, -100])
    loss = build_loss("kd", temperature=1.0, kd_weight=1.0, ce_weight=1.0)
    own = loss(LossInputs(s, t, labels))[1]
    window = loss(LossInputs(s, t, labels), {"all": torch.tensor(8.0), "labelled": torch.tensor(5.0)})[1]
    assert window["kd"].item() == pytest.approx(own["kd"].item() * 4 / 8)
    assert window["ce"].item() == pytest.approx(own["ce"].item() * 2 / 5)


def test_gradients_reach_the_student_only():
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    total, _ = build_loss("kd", temperature=2.0)(LossInputs(s, t.detach()))
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_registry_and_bad_parameters():
    assert {"kd", "function_matching", "ce"} <= set(available_losses())
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        build_loss("nope")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_loss("kd", temperature=0.0)
    with pytest.raises(ValueError, match="at least one term"):
        DistillationLoss({})
    assert not build_loss("ce").requires_teacher and build_loss("kd").requires_teacher
