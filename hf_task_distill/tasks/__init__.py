"""Task types (image classification, semantic segmentation): see :mod:`.base`."""

from . import classification, segmentation  # noqa: F401 - registers the package's own task types
from .base import (
    TaskType,
    available_task_types,
    get_task_type,
    register_task_type,
    task_type_of,
    unregister_task_type,
)

__all__ = [
    "TaskType",
    "available_task_types",
    "get_task_type",
    "register_task_type",
    "task_type_of",
    "unregister_task_type",
]
