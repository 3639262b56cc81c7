"""Export formats for a saved student, one file per format.

- ``base.py``: the :class:`ExportFormat` contract, the registry and :func:`export_student`.
- ``safetensors.py``: the transformers model folder (what is saved and published today).

A new format (ONNX, TorchScript...) is one new file: an ``ExportFormat`` subclass registered with
``register_export_format``, imported below; docs/models.md ("Adding an export format") shows one.
"""

from __future__ import annotations

from .base import (
    ExportFormat,
    _register_builtin,
    available_export_formats,
    check_student_folder,
    export_student,
    register_export_format,
    unregister_export_format,
)
from .safetensors import STUDENT_FILES, SafetensorsFormat

__all__ = [
    "STUDENT_FILES",
    "ExportFormat",
    "SafetensorsFormat",
    "available_export_formats",
    "check_student_folder",
    "export_student",
    "register_export_format",
    "unregister_export_format",
]

_register_builtin(SafetensorsFormat())
