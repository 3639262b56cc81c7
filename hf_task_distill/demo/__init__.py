"""The offline demo: the whole pipeline on scikit-learn's digits, on a CPU, in a few minutes.

What it shows: every stage runs end to end (teacher finetuning, transfer set, distillation,
student finetuning, evaluation, the student exported to ONNX with its parity and latency (with the
``onnx`` extra), a publishable student folder with its card and compute ledger, and
with matplotlib a results chart and a confusion matrix in the run folder) on a
real labelled dataset, with a teacher that knows more than the labels: the shipped mini-VFM,
pretrained on 30,000 rendered printed characters (see docs/miniature.md). The student distilled
from it on the unlabelled digits is compared with the same student trained on the labels alone.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import PipelineConfig

__all__ = ["DEMO_TEACHER", "demo_defaults", "figures_summary", "make_demo_teacher", "run_demo"]

DEMO_TEACHER = "mini-vfm"  # the shipped mini-VFM: every entry point takes the name (hf_task_distill.sources)

EXPLANATION = """\
What this demo shows: every stage of task-oriented knowledge transfer ran end to end, offline, on a
real dataset (scikit-learn's handwritten digits, {per_class} labelled images per class, upscaled to
32 px). The teacher is the mini-VFM shipped with the package, a 1.3M-parameter ResNet pretrained on
30,000 rendered printed characters of 269 classes: it has never seen handwriting, but it knows what
strokes and glyphs look like, which the labels alone do not teach. The student distilled from it on
the unlabelled training digits is compared with the same student trained on the labels alone.
What it does not show: a real foundation model at scale. One seed on 539 test images moves by a point
or two; docs/miniature.md has the multi-seed comparison. Run the same pipeline with
--teacher facebook/dinov2-large on a GPU for the real thing."""


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
        # the digits are 32 px already: evaluated (and exported) as they are, with no resampling
        # (resnet18's own crop_pct 0.95 would upscale them to 33 px and crop 32)
        "student_crop_pct": 1.0,
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
        # the student exported to ONNX (fp32 and int8) with parity and latency measured, when the
        # onnx extra is installed; without it the demo says how to get the export (_export_note)
        "export_formats": ["onnx", "onnx-int8"] if _onnx_installed() else [],
    }


def _onnx_installed() -> bool:
    """Whether the ``onnx`` extra's packages (onnx, onnxruntime, onnxscript) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "onnxscript"))


def _export_note(config: PipelineConfig) -> str:
    """Where the demo's exported student is (the export line is in the summary above it), or how to
    get one when the run does not export."""
    if config.run.export_formats:
        folder = os.path.join(config.run.output_dir, "export", "model")
        return (
            f"Exported student: {folder} (onnx/ with export.json; published with the student in "
            "publish/student/onnx/; docs/deployment.md runs it in Transformers.js)"
        )
    return (
        "Export skipped: pip install 'hf-task-distill[onnx]' to export the student to ONNX (docs/models.md)"
    )


def make_demo_teacher(folder: str, label_names: list[str] | None = None) -> str:
    """The earlier demo's teacher: a timm ResNet-34 for 32 px images, randomly initialised (trained
    on the labels only, so it knows no more than they do). ``benchmarks/cache_fidelity.py`` uses it.
    """
    from ..models import create_student

    if not os.path.exists(os.path.join(folder, "config.json")):
        labels = label_names or [str(d) for d in range(10)]
        create_student("resnet34", labels, image_size=32).save_pretrained(folder)
    return folder


def figures_summary(run_dir: str, results: dict[str, dict[str, float]], title: str | None = None) -> str:
    """Draw the demo's figures (``<run>/results.png``, ``<run>/confusion_matrix.png``) and say where
    they are; without matplotlib, say how to get it instead (the demo's numbers do not need it)."""
    from ..plots import write_run_figures

    try:
        written = write_run_figures(run_dir, results, title=title)
    except ImportError as err:
        return f"Figures skipped: {err}"
    described = {
        "results": "accuracy, balanced accuracy and macro F1 of every model",
        "confusion_matrix": "the distilled + finetuned student's confusion matrix on the test digits",
    }
    return "Figures:\n" + "\n".join(f"  {path}  ({described[name]})" for name, path in written.items())


def run_demo(config: PipelineConfig) -> str:
    """Run every stage of the offline demo's configuration (:func:`demo_defaults` with the user's
    flags on top) and return the summary, with the run's figures drawn (or how to get them).

    Returns:
        The one-screen summary that ``hf-task-distill demo`` prints.
    """
    from ..pipeline import Pipeline

    pipeline = Pipeline(config)
    pipeline.run()
    figures = ""
    if pipeline.state.is_main_process:
        evaluation = pipeline.manifest("evaluate")["outputs"]
        title = f"Results on the {evaluation['split']} split ({evaluation['images']} images)"
        figures = figures_summary(pipeline.run_dir, evaluation["results"], title) + "\n\n"
        figures += _export_note(config) + "\n\n"
    return pipeline.summary() + "\n\n" + figures + EXPLANATION.format(per_class=config.task.per_class)
