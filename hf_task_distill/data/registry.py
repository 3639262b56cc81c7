"""Target tasks known by name, read from ``tasks.json`` (data, not code)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["TaskSpec", "get_task_spec", "list_tasks", "register_task"]


@dataclass(frozen=True)
class TaskSpec:
    """Where a target task lives on the Hub and how to read it."""

    name: str
    hub_id: str
    image_column: str = "image"
    label_column: str = "label"
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train"})
    num_classes: int | None = None
    label_names: list[str] | None = None
    config_name: str | None = None
    license: str | None = None
    gated: bool = False
    paper_label_budgets: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    verified: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> TaskSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"task '{name}' has unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(name=name, **entry)


_USER_TASKS: dict[str, TaskSpec] = {}


def _builtin_tasks() -> dict[str, TaskSpec]:
    text = resources.files("hf_task_distill.data").joinpath("tasks.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    return {name: TaskSpec.from_dict(name, entry) for name, entry in raw.items() if not name.startswith("_")}


def list_tasks() -> list[str]:
    """Names accepted by :func:`get_task_spec` and ``load_target_task``."""
    return sorted({**_builtin_tasks(), **_USER_TASKS})


def get_task_spec(name: str) -> TaskSpec:
    tasks = {**_builtin_tasks(), **_USER_TASKS}
    key = name.lower()
    if key not in tasks:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(tasks))}")
    return tasks[key]


def register_task(spec: TaskSpec) -> None:
    """Make a task loadable by name for this process (overrides a built-in of the same name)."""
    _USER_TASKS[spec.name.lower()] = spec
