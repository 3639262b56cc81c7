"""The ``safetensors`` format: the transformers model folder itself (``config.json``,
``model.safetensors``, ``preprocessor_config.json``), which ``AutoModelForImageClassification``,
``pipeline("image-classification")`` and, for timm students, ``timm.create_model("local-dir:...")``
load. It is what a run publishes (``hub/publish.py`` copies :data:`STUDENT_FILES`).
"""

from __future__ import annotations

import os
import shutil

from .base import ExportFormat

__all__ = ["STUDENT_FILES", "SafetensorsFormat"]

#: A student folder's files in this format; the processor's is optional (timm students read their
#: preprocessing from ``config.json``'s ``pretrained_cfg``).
STUDENT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class SafetensorsFormat(ExportFormat):
    """The folder's ``STUDENT_FILES``, copied (with the usual permissions) into the output folder."""

    name = "safetensors"

    def export(self, model_folder: str, output_dir: str) -> list[str]:
        """Copy the files present in ``model_folder``; into the same folder, nothing is copied."""
        written = []
        for name in STUDENT_FILES:
            source, target = os.path.join(model_folder, name), os.path.join(output_dir, name)
            if not os.path.exists(source):
                continue
            if not os.path.exists(target) or not os.path.samefile(source, target):
                # copyfile, not copy2: the copy gets the usual permissions, not a temp file's 0600
                shutil.copyfile(source, target)
            written.append(target)
        return written
