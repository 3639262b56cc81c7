"""The stages of a run, one module each; see :mod:`hf_task_distill.stages.base` for the contract.

teacher (finetune the VFM on the labels) -> transfer (the unlabelled images to distil on) -> distill
(match the teacher on them) -> finetune (the student on the labels) -> evaluate -> export -> publish;
plus an optional baseline (the student on the labels alone) for comparison, and export (ONNX, with
parity and latency) only when ``--export_formats`` names a format.
"""

from . import builtin  # noqa: F401 - registers the package's own stages, in run order
from .base import (
    Stage,
    StageNotReady,
    StageResult,
    available_stages,
    check_order,
    get_stage,
    load_plugins,
    register_stage,
    stage_commands,
    stages_for_command,
    unregister_stage,
)
from .context import RunContext, check_models_reachable

__all__ = [
    "RunContext",
    "Stage",
    "StageNotReady",
    "StageResult",
    "available_stages",
    "check_models_reachable",
    "check_order",
    "get_stage",
    "load_plugins",
    "register_stage",
    "stage_commands",
    "stages_for_command",
    "unregister_stage",
]
