"""Semantic-segmentation teachers: a vision foundation model's backbone under transformers' UperNet head.

The paper (Vemulapalli et al., ICML 2024) finetunes a VFM teacher for segmentation with a dense head
on the backbone's multi-scale features. Here the head is transformers' own
``UperNetForSemanticSegmentation`` (UperNet: Xiao et al., "Unified Perceptual Parsing for Scene
Understanding", ECCV 2018), and the backbone is the VFM exposed as a transformers backbone:

- a transformers VFM (``facebook/dinov2-large``...) through ``AutoBackbone`` (``Dinov2Backbone``: a
  few evenly spaced layers, reshaped to ``[batch, channels, h, w]`` maps);
- a timm VFM (a ``TimmWrapper`` checkpoint such as the shipped ``mini-vfm``, or a ``timm/...`` repo)
  through ``TimmBackbone`` (timm's ``features_only`` model).

The VFM's pretrained weights are copied into the backbone, and every backbone tensor must come from
the checkpoint. The result is a plain transformers model: ``save_pretrained`` writes a folder that
``AutoModelForSemanticSegmentation.from_pretrained`` reloads without this package. Labels follow the
dense convention of the package: masks hold class ids, and 255 marks pixels to ignore
(``UperNetConfig.loss_ignore_index``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..sources import check_model_source, resolve_model_source
from .labels import label_config_kwargs
from .safe_loading import safetensors_required

__all__ = [
    "backbone_parameter_names",
    "head_parameter_names",
    "segmentation_teacher",
    "segmentation_teacher_processor",
]

logger = logging.getLogger(__name__)

#: How many backbone stages feed the UperNet head (its feature pyramid), evenly spaced, the last included.
NUM_STAGES = 4
#: timm's interpolation names as PIL resampling codes (for a timm VFM's processor).
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def segmentation_teacher(
    backbone_name_or_path: str,
    labels: int | Sequence[str] | Mapping[int, str],
    *,
    head_channels: int = 512,
    auxiliary_head: bool | None = None,
    num_stages: int = NUM_STAGES,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
):
    """A segmentation teacher for ``labels``: UperNet on the backbone of a vision foundation model.

    The backbone's weights are the VFM's pretrained ones (bit-identical); the UperNet head (and its
    auxiliary FCN head) are new and untrained, for teacher finetuning. Its preprocessing is
    :func:`segmentation_teacher_processor`; save that processor next to the model.

    Args:
        backbone_name_or_path (`str`): a Hub id or folder of a transformers VFM with a backbone class
            (DINOv2, ConvNeXt, Swin, BEiT...; any head it was saved with is dropped), of a timm
            checkpoint (``TimmWrapper``), or a shipped name (``mini-vfm``).
        labels: the task's classes (names, ``id2label``, or a count); at most 255, since mask value
            255 marks ignored pixels.
        head_channels (`int`, *optional*, defaults to 512): UperNet's width (``UperNetConfig.hidden_size``).
        auxiliary_head (`bool`, *optional*): add UperNet's auxiliary FCN head on the third stage (its
            loss, weighted 0.4, only counts when labels are passed to ``forward``); default: when the
            backbone gives at least 3 stages.
        num_stages (`int`, *optional*, defaults to 4): how many backbone stages (evenly spaced, the last
            included) feed the head.
        trust_remote_code (`bool`, *optional*, defaults to `False`): run code shipped with the checkpoint.
        **from_pretrained_kwargs: ``revision``, ``cache_dir``, ``token``...; weights load from safetensors
            only unless ``use_safetensors=False``.

    Returns:
        `UperNetForSemanticSegmentation`: logits ``[batch, num_labels, height, width]`` at the input's
        resolution.

    Raises:
        ValueError: bad ``labels`` (or more than 255); a name that cannot be a model; a checkpoint
            transformers exposes no backbone for (ViT, CLIP...); a backbone tensor missing from the
            checkpoint (named); fewer than 3 stages with ``auxiliary_head``.
    """
    from transformers import AutoConfig, UperNetConfig, UperNetForSemanticSegmentation

    label_kwargs = _segmentation_label_kwargs(labels)
    check_model_source(backbone_name_or_path, "teacher backbone")
    source = resolve_model_source(backbone_name_or_path)
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    load = dict(trust_remote_code=trust_remote_code, **from_pretrained_kwargs)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **_config_kwargs(load))
    if getattr(config, "model_type", None) == "timm_wrapper":
        backbone_config, weights = _timm_backbone(source, backbone_name_or_path, config, num_stages, load)
    else:
        backbone_config, weights = _transformers_backbone(
            source, backbone_name_or_path, config, num_stages, load
        )
    if auxiliary_head is None:
        auxiliary_head = len(backbone_config.out_indices) >= 3
    if auxiliary_head and len(backbone_config.out_indices) < 3:
        raise ValueError(
            f"'{backbone_name_or_path}': the auxiliary head reads the third of the backbone's stages, and "
            f"{len(backbone_config.out_indices)} are used: pass auxiliary_head=False or num_stages >= 3"
        )
    teacher_config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=head_channels,
        auxiliary_channels=min(256, head_channels),
        use_auxiliary_head=auxiliary_head,
        **label_kwargs,
    )
    model = UperNetForSemanticSegmentation(teacher_config)
    _copy_backbone_weights(model, weights, backbone_name_or_path)
    return model


def segmentation_teacher_processor(backbone_name_or_path: str, *, trust_remote_code: bool = False):
    """The image processor of a segmentation teacher built on ``backbone_name_or_path``: a
    ``SegformerImageProcessor`` with the VFM's input size, normalisation and resampling.

    It resizes the whole image to the VFM's input size (its crop size when its own processor
    centre-crops, as DINOv2's ``BitImageProcessor`` does: 224 x 224), without a crop, and
    ``do_reduce_labels=False``. A classification processor's centre crop would drop the image's
    border (and a non-square image's sides) from the teacher's evaluation view, so its mIoU would
    not cover the mask, and it has no ``post_process_semantic_segmentation``, which
    ``pipeline("image-segmentation")`` needs. A timm VFM's ``TimmWrapperImageProcessor`` (its data
    config) is read the same way.

    Returns:
        `SegformerImageProcessor`: save it into the teacher's folder (``processor.save_pretrained(folder)``).
    """
    from transformers import AutoImageProcessor, SegformerImageProcessor

    from ..data.views import ViewSpec

    source = resolve_model_source(backbone_name_or_path)
    spec = ViewSpec.from_image_processor(
        AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    )
    return SegformerImageProcessor(
        size={"height": int(spec.size[0]), "width": int(spec.size[1])},
        image_mean=list(spec.mean),
        image_std=list(spec.std),
        resample=_RESAMPLE.get(spec.interpolation, 2),
        do_reduce_labels=False,
    )


def backbone_parameter_names(model: nn.Module) -> list[str]:
    """The names of the parameters of ``model``'s backbone (those under ``model.backbone``): what a
    ``linear`` teacher strategy freezes and LoRA adapts (its attention projections are
    ``teacher_finetuning.lora_target_modules(model)``: the head has no attention layers).

    Raises:
        ValueError: ``model`` has no ``backbone`` module (it is not a backbone-and-head segmentation model).
    """
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no backbone module (model.backbone)")
    return [name for name, _ in model.named_parameters() if name.startswith("backbone.")]


def head_parameter_names(model: nn.Module) -> list[str]:
    """The names of every other parameter of ``model``: the segmentation head(s), which every teacher
    strategy trains (for UperNet ``decode_head.*`` and ``auxiliary_head.*``)."""
    backbone = set(backbone_parameter_names(model))
    return [name for name, _ in model.named_parameters() if name not in backbone]


def _segmentation_label_kwargs(labels) -> dict[str, Any]:
    label_kwargs = label_config_kwargs(labels)
    if label_kwargs["num_labels"] > 255:
        raise ValueError(
            f"labels: {label_kwargs['num_labels']} classes; a segmentation task has at most 255 "
            "(mask value 255 marks ignored pixels)"
        )
    return label_kwargs


def _even_stages(stages: Sequence[Any], count: int) -> list[Any]:
    """``count`` evenly spaced entries of ``stages``, the last one included (all when there are fewer)."""
    if count < 1:
        raise ValueError(f"num_stages must be at least 1, got {count}")
    if len(stages) <= count:
        return list(stages)
    return [stages[math.ceil(len(stages) * (k + 1) / count) - 1] for k in range(count)]


def _transformers_backbone(source: str, name: str, config, num_stages: int, load: dict[str, Any]):
    """The backbone config (evenly spaced stages, maps reshaped) and the VFM's backbone weights."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

    model_type = getattr(config, "model_type", "?")
    if model_type not in MODEL_FOR_BACKBONE_MAPPING_NAMES:
        raise ValueError(
            f"'{name}' is a {model_type} model, and transformers has no backbone class for {model_type} "
            f"(AutoBackbone knows: {', '.join(sorted(MODEL_FOR_BACKBONE_MAPPING_NAMES))}); use a VFM with a "
            "backbone (DINOv2, ConvNeXt, Swin...) or a timm checkpoint"
        )
    fields = config.to_dict()
    for key in ("id2label", "label2id", "num_labels", "architectures", "problem_type", "_name_or_path"):
        fields.pop(key, None)
    backbone_config = type(config).from_dict(fields)
    stages = list(getattr(backbone_config, "stage_names", None) or [])
    backbone_config.out_features = _even_stages(stages[1:], num_stages)  # stages[0] is the stem/embeddings
    if hasattr(backbone_config, "reshape_hidden_states"):
        backbone_config.reshape_hidden_states = True  # ViTs: [batch, channels, h, w] maps for the head
    # the backbone class itself: AutoBackbone.from_pretrained asks the Hub whether a folder is a repo
    backbone_class = getattr(transformers, MODEL_FOR_BACKBONE_MAPPING_NAMES[model_type])
    with safetensors_required(name):
        backbone, info = backbone_class.from_pretrained(
            source, config=backbone_config, output_loading_info=True, **load
        )
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    _refuse_missing(name, missing)
    return backbone_config, backbone.state_dict()


