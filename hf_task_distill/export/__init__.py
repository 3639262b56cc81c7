"""Export formats for a saved student, one file per format.

- ``base.py``: the :class:`ExportFormat` contract, the registry and :func:`export_student`.
- ``safetensors.py``: the transformers model folder (what is saved and published today).
- ``onnx.py``: ``onnx`` and ``onnx-int8``, an ``onnx/`` folder with parity and latency measured.

A new format (TorchScript, ...) is one new file: an ``ExportFormat`` subclass registered with
``register_export_format``, imported below; docs/models.md ("Adding an export format") says how.
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
from .onnx import OnnxExportError, OnnxFormat, OnnxInt8Format, OnnxParityError
from .safetensors import STUDENT_FILES, SafetensorsFormat

__all__ = [
    "STUDENT_FILES",
    "ExportFormat",
    "OnnxExportError",
    "OnnxFormat",
    "OnnxInt8Format",
    "OnnxParityError",
    "SafetensorsFormat",
    "available_export_formats",
    "check_student_folder",
    "export_student",
    "register_export_format",
    "unregister_export_format",
]

_register_builtin(SafetensorsFormat())
_register_builtin(OnnxFormat())
_register_builtin(OnnxInt8Format())
