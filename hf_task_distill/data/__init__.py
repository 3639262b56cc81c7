"""Data layer: target tasks, label budgets, image decoding and paired teacher/student views."""

from .budget import label_budget_indices, select_label_budget, stratified_holdout_indices
from .images import load_rgb_image, to_rgb
from .loading import TargetTask, find_image_column, find_label_column, load_image_dataset, load_target_task
from .registry import TaskSpec, get_task_spec, list_tasks, register_task
from .validation import UNLABELLED, check_image_column, check_label_ids, label_array
from .views import (
    PairedViews,
    ViewAugmentation,
    ViewParams,
    ViewSpec,
    ViewTransform,
    eval_view,
    render_view,
    sample_view,
    single_view_dataset,
)

__all__ = [
    "UNLABELLED",
    "PairedViews",
    "TargetTask",
    "TaskSpec",
    "ViewAugmentation",
    "ViewParams",
    "ViewSpec",
    "ViewTransform",
    "check_image_column",
    "check_label_ids",
    "eval_view",
    "find_image_column",
    "find_label_column",
    "get_task_spec",
    "label_array",
    "label_budget_indices",
    "list_tasks",
    "load_image_dataset",
    "load_rgb_image",
    "load_target_task",
    "register_task",
    "render_view",
    "sample_view",
    "select_label_budget",
    "single_view_dataset",
    "stratified_holdout_indices",
    "to_rgb",
]
