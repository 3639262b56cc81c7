"""The ``transformers`` family's semantic-segmentation students (``task_type="image-segmentation"``).

Two architectures have short names, built from their configuration (no download):

- ``segformer-b0``: ``SegformerForSemanticSegmentation`` with ``SegformerConfig()``'s defaults, which
  are SegFormer-B0 (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
  Transformers", NeurIPS 2021);
- ``mobilevitv2-deeplabv3``: ``MobileViTV2ForSemanticSegmentation``, MobileViTv2 with a DeepLabV3 head
  (Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers", 2022).

Any Hub id or folder of a model ``AutoModelForSemanticSegmentation`` builds works too, from its
config or, with ``pretrained=True``, with its weights (``nvidia/mit-b0``, ``nvidia/segformer-b0-finetuned-ade-512-512``...).

A student's preprocessing is recorded in its config (``image_size``, pixels, square) and is
:func:`segmentation_image_processor`: a ``SegformerImageProcessor`` resizing the whole image, with
ImageNet normalisation and ``do_reduce_labels=False`` (masks hold class ids, 255 = ignored).
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import torch
from torch import nn

from ...sources import SHIPPED_MODELS, check_model_source, is_local_path, resolve_model_source
from ..labels import label_config_kwargs, label_names_of, set_label_space

__all__ = [
    "DEFAULT_SEGMENTATION_IMAGE_SIZE",
    "SEGMENTATION_STUDENTS",
    "check_segmentation_student",
    "create_segmentation_student",
    "is_segmentation_student",
    "segmentation_image_processor",
]

logger = logging.getLogger(__name__)

#: Short names of segmentation students: (config class, model class) in ``transformers``.
SEGMENTATION_STUDENTS = {
    "segformer-b0": ("SegformerConfig", "SegformerForSemanticSegmentation"),
    "mobilevitv2-deeplabv3": ("MobileViTV2Config", "MobileViTV2ForSemanticSegmentation"),
}
#: The training and evaluation resolution (pixels, square) when none is given: SegFormer's ADE20K setting.
DEFAULT_SEGMENTATION_IMAGE_SIZE = 512
#: The model types whose students record their preprocessing in ``config.image_size``.
_STUDENT_TYPES = ("segformer", "mobilevitv2")


def check_segmentation_student(name_or_path: str, what: str = "student") -> None:
    """Raise ``ValueError`` naming ``what`` if ``name_or_path`` cannot be a segmentation student: not a
    short name (:data:`SEGMENTATION_STUDENTS`), a folder, or a Hub id (``owner/name``)."""
    name = os.fspath(name_or_path)
    if name in SEGMENTATION_STUDENTS or name in SHIPPED_MODELS or os.path.isdir(os.path.expanduser(name)):
        return
    if "/" not in name and not is_local_path(name):
        close = difflib.get_close_matches(name, list(SEGMENTATION_STUDENTS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f"{what}: unknown segmentation student '{name}'; {hint}the built-in ones are "
            f"{', '.join(SEGMENTATION_STUDENTS)}, or give a Hub id (owner/name) or a folder of a "
            "transformers semantic-segmentation model"
        )
    check_model_source(name, what)


def create_segmentation_student(
    name_or_path: str,
    labels,
    *,
    pretrained: bool = False,
    image_size: int | None = None,
    model_args: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
):
    """A semantic-segmentation student for ``labels`` (at most 255 classes: 255 marks ignored pixels).

    Args:
        name_or_path: a short name (``segformer-b0``, ``mobilevitv2-deeplabv3``), or a Hub id/folder of
            a model ``AutoModelForSemanticSegmentation`` builds.
        labels: the task's classes (names, ``id2label``, or a count).
        pretrained: load the checkpoint's weights (a Hub id/folder only); a decode head for other
            classes is replaced by a new one.
        image_size: training and evaluation resolution in pixels (square); default: the checkpoint's
            processor's, else 512. Recorded as ``config.image_size``.
        model_args: configuration fields overriding the architecture's (e.g. ``{"hidden_sizes":
            [16, 32, 40, 64], "decoder_hidden_size": 32}`` for a tiny SegFormer); not with ``pretrained``.
        **from_pretrained_kwargs: ``revision``, ``cache_dir``, ``token``...

    Returns:
        `PreTrainedModel`: logits ``[batch, num_labels, height / 4, width / 4]`` (SegFormer) or
        ``[..., height / 32, width / 32]`` (MobileViTv2), with ``semantic_loss_ignore_index=255``.

    Raises:
        ValueError: too many labels; a ``model_args`` key the configuration does not have; ``pretrained``
            with a short name or with ``model_args``; a checkpoint without a segmentation model.
    """
    label_kwargs = label_config_kwargs(labels)
    if label_kwargs["num_labels"] > 255:
        raise ValueError(f"labels: {label_kwargs['num_labels']} classes; segmentation allows at most 255")
    if name_or_path in SEGMENTATION_STUDENTS:
        if pretrained:
            raise ValueError(
                f"student: '{name_or_path}' is built from its configuration; for pretrained weights give a "
                "Hub id or folder (e.g. nvidia/mit-b0 for SegFormer-B0's encoder)"
            )
        model = _from_short_name(name_or_path, label_kwargs, model_args or {})
        source = None
    else:
        source = resolve_model_source(name_or_path)
        model = _from_checkpoint(
            source, name_or_path, label_kwargs, pretrained, model_args, from_pretrained_kwargs
        )
    model.config.image_size = int(image_size or _processor_size(source) or DEFAULT_SEGMENTATION_IMAGE_SIZE)
    model.config.semantic_loss_ignore_index = 255
    return model


def is_segmentation_student(model: Any) -> bool:
    """Whether ``model`` is a segmentation student whose preprocessing its config records
    (``image_size``, set by :func:`create_segmentation_student`)."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in _STUDENT_TYPES
        and type(model).__name__.endswith("ForSemanticSegmentation")
        and isinstance(getattr(config, "image_size", None), int)
    )


