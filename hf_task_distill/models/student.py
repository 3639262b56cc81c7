"""Students: timm architectures wrapped as ``TimmWrapperForImageClassification``, or any HF classifier.

Wrapping keeps one artefact usable everywhere: ``save_pretrained``/``push_to_hub``, reloading with
``AutoModelForImageClassification``, ``pipeline("image-classification")``, and ``timm.create_model``
(``"hf-hub:<repo>"`` or ``"local-dir:<folder>"``), because the saved weights use timm's own key names.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from ..sources import check_model_source, resolve_model_source
from .labels import label_config_kwargs, label_names_of, set_label_space
from .teacher import _config_kwargs, load_for_classes

__all__ = ["create_student", "is_timm_architecture"]

logger = logging.getLogger(__name__)


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
    from transformers import AutoConfig, AutoModelForImageClassification

    source = resolve_model_source(name_or_path)
    if image_size is not None:
        _check_resizable(
            AutoConfig.from_pretrained(source, **_config_kwargs(from_pretrained_kwargs)), name_or_path
        )
        model = create_student(name_or_path, labels, pretrained=pretrained, **from_pretrained_kwargs)
        model.config.pretrained_cfg["input_size"] = [3, image_size, image_size]  # what its views follow
        model.config.pretrained_cfg.pop("test_input_size", None)
        return model
    if not pretrained:
        config = AutoConfig.from_pretrained(source, **label_kwargs, **from_pretrained_kwargs)
        if getattr(config, "model_type", None) == "timm_wrapper":
            # timm's own init, and saved with timm's key names (from_config would save them prefixed
            # with `timm_model.`, which timm.create_model("local-dir:...") cannot load)
            return _wrap_timm(
                config.architecture,
                label_kwargs,
                pretrained=False,
                model_args={**(getattr(config, "model_args", None) or {}), **(model_args or {})},
                image_size=None,
                pretrained_cfg=getattr(config, "pretrained_cfg", None),
            )
        set_label_space(config, names)  # a timm repo's config also lists its own classes (label_names)
        if model_args:
            config.model_args = {**(getattr(config, "model_args", None) or {}), **model_args}
        return AutoModelForImageClassification.from_config(config)
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    config = AutoConfig.from_pretrained(source, **_config_kwargs(from_pretrained_kwargs))
    return load_for_classes(
        source,
        name_or_path,
        config,
        names,
        on_new_head=lambda: _warn_new_head(name_or_path, label_names_of(config), len(names)),
        **from_pretrained_kwargs,
    )


def _check_resizable(config, name_or_path: str) -> None:
    """``image_size=`` sets a timm model's input size in its ``pretrained_cfg``; other models take
    theirs from their image processor, and some timm models are built for one size only."""
    cfg = getattr(config, "pretrained_cfg", None)
    if getattr(config, "model_type", None) != "timm_wrapper" or not isinstance(cfg, dict):
        raise ValueError(
            f"image_size= applies to timm students; '{name_or_path}' is a {getattr(config, 'model_type', '?')} "
            "model: set its size in its image processor"
        )
    if cfg.get("fixed_input_size"):
        raise ValueError(
            f"'{name_or_path}' was built for {tuple(cfg.get('input_size', ()))[-2:]} inputs only (fixed_input_size): "
            "leave image_size= unset, or start from the architecture's name"
        )


def _warn_new_head(name_or_path: str, existing: list[str] | None, num_labels: int) -> None:
    """A pretrained student whose classes are not the task's keeps its body and gets a new head."""
    what = f"predicts {len(existing)} other classes" if existing else "comes with its own classifier"
    logger.warning(
        "student '%s' %s: a new, untrained %d-class head replaces its classifier (its other weights are kept)",
        name_or_path,
        what,
        num_labels,
    )


# Fields of timm's pretrained_cfg naming where its registered weights come from.
WEIGHT_SOURCE_FIELDS = ("url", "hf_hub_id", "hf_hub_filename", "tag", "origin_url", "paper_ids", "license")


def _wrap_timm(
    name: str,
    label_kwargs: dict[str, Any],
    *,
    pretrained: bool,
    model_args: dict[str, Any],
    image_size: int | None,
    pretrained_cfg: Mapping[str, Any] | None = None,
):
    """Build the timm model with timm's own init (or weights), then load it through transformers.
    ``pretrained_cfg`` (a checkpoint's data config) replaces timm's registered one for ``name``.

    Loading from a timm-format folder, rather than constructing the wrapper directly, keeps timm's
    initialisation (transformers would re-initialise every layer) and records the key mapping, so
    later ``save_pretrained`` calls write timm-compatible checkpoints.
    """
    import timm
    from transformers import TimmWrapperForImageClassification

    if image_size is not None and timm.models.get_pretrained_cfg(name.split(".")[0]).fixed_input_size:
        model_args["img_size"] = image_size
    timm_model = timm.create_model(
        name, pretrained=pretrained, num_classes=label_kwargs["num_labels"], **model_args
    )
    if pretrained:  # timm's weights come with its own head (ImageNet's classes); ours is new
        _warn_new_head(name, None, label_kwargs["num_labels"])
    # Fields naming where timm's weights come from describe a from-scratch student wrongly.
    dropped = ("num_classes", "file") + (() if pretrained else WEIGHT_SOURCE_FIELDS)
    source_cfg = dict(pretrained_cfg) if pretrained_cfg else dict(timm_model.pretrained_cfg)
    pretrained_cfg = {k: v for k, v in source_cfg.items() if k not in dropped}
    if image_size is not None:
        pretrained_cfg["input_size"] = (3, image_size, image_size)
        pretrained_cfg.pop("test_input_size", None)
    names = list(label_kwargs["id2label"].values())
    with tempfile.TemporaryDirectory(prefix="hf_task_distill_student_") as folder:
        write_timm_folder(timm_model, name, names, pretrained_cfg, folder, model_args=model_args)
        return TimmWrapperForImageClassification.from_pretrained(folder)


def write_timm_folder(
    timm_model,
    architecture: str,
    label_names: Sequence[str],
    pretrained_cfg: Mapping[str, Any],
    folder: str | os.PathLike,
    *,
    model_args: Mapping[str, Any] | None = None,
) -> str:
    """Save a timm model as timm and transformers both read it: ``config.json`` (a
    ``TimmWrapperConfig``: ``architecture``, ``pretrained_cfg``, ``model_args``, the labels) and
    ``model.safetensors`` with timm's key names. Returns the folder."""
    from safetensors.torch import save_file
    from transformers import TimmWrapperConfig

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    config = TimmWrapperConfig(
        architecture=architecture.split(".")[0],
        pretrained_cfg=dict(pretrained_cfg),
        model_args=dict(model_args or {}),
        **label_config_kwargs(list(label_names)),
    )
    set_label_space(config, list(label_names))  # timm's own class list, if any
    config.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in timm_model.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    return folder
