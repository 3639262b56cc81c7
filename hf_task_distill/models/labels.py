"""Label spaces: how teacher, student and task agree on what each output index means."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "check_label_spaces_match",
    "label_config_kwargs",
    "label_id_map",
    "label_names_of",
    "set_label_space",
]

_DEFAULT_NAME = re.compile(r"^LABEL_\d+$")


def label_config_kwargs(labels: int | Sequence[str] | Mapping[int, str]) -> dict[str, Any]:
    """``num_labels``/``id2label``/``label2id`` for ``from_pretrained``/configs, from names, a mapping or a count."""
    if isinstance(labels, int):
        names = [f"LABEL_{i}" for i in range(labels)]
    elif isinstance(labels, Mapping):
        names = [str(labels[i]) for i in sorted(int(k) for k in labels)]
    else:
        names = [str(name) for name in labels]
    if not names:
        raise ValueError("a task needs at least one label")
    from ..data.validation import check_label_names

    names = check_label_names(names, where="labels")
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def label_names_of(config: Any) -> list[str] | None:
    """The config's label names in id order, or ``None`` when they are only transformers' placeholders."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(int(k) for k in id2label)] if id2label else []
    if not names or all(_DEFAULT_NAME.match(n) for n in names):
        return None
    return names


def check_label_spaces_match(teacher: Any, student: Any) -> None:
    """Raise if teacher and student disagree on the number or the names of the classes."""
    t_cfg, s_cfg = getattr(teacher, "config", teacher), getattr(student, "config", student)
    t_num, s_num = getattr(t_cfg, "num_labels", None), getattr(s_cfg, "num_labels", None)
    if t_num != s_num:
        raise ValueError(
            f"teacher and student label spaces differ: the teacher predicts {t_num} classes, the student {s_num}. "
            "Create the student with the teacher's labels (create_student(..., labels=teacher.config.id2label))"
        )
    t_names, s_names = label_names_of(t_cfg), label_names_of(s_cfg)
    if t_names is not None and s_names is not None and t_names != s_names:
        diffs = [
            f"{i}: teacher '{a}' vs student '{b}'"
            for i, (a, b) in enumerate(zip(t_names, s_names, strict=True))
            if a != b
        ]
        raise ValueError(
            f"teacher and student label spaces differ at {len(diffs)} index(es) ({'; '.join(diffs[:3])}); "
            "output index i must mean the same class for both"
        )


def set_label_space(model_or_config: Any, labels: int | Sequence[str] | Mapping[int, str]) -> None:
    """Make every record of the classes in a model's config say ``labels``: ``num_labels``,
    ``id2label``, ``label2id``, and the copies some families keep besides (timm's ``label_names`` and
    ``pretrained_cfg["label_names"]``/``["label_descriptions"]``, which ``TimmWrapperConfig`` writes in
    place of ``id2label`` and reads back first). Call it whenever a new head is attached: otherwise a
    checkpoint keeps the base model's class names, and ``pipeline()`` reports those or ``LABEL_i``."""
    config = getattr(model_or_config, "config", model_or_config)
    kwargs = label_config_kwargs(labels)
    config.num_labels = kwargs["num_labels"]
    config.id2label = kwargs["id2label"]
    config.label2id = kwargs["label2id"]
    if hasattr(config, "label_names") or type(config).__name__ == "TimmWrapperConfig":
        config.label_names = list(kwargs["id2label"].values())
    pretrained_cfg = getattr(config, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, dict):
        pretrained_cfg.pop("label_descriptions", None)
        if "label_names" in pretrained_cfg:
            pretrained_cfg["label_names"] = list(kwargs["id2label"].values())
        pretrained_cfg.pop("num_classes", None)
    if hasattr(config, "num_classes"):  # timm's own count, written next to num_labels
        config.num_classes = kwargs["num_labels"]


def label_id_map(
    data_names: Sequence[str] | None,
    model_names: Sequence[str] | None,
    *,
    num_labels: int | None = None,
    where: str = "dataset",
) -> list[int] | None:
    """Where each of a dataset's classes is among a model's outputs: ``map[i]`` is the model's id of
    dataset class ``i``; ``None`` when the ids already agree or nothing can be checked.

    Classes are matched by name (``data_names``: a ``ClassLabel``'s names; ``model_names``: the model's
    ``id2label`` in id order, ``None`` for transformers' ``LABEL_i`` placeholders). The same classes in
    another order, or a subset of the model's classes, are remapped; a dataset class the model does
    not have is a ``ValueError`` giving both lists. Without names on both sides only the class count
    (``num_labels``) can be checked.
    """
    model_names = None if model_names is None else [str(n) for n in model_names]
    if model_names is not None and all(_DEFAULT_NAME.match(n) for n in model_names):
        model_names = None
    count = len(model_names) if model_names is not None else num_labels
    if data_names is None or model_names is None:
        if data_names is not None and count is not None and len(data_names) > count:
            raise ValueError(
                f"{where} has {len(data_names)} classes ({_listed(data_names)}) but the model predicts {count}"
            )
        return None
    data_names = [str(n) for n in data_names]
    if data_names == model_names[: len(data_names)]:
        return None
    unknown = [n for n in data_names if n not in model_names]
    if unknown:
        raise ValueError(
            f"{where}: class(es) {_listed(unknown)} are not among the model's classes. The dataset's "
            f"classes, in id order: {_listed(data_names)}; the model's: {_listed(model_names)}"
        )
    mapping = [model_names.index(n) for n in data_names]
    logger.info(
        "%s: the dataset numbers its classes in another order than the model (%s vs %s): labels are "
        "matched to the model's outputs by name",
        where,
        _listed(data_names),
        _listed(model_names),
    )
    return mapping


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