def segmentation_image_processor(model_or_size: Any):
    """The image processor of a segmentation student (or for a resolution in pixels): a
    ``SegformerImageProcessor`` resizing the whole image to ``image_size`` squared, ImageNet
    normalisation, ``do_reduce_labels=False``. Save it next to the student
    (``segmentation_image_processor(student).save_pretrained(folder)``); ``pipeline("image-segmentation")``
    then loads the folder."""
    from transformers import SegformerImageProcessor

    size = model_or_size if isinstance(model_or_size, int) else model_or_size.config.image_size
    return SegformerImageProcessor(size={"height": int(size), "width": int(size)}, do_reduce_labels=False)


def _from_short_name(name: str, label_kwargs: dict[str, Any], model_args: dict[str, Any]):
    import transformers

    config_name, model_name = SEGMENTATION_STUDENTS[name]
    config_class = getattr(transformers, config_name)
    defaults = config_class()
    unknown = [key for key in model_args if not hasattr(defaults, key)]
    if unknown:
        raise ValueError(f"model_args: {', '.join(unknown)} are not fields of {config_name} ('{name}')")
    return getattr(transformers, model_name)(config_class(**model_args, **label_kwargs))


def _from_checkpoint(source, name, label_kwargs, pretrained, model_args, from_pretrained_kwargs):
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    config_kwargs = {
        k: from_pretrained_kwargs[k]
        for k in ("revision", "cache_dir", "token")
        if k in from_pretrained_kwargs
    }
    config = AutoConfig.from_pretrained(source, **config_kwargs)
    _check_segmentation_type(config, name)
    if not pretrained:
        config = AutoConfig.from_pretrained(source, **label_kwargs, **(model_args or {}), **config_kwargs)
        set_label_space(config, list(label_kwargs["id2label"].values()))
        return AutoModelForSemanticSegmentation.from_config(config)
    if model_args:
        raise ValueError(
            f"student: model_args change the architecture, so '{name}''s weights would not fit (pretrained=True)"
        )
    names = list(label_kwargs["id2label"].values())
    existing = label_names_of(config)
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    from ..safe_loading import safetensors_required

    with safetensors_required(name):
        model = AutoModelForSemanticSegmentation.from_pretrained(
            source, ignore_mismatched_sizes=True, **label_kwargs, **from_pretrained_kwargs
        )
    if existing != names:
        if config.num_labels == len(names):  # same size, other classes: transformers loaded that head
            _reset_classifier(model, len(names))
        logger.warning("student '%s': a new, untrained %d-class decode head", name, len(names))
    set_label_space(model, names)
    return model


def _check_segmentation_type(config, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    model_type = getattr(config, "model_type", "?")
    if model_type not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
        raise ValueError(
            f"student: '{name}' is a {model_type} model, which transformers has no semantic-segmentation "
            f"model for (it has: {', '.join(sorted(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES))}); the "
            f"built-in students are {', '.join(SEGMENTATION_STUDENTS)}"
        )


def _reset_classifier(model: nn.Module, num_labels: int) -> None:
    """Re-initialise the last convolution with ``num_labels`` output channels (the per-pixel classifier)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_labels]
    if convs:
        with torch.no_grad():
            convs[-1].reset_parameters()


def _processor_size(source: str | None) -> int | None:
    """The height a checkpoint's own image processor resizes or crops to, if it has one."""
    if source is None:
        return None
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    for field in ("crop_size", "size"):
        size = getattr(processor, field, None) or {}
        if isinstance(size, dict) and (size.get("height") or size.get("shortest_edge")):
            return int(size.get("height") or size["shortest_edge"])
    return None
