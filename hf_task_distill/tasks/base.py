"""The task-type contract: what differs between the vision tasks a run can transfer knowledge on.

The paper (Vemulapalli et al., ICML 2024) covers image classification and semantic segmentation.
Everything a stage needs to know about the kind of prediction (which model class loads a
checkpoint, how predictions are scored, what a model card says) goes through a :class:`TaskType`,
so that a second task type is one new module registered with :func:`register_task_type`.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["TaskType", "available_task_types", "get_task_type", "register_task_type"]


class TaskType:
    """One kind of vision task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the task type's name, as the Hub's ``pipeline_tag`` spells it (``image-classification``).
        metric_names: the metrics :meth:`evaluate` reports, in the order tables show them.
        metric_titles: their column titles (same order).
    """

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]] = ()
    metric_titles: ClassVar[tuple[str, ...]] = ()

    def model_class(self):
        """The ``transformers`` auto class that loads a model of this task (``from_pretrained``)."""
        raise NotImplementedError

    def load_model(self, name_or_path: str, *, trust_remote_code: bool = False):
        """A model of this task from a folder or Hub id, with the package's shipped names resolved."""
        from ..sources import resolve_model_source

        return self.model_class().from_pretrained(
            resolve_model_source(name_or_path), trust_remote_code=trust_remote_code
        )

    def evaluate(self, model, dataset, *, task, batch_size: int, where: str) -> tuple[dict[str, float], Any]:
        """Score ``model`` on ``dataset`` (a split of ``task``).

        Returns:
            ``(metrics, details)``: :attr:`metric_names` to floats, and what a report adds (for
            classification the confusion matrix in the task's class order, or ``None``).
        """
        raise NotImplementedError

    def card_tags(self) -> list[str]:
        """Tags a model card of this task carries (besides the package's own)."""
        return [self.name]


_REGISTRY: dict[str, TaskType] = {}


def register_task_type(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: add a :class:`TaskType` to the registry under its ``name``.

    Raises:
        ValueError: a task type of that name is registered.
    """
    if cls.name in _REGISTRY:
        raise ValueError(f"a task type named '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def available_task_types() -> tuple[str, ...]:
    """The registered task types' names."""
    from . import classification  # noqa: F401 - registers the package's own

    return tuple(_REGISTRY)


def get_task_type(name: str = "image-classification") -> TaskType:
    """The registered task type called ``name``.

    Raises:
        ValueError: none has that name (the message lists them).
    """
    names = available_task_types()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task type '{name}'; registered: {', '.join(names)}")
    return _REGISTRY[name]
