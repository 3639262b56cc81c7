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
    """Where a target task lives on the Hub and how to read it (an entry of ``tasks.json``).

    Args:
        name (`str`): the name ``load_target_task`` accepts (matched lower-case).
        hub_id (`str`): the Hub dataset id.
        image_column (`str`, *optional*, defaults to `"image"`): the image column.
        label_column (`str`, *optional*, defaults to `"label"`): the label column; for a segmentation task
            (``task_type="image-segmentation"``) the column holding the per-pixel class-id masks.
        splits (`dict[str, str]`, *optional*, defaults to `{"train": "train"}`): task split role
            (``train``, ``validation``, ``test``) -> the Hub dataset's split name.
        num_classes (`int`, *optional*): the class count, for reference.
        label_names (`list[str]`, *optional*): class names, when the dataset's label column has none.
        config_name (`str`, *optional*): the Hub dataset's configuration.
        license (`str`, *optional*): the dataset's license, for reference.
        gated (`bool`, *optional*, defaults to `False`): whether the dataset needs accepting terms on the Hub.
        paper_label_budgets (`dict`, *optional*): the label budgets the paper used on this task.
        notes (`str`, *optional*): free text.
        verified (`list[str]`, *optional*): what has been checked about the entry.
        task_type (`str`, *optional*, defaults to `"image-classification"`): the task's Hub pipeline tag:
            ``"image-classification"`` (one class id per image) or ``"image-segmentation"`` (semantic
            segmentation: one class id per pixel, in the mask column ``label_column``).
        reduce_labels (`bool`, *optional*, defaults to `False`): segmentation only: how raw mask values map
            to class ids. ``True`` is the ADE20K convention (``reduce_labels`` of transformers' segmentation
            image processors, mmsegmentation's ``reduce_zero_label``): raw 0 ("other", unlabelled) becomes
            ``ignore_index`` and raw ``k`` becomes class ``k - 1``. ``False`` keeps raw values as class ids.
        ignore_index (`int`, *optional*, defaults to 255): segmentation only: the mask value of pixels that
            carry no label (left out of the loss and the metrics).
    """

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
    task_type: str = "image-classification"
    reduce_labels: bool = False
    ignore_index: int = 255

    def __post_init__(self):
        if self.reduce_labels and self.task_type == "image-classification":
            raise ValueError(
                f"task '{self.name}': reduce_labels maps segmentation mask values, but task_type is "
                "'image-classification'; set task_type='image-segmentation' or drop reduce_labels"
            )

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> TaskSpec:
        """A spec from one ``tasks.json`` entry.

        Args:
            name (`str`): the task's name (the entry's key).
            entry (`dict[str, Any]`): the fields other than ``name``.

        Returns:
            `TaskSpec`: the spec.

        Raises:
            ValueError: if ``entry`` has a field ``TaskSpec`` does not know (the message lists both).
        """
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
    """The spec of a built-in or :func:`register_task` task, by name (case-insensitive).

    Args:
        name (`str`): a name from :func:`list_tasks`.

    Returns:
        `TaskSpec`: the spec; one registered in this process wins over a built-in of the same name.

    Raises:
        KeyError: if no task has that name (the message lists the known tasks).
    """
    tasks = {**_builtin_tasks(), **_USER_TASKS}
    key = name.lower()
    if key not in tasks:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(tasks))}")
    return tasks[key]


def register_task(spec: TaskSpec) -> None:
    """Make a task loadable by name for this process (overrides a built-in of the same name)."""
    _USER_TASKS[spec.name.lower()] = spec
