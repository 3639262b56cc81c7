"""Task types (image classification; semantic segmentation plugs in here): see :mod:`.base`."""

from .base import TaskType, available_task_types, get_task_type, register_task_type, task_type_of

__all__ = ["TaskType", "available_task_types", "get_task_type", "register_task_type", "task_type_of"]
