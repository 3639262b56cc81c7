"""Label spaces: how teacher, student and task agree on what each output index means."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["check_label_spaces_match", "label_config_kwargs", "label_names_of"]

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
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"label names must be unique; repeated: {duplicates[:5]}")
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
