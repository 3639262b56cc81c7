"""The offline demo: the whole pipeline on scikit-learn's digits, on a CPU, in a few minutes.

What it shows: every stage runs end to end (teacher finetuning, transfer set, distillation,
student finetuning, evaluation, a publishable student folder with its card and compute ledger),
and on a real labelled dataset a student distilled on unlabelled task images is compared with the
same student trained on the labels alone. What it does not show: the teacher here is a ResNet-34
trained from scratch on the few labels, not a foundation model with web-scale pretraining, so it
carries no outside knowledge; the gains the paper reports come from that knowledge.
"""

from __future__ import annotations

import os
from typing import Any

from .config import PipelineConfig

__all__ = ["DEMO_TEACHER", "demo_defaults", "make_demo_teacher", "run_demo"]

DEMO_TEACHER = "demo-resnet34"  # built on the fly: timm's ResNet-34 at 32 px, random initialisation

EXPLANATION = """\
What this demo shows: every stage of task-oriented knowledge transfer ran end to end, offline, on a
real dataset (scikit-learn's handwritten digits, {per_class} labelled images per class, upscaled to
32 px), and the student distilled on the unlabelled training images is compared with the same
student trained on the labels alone.
What it does not show: the teacher is a ResNet-34 trained from scratch on those few labels, not a
vision foundation model; it has no web-scale pretraining to pass on, so the paper's gains are not
expected here, and one seed on 539 test images moves by a point or two. Run the same pipeline with
--teacher facebook/dinov2-large on a GPU for that."""


def demo_defaults() -> dict[str, Any]:
    """Flag defaults of ``hf-task-distill demo`` (every one can still be overridden)."""
    return {
        "dataset": "digits",
        "per_class": 10,
        "teacher": DEMO_TEACHER,
        "teacher_strategy": "full",
        "teacher_epochs": 30.0,
        "teacher_learning_rate": 5e-4,
        "teacher_layer_decay": 1.0,
        "student": "resnet18",
        "student_image_size": 32,
        "distill_epochs": 10.0,
        "distill_learning_rate": 2e-3,
        "temperature": 2.0,
        "finetune_epochs": 30.0,
        "finetune_learning_rate": 5e-4,
        "batch_size": 16,
        "crop_min_scale": 0.6,
        "hflip_probability": 0.0,  # a mirrored digit is another glyph
        "logging_steps": 50,
        "output_dir": "runs/digits-demo",
    }


def make_demo_teacher(folder: str, label_names: list[str] | None = None) -> str:
    """A timm ResNet-34 for 32 px images, randomly initialised, saved the way VFMs are loaded.

    A CNN because, trained from scratch on 100 images, it learns far more than a ViT does (a
    4-layer ViT reached 0.35 test accuracy here, the ResNet-34 0.88).
    """
    from .models import create_student

    if not os.path.exists(os.path.join(folder, "config.json")):
        labels = label_names or [str(d) for d in range(10)]
        create_student("resnet34", labels, image_size=32).save_pretrained(folder)
    return folder


def run_demo(config: PipelineConfig) -> str:
    from .pipeline import Pipeline

    if config.teacher.teacher == DEMO_TEACHER:
        config.teacher.teacher = make_demo_teacher(
            os.path.join(os.path.abspath(config.run.output_dir), DEMO_TEACHER)
        )
    pipeline = Pipeline(config)
    pipeline.run()
    return pipeline.summary() + "\n\n" + EXPLANATION.format(per_class=config.task.per_class)
