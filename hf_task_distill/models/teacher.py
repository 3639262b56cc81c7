"""Teachers: any image classifier ``AutoModelForImageClassification`` loads (DINOv2, CLIP, SigLIP, ViT...)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..files import display_path
from ..sources import check_model_source, resolve_model_source
from .heads import reinitialise_head
from .labels import label_config_kwargs, label_names_of, set_label_space
from .safe_loading import safetensors_required

__all__ = ["has_classification_head", "load_teacher", "reorder_classes"]

logger = logging.getLogger(__name__)


def has_classification_head(config: Any) -> bool:
    """Whether a checkpoint's config says it was saved with an image-classification head."""
    return any(
        str(arch).endswith("ForImageClassification")
        for arch in (getattr(config, "architectures", None) or [])
    )


def load_teacher(
    name_or_path: str,
    labels: int | Sequence[str] | Mapping[int, str] | None = None,
    *,
    trust_remote_code: bool = False,
    warn_new_head: bool = True,
    **from_pretrained_kwargs: Any,
):
    """Load a teacher classifier from the Hub or a local folder.

    Without ``labels`` the checkpoint must already be a classifier (e.g. a teacher finetuned on the
    task); a bare backbone such as ``facebook/dinov2-large`` is refused, because distilling from an
    untrained head transfers nothing. With ``labels`` (the task's label names) a checkpoint whose head
    already predicts exactly those labels is loaded as it is (the same labels in another order: its
    head's rows are reordered to ``labels``); otherwise a new, untrained head for them is attached to
    the backbone, ready for teacher finetuning, and every record of the classes in the config
    (``id2label``, timm's ``label_names``...) names ``labels``, not the base model's classes.
    ``name_or_path`` may also be a name the package ships (``mini-vfm``). ``warn_new_head=False``
    (what ``TeacherFinetuner``, which trains the head it attaches, passes) logs the new head at INFO.

    Weights load from safetensors only: a checkpoint with just pickle files (``pytorch_model.bin``)
    is refused, because unpickling can run code (``use_safetensors=False`` loads it anyway, through
    ``torch.load(weights_only=True)``). Code shipped in a repo runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    from_pretrained_kwargs.setdefault("use_safetensors", True)
    source = resolve_model_source(name_or_path)
    check_model_source(name_or_path, "teacher")
    config = AutoConfig.from_pretrained(
        source, trust_remote_code=trust_remote_code, **_config_kwargs(from_pretrained_kwargs)
    )
    load = dict(trust_remote_code=trust_remote_code, **from_pretrained_kwargs)
    if labels is None:
        if not has_classification_head(config):
            raise ValueError(
                f"'{name_or_path}' is a backbone without a classification head ({', '.join(config.architectures or ['?'])}); "
                "finetune it on the task first, or pass labels= to attach a new head for finetuning"
            )
        with safetensors_required(name_or_path):
            return AutoModelForImageClassification.from_pretrained(source, config=config, **load)

    def announce() -> None:
        (logger.warning if warn_new_head else logger.info)(
            "Attaching a new, untrained %d-class head to '%s'%s",
            len(label_config_kwargs(labels)["id2label"]),
            display_path(name_or_path) if os.path.exists(name_or_path) else name_or_path,
            ": finetune it on the task before distilling from it" if warn_new_head else "",
        )

    return load_for_classes(source, name_or_path, config, labels, on_new_head=announce, **load)


def load_for_classes(source: str, name_or_path: str, config, labels, *, on_new_head, **load: Any):
    """A classifier from ``source`` for the classes ``labels``: a head that already predicts exactly
    them is kept (its rows reordered when their order differs); otherwise ``on_new_head()`` is called
    and a new head replaces it. A checkpoint head of the right size but for other classes is loaded
    by transformers (the shapes fit), so it is re-initialised here. Every record of the classes in
    the config then names ``labels``. Shared by teachers and pretrained students."""
    from transformers import AutoModelForImageClassification

    label_kwargs = label_config_kwargs(labels)
    names = list(label_kwargs["id2label"].values())
    # a timm repo's config names no `architectures`, but a timm classifier always has its head
    headed = has_classification_head(config) or getattr(config, "model_type", None) == "timm_wrapper"
    existing = label_names_of(config) if headed else None
    if existing is not None and sorted(existing) == sorted(names):
        with safetensors_required(name_or_path):
            model = AutoModelForImageClassification.from_pretrained(source, config=config, **load)
        if existing != names:  # the same classes in another order: move the head's rows, keep the head
            reorder_classes(model, names)
        return model
    on_new_head()
    with safetensors_required(name_or_path):
        model = AutoModelForImageClassification.from_pretrained(
            source, ignore_mismatched_sizes=True, **label_kwargs, **load
        )
    # a head of the new size that came with the checkpoint was loaded, not replaced: start it afresh
    if headed and config.num_labels == len(names):
        reinitialise_head(model)
    set_label_space(model, names)  # the base model's class names must not survive in any field
    return model


def reorder_classes(model, names: Sequence[str]) -> None:
    """Permute ``model``'s head (rows of its classifier) so that output ``i`` is class ``names[i]``;
    the model's config must hold the same names in another order. Predictions are unchanged up to
    the order of the outputs."""
    from .heads import find_classification_head

    current = label_names_of(model.config) or []
    order = [current.index(n) for n in names]
    _, head = find_classification_head(model)
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        if head.bias is not None:
            head.bias.copy_(head.bias[order])
    set_label_space(model, list(names))


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
