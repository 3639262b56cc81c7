"""Distillation losses as small, composable terms, found by name in a registry.

A term returns one loss value per row plus which rows it averages over (``"all"`` rows, or only the
``"labelled"`` ones). :class:`DistillationLoss` sums weighted terms and divides each by the number of
rows it covers; the trainer passes those counts for the whole gradient-accumulation window (and all
processes), which is what makes 2x16 accumulation equal to one batch of 32, unlabelled rows included.

Dense predictions (semantic segmentation: logits ``[batch, num_classes, h, w]``, masks ``[batch, H, W]``)
go through the same terms. A row's KL is the mean over its pixels, so dividing by the window's rows
gives the mean over all the window's pixels (every row has ``h * w`` of them); a row's cross-entropy is
the sum over its labelled pixels and ``"labelled"`` counts labelled pixels, so it is the mean over the
window's labelled pixels.

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

from .data.validation import labelled_positions

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
    "is_dense",
    "register_loss",
    "resize_to_grid",
]


@dataclass
class LossInputs:
    """What a loss term may look at for one batch.

    Dense (per-pixel) tasks pass ``[batch, num_classes, h, w]`` logits, ``[batch, H, W]`` masks and
    ``[batch, dim, h, w]`` feature maps; the grids may differ (each term says how it resizes).

    Args:
        student_logits (`torch.Tensor` of shape `[batch, num_classes]` or `[batch, num_classes, h, w]`):
            The student's logits.
        teacher_logits (`torch.Tensor` of shape `[batch, num_classes]` or `[batch, num_classes, h', w']`, *optional*):
            The teacher's logits over the same classes; ``None`` when no term needs them.
        labels (`torch.LongTensor` of shape `[batch]` or `[batch, H, W]`, *optional*):
            Label ids, ``-100`` (``UNLABELLED``) on unlabelled rows, and for masks ``255``
            (``IGNORE_INDEX``) on unlabelled pixels; ``None`` when no row has a label.
        student_features (`torch.Tensor` of shape `[batch, teacher_dim]` or `[batch, teacher_dim, h, w]`, *optional*):
            For feature terms: the student's image features (or last feature map) mapped to the
            teacher's width by the trainer's learned projection.
        teacher_features (`torch.Tensor` of shape `[batch, teacher_dim]` or `[batch, teacher_dim, h', w']`, *optional*):
            For feature terms: the teacher's image features (or last feature map).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    student_features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None

    def labelled_mask(self) -> torch.Tensor:
        """Which rows (for masks: which pixels) carry a label.

        Returns:
            `torch.BoolTensor` of the labels' shape (`[batch]` or `[batch, H, W]`):
            :func:`~hf_task_distill.data.validation.labelled_positions` (``labels != -100``, and for
            masks ``!= 255``), or `[batch]` all ``False`` without labels.
        """
        if self.labels is None:
            return torch.zeros(
                self.student_logits.shape[0], dtype=torch.bool, device=self.student_logits.device
            )
        return labelled_positions(self.labels)


def is_dense(x: torch.Tensor) -> bool:
    """Whether ``x`` holds per-pixel values (``[batch, channels, h, w]``) rather than one vector per row."""
    return x.dim() == 4


