"""The task-type contract: what differs between the vision tasks a run can transfer knowledge on.

The paper (Vemulapalli et al., ICML 2024) covers image classification and semantic segmentation.
Everything a stage needs to know about the kind of prediction (which model class loads a
checkpoint, how predictions are scored, what a model card says) goes through a :class:`TaskType`,
so that a second task type is one new module registered with :func:`register_task_type`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..registry import Registry

__all__ = [
    "TaskType",
    "available_task_types",
    "get_task_type",
    "register_task_type",
    "task_type_of",
    "unregister_task_type",
]


class TaskType:
    """One kind of vision task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the task type's name, as the Hub's ``pipeline_tag`` spells it (``image-classification``).
        metric_names: the metrics :meth:`evaluate` reports, in the order tables show them.
        metric_titles: their column titles (same order).
        details_file: the evaluation stage's file for :meth:`evaluate`'s details, and its key.
    """

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]] = ()
    metric_titles: ClassVar[tuple[str, ...]] = ()
    #: where the evaluation stage writes :meth:`evaluate`'s details: ``(file name without .json, key)``
    details_file: ClassVar[tuple[str, str]] = ("evaluation_details", "details")

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

    def matches_model(self, model) -> bool:
        """Whether ``model`` (a ``PreTrainedModel``) is a model of this task type."""
        names = _auto_class_names(self.model_class())
        return any(cls.__name__ in names for cls in type(model).__mro__)

    def check_label_spaces(self, teacher, student) -> None:
        """Raise ``ValueError`` when ``teacher`` and ``student`` do not predict the same classes in the
        same order (distillation matches their outputs class by class), or when the teacher is a
        model of another task type (an image classifier cannot teach a segmentation student)."""
        from ..models.labels import check_label_spaces_match

        teacher_task = task_type_of(teacher)
        if teacher_task.name != self.name:
            raise ValueError(
                f"the teacher ({type(teacher).__name__}) is a {teacher_task.name} model but the student "
                f"({type(student).__name__}) is a {self.name} model: distillation matches their outputs, "
                f"so the teacher must be a {self.name} model too (finetune one on the task first)"
            )

        check_label_spaces_match(teacher, student)

    def render_target(
        self, value: Any, view: Any, label_map: list[int] | None, *, size: tuple[int, int] | None = None
    ):
        """A row's training target as the model sees it, given the view its image was rendered with.

        Args:
            value: the row's label column value (``None``, ``-1`` or ``-100``: unlabelled).
            view (`ViewParams` or `None`): the crop box and flip applied to the image (the training
                view, or the model's evaluation view). A dense target (a mask) is cropped and flipped
                the same way.
            label_map (`list[int]` or `None`): the model's id of each dataset class.
            size (`tuple[int, int]`, *optional*): the ``(height, width)`` the image was rendered at
                (the model's input size); a dense target is rendered at it.

        Returns:
            The target (``-100`` for an unlabelled row).
        """
        raise NotImplementedError

    def check_targets(
        self,
        dataset,
        column: str,
        *,
        num_labels: int | None,
        label_names: list[str] | None,
        image_column: str,
        where: str,
    ) -> list[int] | None:
        """Check a dataset's target column before any step and return the label map (the model's id of
        each dataset class, or ``None`` to keep the ids); the default checks nothing.

        Raises:
            ValueError: a target the model cannot learn from (the message names the row and column).
        """
        return None

    def card_tags(self) -> list[str]:
        """Tags a model card of this task carries (besides the package's own)."""
        return [self.name]


_REGISTRY = Registry(
    "task type",
    TaskType,
    required=("model_class", "render_target", "evaluate"),
    unregister_hint="unregister_task_type",
)


def register_task_type(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: add a :class:`TaskType` to the registry under its ``name``.

    Raises:
        TypeError: not a :class:`TaskType`, or one missing ``model_class``, ``render_target`` or
            ``evaluate``.
        ValueError: no ``name``, or a task type of that name is registered.
    """
    return _REGISTRY.register(cls)


def _register_builtin(cls: type[TaskType]) -> type[TaskType]:
    return _REGISTRY.register(cls, builtin=True)


def unregister_task_type(name: str) -> TaskType:
    """Remove a task type added with :func:`register_task_type` (a plugin's or a test's) and return it.

    Raises:
        ValueError: no task type has that name, or it is one of the package's own.
    """
    return _REGISTRY.unregister(name)


def available_task_types() -> tuple[str, ...]:
    """The registered task types' names (the package's own are registered when
    :mod:`hf_task_distill.tasks` is imported, which importing this module does first)."""
    return tuple(_REGISTRY.names())


def get_task_type(name: str = "image-classification") -> TaskType:
    """The registered task type called ``name``.

    Raises:
        ValueError: none has that name (the message lists them).
    """
    return _REGISTRY.get(name)


def task_type_of(model) -> TaskType:
    """The registered task type whose models ``model`` is, asking the latest registered first (a
    plugin's before the package's own); a model of no registered type gets image classification,
    whose checks then say what is wrong."""
    for task_type in _REGISTRY.entries(newest_first=True):
        if task_type.matches_model(model):
            return task_type
    return _REGISTRY.get("image-classification")


def _auto_class_names(auto_class) -> set[str]:
    """The names of the model classes an auto class maps to, including models registered with it
    (names only: nothing is imported)."""
    mapping = auto_class._model_mapping
    names = set()
    for value in [*mapping._model_mapping.values(), *mapping._extra_content.values()]:
        for item in value if isinstance(value, (tuple, list)) else (value,):
            names.add(item if isinstance(item, str) else item.__name__)
    return names
