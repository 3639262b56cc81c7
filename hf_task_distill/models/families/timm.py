"""The ``timm`` family: a timm architecture name (``resnet50``, ``mobilevitv2_100.cvnets_in1k``)
wrapped as transformers' ``TimmWrapperForImageClassification``.

Wrapping keeps one artefact usable everywhere: ``save_pretrained``/``push_to_hub``, reloading with
``AutoModelForImageClassification``, ``pipeline("image-classification")``, and ``timm.create_model``
(``"hf-hub:<repo>"`` or ``"local-dir:<folder>"``), because the saved weights use timm's own key names.
The model's preprocessing is timm's data config, recorded in its config's ``pretrained_cfg``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from ..labels import label_config_kwargs, set_label_space
from .base import StudentFamily, warn_new_head

__all__ = ["WEIGHT_SOURCE_FIELDS", "TimmFamily", "is_timm_architecture", "write_timm_folder"]

# Fields of timm's pretrained_cfg naming where its registered weights come from.
WEIGHT_SOURCE_FIELDS = ("url", "hf_hub_id", "hf_hub_filename", "tag", "origin_url", "paper_ids", "license")


def is_timm_architecture(name: str) -> bool:
    """Whether ``name`` is a timm model name (``resnet50``, ``mobilevitv2_100.cvnets_in1k``...)."""
    import timm

    return timm.is_model(name.split(".")[0]) if "/" not in name and ":" not in name else False


class TimmFamily(StudentFamily):
    """timm architectures by name, with timm's own initialisation (or its ``.tag`` weights)."""

    name = "timm"

    def matches(self, name_or_path: str) -> bool:
        """A timm architecture name, with an optional pretrained tag, and no ``/`` or ``:``."""
        return is_timm_architecture(name_or_path)

    def create(
        self,
        name_or_path: str,
        labels,
        *,
        pretrained: bool = False,
        image_size: int | None = None,
        model_args: dict[str, Any] | None = None,
        **from_pretrained_kwargs: Any,
    ):
        """``timm.create_model(name_or_path, ...)`` for ``labels``, loaded as a ``TimmWrapper``
        (see :func:`wrap_timm`); ``from_pretrained_kwargs`` do not apply to a timm name."""
        return wrap_timm(
            name_or_path,
            label_config_kwargs(labels),
            pretrained=pretrained,
            model_args=dict(model_args or {}),
            image_size=image_size,
        )

    def owns(self, model: Any) -> bool:
        """A ``TimmWrapper`` (its config carries timm's ``pretrained_cfg``) or a bare timm model."""
        if getattr(getattr(model, "config", None), "pretrained_cfg", None) is not None:
            return True
        return hasattr(model, "pretrained_cfg") and hasattr(model, "default_cfg")

    def view_spec(self, model: Any):
        """timm's resolved data config: the wrapper's ``config.pretrained_cfg`` (what its saved
        processor uses), else a bare timm model's own."""
        from timm.data import resolve_data_config

        from ...data.views import ViewSpec

        wrapped_cfg = getattr(getattr(model, "config", None), "pretrained_cfg", None)
        if wrapped_cfg is not None:
            return ViewSpec.from_timm_data_config(
                resolve_data_config(dict(wrapped_cfg), model=None, verbose=False)
            )
        return ViewSpec.from_timm_data_config(resolve_data_config({}, model=model))


def wrap_timm(
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
        warn_new_head(name, None, label_kwargs["num_labels"])
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