def _timm_backbone(source: str, name: str, config, num_stages: int, load: dict[str, Any]):
    """A ``TimmBackboneConfig`` that rebuilds the VFM's architecture, and the VFM's timm weights."""
    from transformers import TimmBackboneConfig, TimmWrapperForImageClassification

    with safetensors_required(name):
        vfm = TimmWrapperForImageClassification.from_pretrained(source, **load)
    feature_info = vfm.timm_model.feature_info
    count = len(feature_info.info if hasattr(feature_info, "info") else feature_info)
    indices = _even_stages(list(range(count))[1:] or [0], num_stages)  # index 0: the stem
    backbone_config = TimmBackboneConfig(
        backbone=_timm_reference(source, config), features_only=True, out_indices=indices
    )
    return backbone_config, vfm.timm_model.state_dict()


def _timm_reference(source: str, config) -> str:
    """The name ``timm.create_model`` rebuilds the VFM's architecture from, when the teacher is built
    and whenever its folder is loaded: the architecture (with its pretrained tag, which can set the
    input size) when the VFM was built with timm's defaults; with ``model_args`` (the mini-VFM's
    narrower channels), ``local-dir:<its folder>`` or ``hf-hub:<its repo>``, whose ``config.json``
    carries them (a folder must then stay where it is)."""
    import timm

    if getattr(config, "model_args", None):
        if os.path.isdir(source):
            return "local-dir:" + os.path.abspath(source)
        return "hf-hub:" + source
    architecture = config.architecture
    tag = (getattr(config, "pretrained_cfg", None) or {}).get("tag")
    tagged = f"{architecture}.{tag}"
    return tagged if tag and tagged in timm.list_pretrained(tagged) else architecture


def _copy_backbone_weights(model: nn.Module, weights: dict[str, Any], name: str) -> None:
    """Load the VFM's ``weights`` into ``model.backbone``; every backbone tensor must be among them
    (entries for the VFM's own head are left out)."""
    target = model.backbone
    if hasattr(target, "_backbone"):  # TimmBackbone: timm's features_only model
        target = target._backbone
        if type(target).__name__ == "FeatureGetterNet":  # ViTs: the model is wrapped, not re-keyed
            target = target.model
    result = target.load_state_dict(weights, strict=False)
    _refuse_missing(name, list(result.missing_keys))


def _refuse_missing(name: str, missing: list[str]) -> None:
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ValueError(
            f"'{name}': {len(missing)} backbone tensor(s) are not in its checkpoint: {shown}. A teacher "
            "backbone must start from the VFM's pretrained weights"
        )


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