def resize_to_grid(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` (`[batch, channels, h, w]`) resized to ``size`` (``(height, width)``) by bilinear
    interpolation with ``align_corners=False`` (as transformers' segmentation models upsample their
    logits); returned as it is when it already has that grid."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _mean_per_row(values: torch.Tensor) -> torch.Tensor:
    """``[batch, ...]`` averaged over everything but the batch axis (a row's mean over its pixels)."""
    return values.flatten(1).mean(dim=1) if values.dim() > 1 else values


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax statistics in fp32 even under bf16/fp16 autocast; fp64 inputs stay fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LossTerm(nn.Module):
    """One loss term of a :class:`DistillationLoss`: a loss value per row of the batch.

    Subclass it and implement :meth:`per_row`; set the class attributes to say what the term needs.
    :class:`DistillationLoss` sums ``per_row`` and divides by the number of rows in ``rows``.

    Attributes:
        rows (`str`, defaults to `"all"`):
            The rows the term is averaged over: ``"all"``, or ``"labelled"`` (``labels != -100``).
        requires_teacher (`bool`, defaults to `False`):
            Whether the term needs the teacher (its logits, or its features with ``requires_features``).
        requires_features (`bool`, defaults to `False`):
            Whether the term needs ``student_features`` and ``teacher_features``; the trainer then
            supplies them (the student's through a learned projection to the teacher's width).
    """

    rows: str = "all"
    requires_teacher: bool = False
    requires_features: bool = False

    def per_row(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - interface
        """The term's loss on each row of the batch.

        Args:
            inputs (`LossInputs`): the batch's logits, labels and (for feature terms) features.

        Returns:
            `torch.Tensor` of shape `[batch]`: the loss per row, zero on rows the term does not cover.
        """
        raise NotImplementedError


class SoftTargetKL(LossTerm):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per row (Hinton et al., 2015).

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures. Every row counts,
    labelled or not: the teacher's prediction is the target. Softmax statistics are computed in at
    least fp32, also under bf16/fp16 autocast.

    For dense logits (`[batch, num_classes, h, w]`, semantic segmentation) the KL is taken at every
    pixel of the student's output grid, the teacher's logits resized to it first
    (:func:`resize_to_grid`), and a row's value is the mean over its ``h * w`` pixels: divided by the
    window's rows, the term is the mean over every pixel of the window.

    Args:
        temperature (`float`, *optional*, defaults to 1.0):
            The softmax temperature ``T`` applied to both logits.

    Raises:
        ValueError: if ``temperature <= 0``.
    """

    rows = "all"
    requires_teacher = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        """``T^2 * KL`` per row.

        Args:
            inputs (`LossInputs`): needs ``student_logits`` and ``teacher_logits`` (`[batch, num_classes]`,
                or both `[batch, num_classes, h, w]` with any grids).

        Returns:
            `torch.Tensor` of shape `[batch]` (fp32, or fp64 for fp64 inputs); for dense logits each
            row's mean over its pixels.

        Raises:
            ValueError: if ``inputs.teacher_logits`` is ``None``, or one of the logits is dense and the
                other is not.
        """
        if inputs.teacher_logits is None:
            raise ValueError("the KL term needs teacher logits, but the batch has none")
        student, teacher = _at_least_fp32(inputs.student_logits), _at_least_fp32(inputs.teacher_logits)
        if is_dense(student) != is_dense(teacher):
            raise ValueError(
                f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)}: "
                "both must be per-row [batch, classes] or both per-pixel [batch, classes, h, w]"
            )
        class_dim = 1 if is_dense(student) else -1
        if is_dense(student):
            teacher = resize_to_grid(teacher, student.shape[-2:])
        t = self.temperature
        student_log_p = F.log_softmax(student / t, dim=class_dim)
        teacher_log_p = F.log_softmax(teacher / t, dim=class_dim)
        kl = F.kl_div(student_log_p, teacher_log_p, reduction="none", log_target=True).sum(dim=class_dim)
        return _mean_per_row(kl) * (t * t)


class LabelCrossEntropy(LossTerm):
    """Cross-entropy on the rows that carry a label (``labels != -100``); other rows contribute 0.

    For masks (`[batch, H, W]`, semantic segmentation) the student's dense logits are upsampled to the
    mask's size (:func:`resize_to_grid`, as transformers' segmentation models do for their loss), the
    cross-entropy is taken at every labelled pixel (not ``255`` nor ``-100``), and a row's value is
    the sum over its labelled pixels; ``"labelled"`` then counts labelled pixels, so the term is the
    mean over the labelled pixels of the window.

    Args:
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing, as ``torch.nn.functional.cross_entropy`` takes it (in [0, 1]).
    """

    rows = "labelled"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        """Cross-entropy per row.

        Args:
            inputs (`LossInputs`): needs ``student_logits``; ``labels`` may be ``None``.

        Returns:
            `torch.Tensor` of shape `[batch]`: the cross-entropy, 0 on unlabelled rows (all rows when
            ``labels`` is ``None``); for masks the sum over each row's labelled pixels.

        Raises:
            ValueError: if masks come with per-row logits, or labels per row with dense logits.
        """
        logits = _at_least_fp32(inputs.student_logits)
        labels = inputs.labels
        if labels is None:
            return logits.new_zeros(logits.shape[0])
        if is_dense(logits) != (labels.dim() == 3):
            raise ValueError(
                f"student logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: per-row logits "
                "take labels [batch], per-pixel logits [batch, classes, h, w] take masks [batch, H, W]"
            )
        labelled = labelled_positions(labels)
        if is_dense(logits):
            logits = resize_to_grid(logits, labels.shape[-2:])
        # an unlabelled target is replaced by class 0 and its loss multiplied by 0: one ignore convention
        # (-100 and, for masks, 255) without relying on cross_entropy's single ignore_index
        loss = F.cross_entropy(
            logits,
            torch.where(labelled, labels, torch.zeros_like(labels)),
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        loss = torch.where(labelled, loss, torch.zeros_like(loss))
        return loss.flatten(1).sum(dim=1) if loss.dim() > 1 else loss


def _feature_pair(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.student_features is None or inputs.teacher_features is None:
        raise ValueError("a feature term needs student and teacher features, but the batch has none")
    return _at_least_fp32(inputs.student_features), _at_least_fp32(inputs.teacher_features)


class FeatureCosine(LossTerm):
    """``1 - cos(projected student features, teacher features)`` per row: the task-agnostic feature
    distillation baseline of the paper (match the foundation model's image embedding).

    The paper is Vemulapalli et al., "Knowledge Transfer from Vision Foundation Models for Efficient
    Training of Small Task-specific Models" (ICML 2024).

    For feature maps (`[batch, teacher_dim, h, w]`, semantic segmentation) the cosine distance is taken
    at every pixel of the student's grid, the teacher's map resized to it first (:func:`resize_to_grid`),
    and a row's value is the mean over its pixels (the window's mean over all its pixels, as for
    :class:`SoftTargetKL`).
    """

    rows = "all"
    requires_teacher = True
    requires_features = True

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        """Cosine distance per row.

        Args:
            inputs (`LossInputs`): needs ``student_features`` and ``teacher_features`` (`[batch, teacher_dim]`,
                or both `[batch, teacher_dim, h, w]` with any grids).

        Returns:
            `torch.Tensor` of shape `[batch]`, values in [0, 2].

        Raises:
            ValueError: if either feature tensor is ``None``, or one is a feature map and the other not.
        """
        student, teacher = _feature_pair(inputs)
        if is_dense(student) != is_dense(teacher):
            raise ValueError(
                f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)}: "
                "both must be [batch, dim] or both feature maps [batch, dim, h, w]"
            )
        if not is_dense(student):
            return 1.0 - F.cosine_similarity(student, teacher, dim=-1)
        teacher = resize_to_grid(teacher, student.shape[-2:])
        return _mean_per_row(1.0 - F.cosine_similarity(student, teacher, dim=1))


class FeatureContrastive(LossTerm):
    """InfoNCE between projected student and teacher features within a batch: each student row must
    pick its own image's teacher feature among the batch's (the contrastive variant of the baseline).

    InfoNCE is from van den Oord et al., "Representation Learning with Contrastive Predictive Coding"
    (2018). The other rows of the batch are the negatives, so the loss depends on the batch size.

    Args:
        temperature (`float`, *optional*, defaults to 0.1):
            Divides the cosine similarities before the softmax.

    Raises:
        ValueError: if ``temperature <= 0``.
    """

    rows = "all"
    requires_teacher = True
    requires_features = True

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def per_row(self, inputs: LossInputs) -> torch.Tensor:
        """InfoNCE per row.

        Args:
            inputs (`LossInputs`): needs ``student_features`` and ``teacher_features`` (`[batch, teacher_dim]`).

        Returns:
            `torch.Tensor` of shape `[batch]`: row ``i``'s cross-entropy of picking teacher row ``i``.

        Raises:
            ValueError: if either feature tensor is ``None``, or a feature map.
        """
        student, teacher = _feature_pair(inputs)
        if is_dense(student) or is_dense(teacher):
            raise ValueError(
                "the contrastive feature term compares one feature vector per image; got feature maps "
                f"{tuple(student.shape)} and {tuple(teacher.shape)} (use feature_cosine for dense tasks)"
            )
        similarity = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / self.temperature
        targets = torch.arange(similarity.shape[0], device=similarity.device)
        return F.cross_entropy(similarity, targets, reduction="none")


class DistillationLoss(nn.Module):
    """A weighted sum of named :class:`LossTerm` s, each averaged over the rows it covers.

    Each term's per-row values are summed and divided by the number of rows it covers (``"all"`` or
    ``"labelled"``). The trainer passes those counts for the whole gradient-accumulation window (and all
    processes), so that two accumulated batches of 16 give the same loss as one batch of 32.

    Args:
        terms (`Mapping[str, tuple[float, LossTerm]]`):
            Each term's name, weight and module. Terms of weight 0 are dropped.

    Raises:
        ValueError: if every weight is 0.

    Example:

    ```python
    >>> loss = DistillationLoss({"kd": (1.0, SoftTargetKL(2.0)), "ce": (0.5, LabelCrossEntropy())})
    >>> total, parts = loss(LossInputs(student_logits, teacher_logits, labels))
    ```
    """

    def __init__(self, terms: Mapping[str, tuple[float, LossTerm]]):
        super().__init__()
        active = {name: (float(w), term) for name, (w, term) in terms.items() if w != 0}
        if not active:
            raise ValueError("a distillation loss needs at least one term with a non-zero weight")
        self.weights = {name: w for name, (w, _) in active.items()}
        self.terms = nn.ModuleDict({name: term for name, (_, term) in active.items()})

    @property
    def requires_teacher(self) -> bool:
        """Whether any term needs the teacher (logits or features)."""
        return any(term.requires_teacher for term in self.terms.values())

    @property
    def requires_features(self) -> bool:
        """Whether any term needs student and teacher features (a feature-distillation loss)."""
        return any(term.requires_features for term in self.terms.values())

    @property
    def requires_teacher_logits(self) -> bool:
        """Whether any term needs the teacher's logits (a teacher term that is not a feature term)."""
        return any(term.requires_teacher and not term.requires_features for term in self.terms.values())

    @staticmethod
    def row_counts(inputs: LossInputs) -> dict[str, torch.Tensor]:
        """Rows each kind of term covers in this batch.

        Args:
            inputs (`LossInputs`): the batch.

        Returns:
            `dict[str, torch.Tensor]`: ``{"all": batch, "labelled": labelled rows}`` (for masks: labelled
            pixels, see :meth:`LossInputs.labelled_mask`), each a float scalar.
        """
        n = inputs.student_logits.shape[0]
        return {
            "all": inputs.student_logits.new_tensor(float(n)),
            "labelled": inputs.labelled_mask().sum().float(),
        }

    def forward(
        self, inputs: LossInputs, row_counts: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each term's (unweighted) value.

        Args:
            inputs (`LossInputs`): the batch.
            row_counts (`Mapping[str, torch.Tensor]`, *optional*):
                Rows covered per kind (``"all"``, ``"labelled"``) to divide by; defaults to
                :meth:`row_counts` of this batch. A count below 1 is taken as 1.

        Returns:
            `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the total loss (a scalar) and each term's value
            by name (scalars, before weighting).
        """
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
    """Register a loss builder under ``name``, so that ``DistillationArguments(distill_loss=name)`` uses it.

    The builder is called as ``builder(temperature=, kd_weight=, ce_weight=, **kwargs)`` and returns a
    :class:`DistillationLoss`; it should accept (and may ignore) every keyword (``**_``). A name
    registered again replaces the earlier builder.

    Args:
        name (`str`): the loss name (``"kd"``, ``"function_matching"``, ``"ce"``, ``"feature_cosine"`` and
            ``"feature_contrastive"`` are built in).

    Returns:
        `Callable`: a decorator that registers the builder and returns it unchanged.

    Example:

    ```python
    >>> @register_loss("kd_smooth")
    ... def kd_smooth(*, temperature=1.0, kd_weight=1.0, ce_weight=0.0, **_):
    ...     return DistillationLoss({"kd": (kd_weight, SoftTargetKL(temperature)),
    ...                              "ce": (ce_weight, LabelCrossEntropy(label_smoothing=0.1))})
    ```
    """

    def decorator(builder: LossBuilder) -> LossBuilder:
        _LOSSES[name] = builder
        return builder

    return decorator


def available_losses() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_LOSSES)


def build_loss(name: str, **params: Any) -> DistillationLoss:
    """Build the registered loss ``name``.

    Args:
        name (`str`): a name from :func:`available_losses`.
        **params: passed to the builder (``temperature``, ``kd_weight``, ``ce_weight``...).

    Returns:
        `DistillationLoss`: the loss module.

    Raises:
        KeyError: if ``name`` is not registered (the message lists the registered names).
        ValueError: if the builder refuses ``params`` (``function_matching`` with ``ce_weight != 0``,
            every weight 0, a temperature <= 0).
    """
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
