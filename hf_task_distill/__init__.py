"""hf_task_distill: task-oriented knowledge transfer from vision foundation models to small students.

Vemulapalli et al., "Knowledge Transfer from Vision Foundation Models for Efficient Training of Small
Task-specific Models" (ICML 2024, arXiv 2311.18237). Names are imported lazily so that
``import hf_task_distill`` stays cheap; ``from hf_task_distill import DistillationTrainer`` works as usual.
The three classes of the design import from here: ``DistillationTrainer``, ``TeacherFinetuner`` and
``RetrievalTransferSetBuilder``; docs/api.md lists every top-level name (tests/test_api.py checks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "DistillationArguments": "trainer",
    "DistillationTrainer": "trainer",
    "TeacherFinetuner": "teacher_finetuning",
    "TeacherFinetuningArguments": "teacher_finetuning",
    "FinetuningResult": "teacher_finetuning",
    "DistillationLoss": "losses",
    "LabelCrossEntropy": "losses",
    "LossInputs": "losses",
    "LossTerm": "losses",
    "SoftTargetKL": "losses",
    "available_losses": "losses",
    "build_loss": "losses",
    "register_loss": "losses",
    "classification_metrics": "metrics",
    "distillation_metrics": "metrics",
    "create_student": "models",
    "load_teacher": "models",
    "check_label_spaces_match": "models",
    "convert_timm_checkpoint": "models",
    "CheckpointMismatch": "models",
    "TeacherCache": "teacher_cache",
    "TeacherCacheConfig": "teacher_cache",
    "build_teacher_cache": "teacher_cache",
    "PairedViews": "data",
    "ViewAugmentation": "data",
    "ViewSpec": "data",
    "TargetTask": "data",
    "load_target_task": "data",
    "list_tasks": "data",
    "select_label_budget": "data",
    "RetrievalConfig": "retrieval",
    "RetrievalTransferSetBuilder": "retrieval",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_task_distill' has no attribute '{name}'")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .data import (
        PairedViews,
        TargetTask,
        ViewAugmentation,
        ViewSpec,
        list_tasks,
        load_target_task,
        select_label_budget,
    )
    from .losses import (
        DistillationLoss,
        LabelCrossEntropy,
        LossInputs,
        LossTerm,
        SoftTargetKL,
        available_losses,
        build_loss,
        register_loss,
    )
    from .metrics import classification_metrics, distillation_metrics
    from .models import (
        CheckpointMismatch,
        check_label_spaces_match,
        convert_timm_checkpoint,
        create_student,
        load_teacher,
    )
    from .retrieval import RetrievalConfig, RetrievalTransferSetBuilder
    from .teacher_cache import TeacherCache, TeacherCacheConfig, build_teacher_cache
    from .teacher_finetuning import FinetuningResult, TeacherFinetuner, TeacherFinetuningArguments
    from .trainer import DistillationArguments, DistillationTrainer
