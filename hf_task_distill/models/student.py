"""Students: timm architectures wrapped as ``TimmWrapperForImageClassification``, or any HF classifier.

Wrapping keeps one artefact usable everywhere: ``save_pretrained``/``push_to_hub``, reloading with
``AutoModelForImageClassification``, ``pipeline("image-classification")``, and ``timm.create_model``
(``"hf-hub:<repo>"`` or ``"local-dir:<folder>"``), because the saved weights use timm's own key names.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from ..sources import check_model_source, resolve_model_source
from .labels import label_config_kwargs, set_label_space
from .safe_loading import safetensors_required

__all__ = ["create_student", "is_timm_architecture"]


def is_timm_architecture(name: str) -> bool:
    """Whether ``name`` is a timm model name (``resnet50``, ``mobilevitv2_100.cvnets_in1k``...)."""
    import timm

    return timm.is_model(name.split(".")[0]) if "/" not in name and ":" not in name else False


def create_student(
    name_or_path: str,
    labels: int | Sequence[str] | Mapping[int, str],
    *,
    pretrained: bool = False,
    model_args: dict[str, Any] | None = None,
    image_size: int | None = None,
    **from_pretrained_kwargs: Any,
):
    """Create a student classifier for ``labels``.

    ``name_or_path`` is a timm architecture (``mobilevitv2_100``, ``fastvit_t8``, ``resnet50``; add a
    ``.tag`` to choose pretrained weights), or a Hub id/folder of any image classifier (timm repos such as
    ``timm/mobilevitv2_100.cvnets_in1k`` included). ``pretrained=False`` starts from timm's own random
    initialisation (the paper's setting); ``pretrained=True`` loads the weights and replaces the
    classifier. ``model_args`` go to ``timm.create_model`` (e.g. ``{"drop_path_rate": 0.1}``) and are
    recorded in the config so the model rebuilds identically. ``image_size`` (timm students) sets the
    training/evaluation resolution recorded in the model's ``pretrained_cfg``, which the student's views
    and its saved image processor follow; models with a fixed input size are built for it.
    """
    label_kwargs = label_config_kwargs(labels)
    names = list(label_kwargs["id2label"].values())
    check_model_source(name_or_path, "student", timm_architectures=True)
    if is_timm_architecture(name_or_path):
        return _wrap_timm(
            name_or_path,
            label_kwargs,
            pretrained=pretrained,
            model_args=dict(model_args or {}),
            image_size=image_size,
        )
    if image_size is not None:
        raise ValueError(
            "image_size= applies to timm students; for other models set it in their image processor"
        )
    from transformers import AutoConfig, AutoModelForImageClassification

    source = resolve_model_source(name_or_path)
    if not pretrained:
        config = AutoConfig.from_pretrained(source, **label_kwargs, **from_pretrained_kwargs)
        set_label_space(config, names)  # a timm repo's config also lists its own classes (label_names)
        if model_args:
            config.model_args = {**(getattr(config, "model_args", None) or {}), **model_args}
        return AutoModelForImageClassification.from_config(config)
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    with safetensors_required(name_or_path):
        model = AutoModelForImageClassification.from_pretrained(
            source, ignore_mismatched_sizes=True, **label_kwargs, **from_pretrained_kwargs
        )
    set_label_space(model, names)
    return model


_WEIGHT_SOURCE_FIELDS = ("url", "hf_hub_id", "hf_hub_filename", "tag", "origin_url", "paper_ids", "license")


def _wrap_timm(
    name: str,
    label_kwargs: dict[str, Any],
    *,
    pretrained: bool,
    model_args: dict[str, Any],
    image_size: int | None,
):
    """Build the timm model with timm's own init (or weights), then load it through transformers.

    Loading from a timm-format folder, rather than constructing the wrapper directly, keeps timm's
    initialisation (transformers would re-initialise every layer) and records the key mapping, so
    later ``save_pretrained`` calls write timm-compatible checkpoints.
    """
    import timm
    from safetensors.torch import save_file
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    if image_size is not None and timm.models.get_pretrained_cfg(name.split(".")[0]).fixed_input_size:
        model_args["img_size"] = image_size
    timm_model = timm.create_model(
        name, pretrained=pretrained, num_classes=label_kwargs["num_labels"], **model_args
    )
    # Fields naming where timm's weights come from describe a from-scratch student wrongly.
    dropped = ("num_classes", "file") + (() if pretrained else _WEIGHT_SOURCE_FIELDS)
    pretrained_cfg = {k: v for k, v in dict(timm_model.pretrained_cfg).items() if k not in dropped}
    if image_size is not None:
        pretrained_cfg["input_size"] = (3, image_size, image_size)
        pretrained_cfg.pop("test_input_size", None)
    config = TimmWrapperConfig(
        architecture=name.split(".")[0],
        pretrained_cfg=pretrained_cfg,
        model_args=dict(model_args),
        **label_kwargs,
    )
    set_label_space(config, list(label_kwargs["id2label"].values()))  # timm's own class list, if any
    state = {k: v.detach().contiguous() for k, v in timm_model.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="hf_task_distill_student_") as folder:
        config.save_pretrained(folder)
        save_file(state, f"{folder}/model.safetensors")
        return TimmWrapperForImageClassification.from_pretrained(folder)
