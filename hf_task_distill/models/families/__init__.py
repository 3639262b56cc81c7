"""Student families: what ``create_student`` can build, one file per family.

- ``base.py``: the :class:`StudentFamily` contract and the registry (``register_student_family``...).
- ``timm.py``: timm architecture names, wrapped as transformers' ``TimmWrapperForImageClassification``.
- ``transformers.py``: Hub ids and folders of any transformers image classifier (asked last).

A new family is one new file: a ``StudentFamily`` subclass, registered with
``register_student_family``; docs/models.md ("Adding a student family") shows one.
"""

from __future__ import annotations

from .base import (
    StudentFamily,
    _register_builtin,
    available_student_families,
    register_student_family,
    student_families_of,
    student_family_for,
    unregister_student_family,
    warn_new_head,
)
from .timm import TimmFamily, is_timm_architecture
from .transformers import TransformersFamily

__all__ = [
    "StudentFamily",
    "TimmFamily",
    "TransformersFamily",
    "available_student_families",
    "is_timm_architecture",
    "register_student_family",
    "student_family_for",
    "student_families_of",
    "unregister_student_family",
    "warn_new_head",
]

# Asked in reverse order of registration: timm names first, then anything transformers loads.
_register_builtin(TransformersFamily())
_register_builtin(TimmFamily())
