"""Distillation losses as small, composable terms, found by name in a registry.

A term returns one loss value per row plus which rows it averages over (``"all"`` rows, or only the
``"labelled"`` ones). :class:`DistillationLoss` sums weighted terms and divides each by the number of
rows it covers; the trainer passes those counts for the whole gradient-accumulation window (and all
processes), which is what makes 2x16 accumulation equal to one batch of 32, unlabelled rows included.

New objectives need no trainer change: ``@register_loss("name")`` on a builder that returns a
:class:`DistillationLoss`, then ``DistillationArguments(distill_loss="name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.validation import UNLABELLED

__all__ = [
    "DistillationLoss",
    "FeatureContrastive",
    "FeatureCosine",
    "LabelCrossEntropy",
    "LossInputs",
    "LossTerm",
    "SoftTargetKL",
    "available_losses",
    "build_loss",
    "register_loss",
]


@dataclass
class LossInputs:
    """What a loss term may look at for one batch. Labels use ``-100`` for unlabelled rows."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    #: For feature terms: the student's image features mapped to the teacher's width by the
    #: trainer's learned projection, and the teacher's image features (each ``[batch, dim]``).
    student_features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None

    def labelled_mask(self) -> torch.Tensor:
        if self.labels is None:
            return torch.zeros(
                self.student_logits.shape[0], dtype=torch.bool, device=self.student_logits.device
            )
        return self.labels != UNLABELLED


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax statistics in fp32 even under bf16/fp16 autocast; fp64 inputs stay fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LossTerm(nn.Module):
    """One loss term: ``per_row`` gives a ``[batch]`` tensor, zero on rows the term does not cover."""

    rows: str = "all"  # "all" or "labelled": the rows this term is averaged over
    requires_teacher: bool = False
    requires_features: bool = False  # the trainer then supplies projected student and teacher features

    def per_row(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SoftTargetKL(LossTerm):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per row (Hinton et al., 2015).

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures. Every row counts,
    labelled or not: the teacher's prediction is the target.
    """

    rows = "all"
    requires_teacher = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise ValueError("the KL term needs teacher logits, but the batch has none")
        t = self.temperature
        student_log_p = F.log_softmax(_at_least_fp32(inputs.student_logits) / t, dim=-1)
        teacher_log_p = F.log_softmax(_at_least_fp32(inputs.teacher_logits) / t, dim=-1)
        kl = F.kl_div(student_log_p, teacher_log_p, reduction="none", log_target=True).sum(dim=-1)
        return kl * (t * t)


class LabelCrossEntropy(LossTerm):
    """Cross-entropy on the rows that carry a label (``labels != -100``); other rows contribute 0."""

    rows = "labelled"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        logits = _at_least_fp32(inputs.student_logits)
        if inputs.labels is None:
            return logits.new_zeros(logits.shape[0])
        return F.cross_entropy(
            logits,
            inputs.labels,
            ignore_index=UNLABELLED,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )


def _feature_pair(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.student_features is None or inputs.teacher_features is None:
        raise ValueError("a feature term needs student and teacher features, but the batch has none")
    return _at_least_fp32(inputs.student_features), _at_least_fp32(inputs.teacher_features)


class FeatureCosine(LossTerm):
    """``1 - cos(projected student features, teacher features)`` per row: the task-agnostic feature
    distillation baseline of the paper (match the foundation model's image embedding)."""

    rows = "all"
    requires_teacher = True
    requires_features = True

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        student, teacher = _feature_pair(inputs)
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1)


class FeatureContrastive(LossTerm):
    """InfoNCE between projected student and teacher features within a batch: each student row must
    pick its own image's teacher feature among the batch's (the contrastive variant of the baseline)."""

    rows = "all"
    requires_teacher = True
    requires_features = True

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        student, teacher = _feature_pair(inputs)
        similarity = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / self.temperature
        targets = torch.arange(similarity.shape[0], device=similarity.device)
        return F.cross_entropy(similarity, targets, reduction="none")


class DistillationLoss(nn.Module):
    """A weighted sum of named :class:`LossTerm` s, each averaged over the rows it covers."""

    def __init__(self, terms: Mapping[str, tuple[float, LossTerm]]):
        super().__init__()
        active = {name: (float(w), term) for name, (w, term) in terms.items() if w != 0}
        if not active:
            raise ValueError("a distillation loss needs at least one term with a non-zero weight")
        self.weights = {name: w for name, (w, _) in active.items()}
        self.terms = nn.ModuleDict({name: term for name, (_, term) in active.items()})

    @property
    def requires_teacher(self) -> bool:
        return any(term.requires_teacher for term in self.terms.values())

    @property
    def requires_features(self) -> bool:
        return any(term.requires_features for term in self.terms.values())

    @property
    def requires_teacher_logits(self) -> bool:
        return any(term.requires_teacher and not term.requires_features for term in self.terms.values())

    @staticmethod
    def row_counts(inputs: LossInputs) -> dict[str, torch.Tensor]:
        """Rows each kind of term covers in this batch."""
        n = inputs.student_logits.shape[0]
        return {
            "all": inputs.student_logits.new_tensor(float(n)),
            "labelled": inputs.labelled_mask().sum().float(),
        }

    def forward(
        self, inputs: LossInputs, row_counts: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and each term's value. ``row_counts`` default to this batch's own counts."""
        counts = row_counts if row_counts is not None else self.row_counts(inputs)
        total, parts = None, {}
        for name, term in self.terms.items():
            value = term.per_row(inputs).sum() / torch.clamp(torch.as_tensor(counts[term.rows]), min=1.0)
            parts[name] = value
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        return total, parts


LossBuilder = Callable[..., DistillationLoss]
_LOSSES: dict[str, LossBuilder] = {}


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    """Register a builder ``(temperature=, kd_weight=, ce_weight=, **kwargs) -> DistillationLoss``."""

    def decorator(builder: LossBuilder) -> LossBuilder:
        _LOSSES[name] = builder
        return builder

    return decorator


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **params: Any) -> DistillationLoss:
    if name not in _LOSSES:
        raise KeyError(f"unknown loss '{name}'; registered: {', '.join(available_losses())}")
    return _LOSSES[name](**params)


@register_loss("kd")
def _hinton_kd(
    *, temperature: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 0.0, **_: Any
) -> DistillationLoss:
    """KL to the teacher on every row, plus cross-entropy on the labelled rows (Hinton et al., 2015)."""
    return DistillationLoss(
        {"kd": (kd_weight, SoftTargetKL(temperature)), "ce": (ce_weight, LabelCrossEntropy())}
    )


@register_loss("function_matching")
def _function_matching(
    *, temperature: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 0.0, **_: Any
) -> DistillationLoss:
    """Teacher-only target (Beyer et al., 2022): KL on every row, labels ignored."""
    if ce_weight:
        raise ValueError(
            "function_matching uses the teacher as the only target: set ce_weight=0 or use distill_loss='kd'"
        )
    return DistillationLoss({"kd": (kd_weight, SoftTargetKL(temperature))})


@register_loss("ce")
def _supervised(**_: Any) -> DistillationLoss:
    """Cross-entropy on labels only (student finetuning); needs no teacher."""
    return DistillationLoss({"ce": (1.0, LabelCrossEntropy())})


@register_loss("feature_cosine")
def _feature_cosine(*, kd_weight: float = 1.0, ce_weight: float = 0.0, **_: Any) -> DistillationLoss:
    """Task-agnostic distillation: the student's features, through a learned linear projection, match
    the teacher's image features (cosine); the teacher's predictions are not used. Finetune after."""
    return DistillationLoss({"feature": (kd_weight, FeatureCosine()), "ce": (ce_weight, LabelCrossEntropy())})


@register_loss("feature_contrastive")
def _feature_contrastive(
    *, temperature: float = 0.1, kd_weight: float = 1.0, ce_weight: float = 0.0, **_: Any
) -> DistillationLoss:
    """Task-agnostic distillation with a contrastive (InfoNCE) feature loss at ``temperature``."""
    return DistillationLoss(
        {"feature": (kd_weight, FeatureContrastive(temperature)), "ce": (ce_weight, LabelCrossEntropy())}
    )
