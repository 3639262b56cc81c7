"""Teachers: any image classifier ``AutoModelForImageClassification`` loads (DINOv2, CLIP, SigLIP, ViT...)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .labels import label_config_kwargs, label_names_of
from .safe_loading import safetensors_required

__all__ = ["has_classification_head", "load_teacher"]

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
    **from_pretrained_kwargs: Any,
):
    """Load a teacher classifier from the Hub or a local folder.

    Without ``labels`` the checkpoint must already be a classifier (e.g. a teacher finetuned on the
    task); a bare backbone such as ``facebook/dinov2-large`` is refused, because distilling from an
    untrained head transfers nothing. With ``labels`` (the task's label names) a checkpoint whose head
    already predicts exactly those labels is loaded as it is; otherwise a new, untrained head for them
    is attached to the backbone, ready for teacher finetuning.

    Weights load from safetensors only: a checkpoint with just pickle files (``pytorch_model.bin``)
    is refused, because unpickling can run code (``use_safetensors=False`` loads it anyway, through
    ``torch.load(weights_only=True)``). Code shipped in a repo runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    from_pretrained_kwargs.setdefault("use_safetensors", True)
    config = AutoConfig.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, **_config_kwargs(from_pretrained_kwargs)
    )
    if labels is None:
        if not has_classification_head(config):
            raise ValueError(
                f"'{name_or_path}' is a backbone without a classification head ({', '.join(config.architectures or ['?'])}); "
                "finetune it on the task first, or pass labels= to attach a new head for finetuning"
            )
        with safetensors_required(name_or_path):
            return AutoModelForImageClassification.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
            )
    label_kwargs = label_config_kwargs(labels)
    if has_classification_head(config) and label_names_of(config) == list(label_kwargs["id2label"].values()):
        with safetensors_required(name_or_path):
            return AutoModelForImageClassification.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
            )
    logger.warning(
        "Attaching a new, untrained %d-class head to '%s': finetune it on the task before distilling from it.",
        label_kwargs["num_labels"],
        name_or_path,
    )
    with safetensors_required(name_or_path):
        return AutoModelForImageClassification.from_pretrained(
            name_or_path,
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
            **label_kwargs,
            **from_pretrained_kwargs,
        )


def _config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
