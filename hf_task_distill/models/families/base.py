"""The contract of a student family and the registry ``create_student`` dispatches over.

A family answers two questions: which names it builds (``matches``: ``"resnet18"`` is timm's, a Hub
id or folder is transformers') and which built models it speaks for (``owns``: for the views a
model is shown, :meth:`StudentFamily.view_spec`, and the layer its features are read at,
:meth:`StudentFamily.head`). Families are asked in reverse order of registration, so a family you
register is asked before the built-in ``timm`` and ``transformers`` ones; ``transformers``, asked
last, takes every name and every model.

This module imports nothing of the package, so ``sources``, ``data.views`` and ``models.heads`` can
ask the registry without an import cycle (a view spec is a ``hf_task_distill.data.ViewSpec``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ...registry import Registry

__all__ = [
    "StudentFamily",
    "available_student_families",
    "register_student_family",
    "student_family_for",
    "student_families_of",
    "unregister_student_family",
    "warn_new_head",
]

logger = logging.getLogger(__name__)

Labels = int | Sequence[str] | Mapping[int, str]


def warn_new_head(name_or_path: str, existing: list[str] | None, num_labels: int) -> None:
    """Log (WARNING) that a pretrained student whose classes are not the task's keeps its body and gets
    a new, untrained head; ``existing``: the checkpoint's own class names, if it has any."""
    what = f"predicts {len(existing)} other classes" if existing else "comes with its own classifier"
    logger.warning(
        "student '%s' %s: a new, untrained %d-class head replaces its classifier (its other weights are kept)",
        name_or_path,
        what,
        num_labels,
    )


class StudentFamily:
    """One kind of student: how its names are recognised, how it is built, and how it is read.

    Subclass it, set ``name``, implement :meth:`matches` and :meth:`create`, and register an instance
    with :func:`register_student_family` (also usable as a class decorator). Override :meth:`owns`
    together with :meth:`view_spec` or :meth:`head` when the family's models preprocess or expose
    their classifier differently from a transformers image classifier; a method returning ``None``
    leaves the question to the next family that owns the model. A family that builds students for
    other task types lists them in :attr:`task_types` and takes a ``task_type`` keyword in :meth:`create`.
    """

    #: The family's registry name (``available_student_families()`` lists it).
    name: str = ""
    #: The task types (``pipeline_tag`` names) whose students the family builds; ``create_student``
    #: passes ``task_type=`` to :meth:`create` for every type but ``"image-classification"``.
    task_types: tuple[str, ...] = ("image-classification",)

    def matches(self, name_or_path: str) -> bool:
        """Whether ``create_student(name_or_path, ...)`` is this family's to build."""
        raise NotImplementedError

    def check(self, name_or_path: str, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` (``"--student"``, ``"student"``) if ``name_or_path``,
        which this family matches, cannot be built; called before any stage runs (by the CLI's
        settings check and by ``create_student``). The default accepts every matched name."""

    def create(
        self,
        name_or_path: str,
        labels: Labels,
        *,
        pretrained: bool = False,
        image_size: int | None = None,
        model_args: dict[str, Any] | None = None,
        **from_pretrained_kwargs: Any,
    ):
        """Build a classifier for ``labels`` (a count, names, or ``id2label``), as a transformers
        ``PreTrainedModel`` whose config records the labels (``label_config_kwargs(labels)``).

        Args:
            name_or_path: a name this family :meth:`matches`.
            labels: the task's classes.
            pretrained: load the family's weights (a new head replaces the classifier) rather than
                starting from the architecture's own initialisation.
            image_size: the training and evaluation resolution in pixels (square), or ``None`` for
                the family's default.
            model_args: architecture options, recorded so that the model rebuilds identically.
            **from_pretrained_kwargs: for families that load from the Hub or a folder.
        """
        raise NotImplementedError

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is of this family (for :meth:`view_spec` and :meth:`head`). Default: no."""
        return False

    def view_spec(self, model: Any) -> Any:
        """How ``model`` wants its pixels, a ``ViewSpec`` (``ViewSpec.from_model`` asks), or ``None``
        to leave it to the next family that owns the model."""
        return None

    def head(self, model: Any) -> nn.Module | None:
        """The layer mapping ``model``'s features to its classes (``find_classification_head`` and
        the feature losses read its input; it needs ``in_features``), or ``None`` for the next family."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


#: The registered families; lookups walk them newest first (the latest registered family is asked first).
_FAMILIES = Registry(
    "student family",
    StudentFamily,
    required=("matches", "create"),
    unregister_hint="unregister_student_family",
    listed=lambda names: list(reversed(names)),
)


def register_student_family(family: StudentFamily | type[StudentFamily]):
    """Register ``family`` (an instance, or a class with a no-argument constructor) under its
    ``name``; it is asked before every family registered earlier, the built-in ones included.

    Usable as a class decorator (``@register_student_family`` above ``class MyFamily(StudentFamily)``).

    Returns:
        ``family`` as given (the class, when decorating one).

    Raises:
        TypeError: ``family`` is not a ``StudentFamily``, or does not implement ``matches``/``create``.
        ValueError: it has no ``name``, or another family is registered under that name.
    """
    return _FAMILIES.register(family)


def _register_builtin(family: StudentFamily) -> None:
    _FAMILIES.register(family, builtin=True)


def unregister_student_family(name: str) -> StudentFamily:
    """Remove the family registered as ``name`` and return it (tests and notebooks clean up with this).

    Raises:
        ValueError: ``name`` is not registered, or is one of the package's own families.
    """
    return _FAMILIES.unregister(name)


def available_student_families() -> list[str]:
    """The registered families' names, in the order they are asked."""
    return _FAMILIES.names()


def student_family_for(name_or_path: str, *, custom_only: bool = False) -> StudentFamily | None:
    """The first family (latest registered first) that matches ``name_or_path``.

    ``custom_only``: only families registered outside the package (``None`` when none matches), for
    ``check_model_source``, which checks the built-in families' names itself.
    """
    for family in _FAMILIES.entries(newest_first=True, custom_only=custom_only):
        if family.matches(name_or_path):
            return family
    return None


def student_families_of(model: Any) -> list[StudentFamily]:
    """The families that own ``model``, in the order they are asked (the built-in ``transformers``
    family owns every model, so the list ends with it)."""
    return [family for family in _FAMILIES.entries(newest_first=True) if family.owns(model)]


def family_view_spec(model: Any) -> Any:
    """The first view spec an owning family gives for ``model`` (``ViewSpec.from_model`` without a
    processor)."""
    for family in student_families_of(model):
        spec = family.view_spec(model)
        if spec is not None:
            return spec
    raise ValueError(f"no student family reads the preprocessing of {type(model).__name__}")


def family_head(model: Any) -> nn.Module:
    """The first classification head an owning family gives for ``model``."""
    for family in student_families_of(model):
        head = family.head(model)
        if head is not None:
            return head
    raise ValueError(f"no student family finds the classification head of {type(model).__name__}")
