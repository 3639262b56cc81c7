"""The ``export`` stage, after evaluation and off unless ``--export_formats`` names a format: the
finetuned student as an ONNX graph, with its parity against PyTorch on the evaluation split and its
CPU latency.

``onnx-int8`` is calibrated on the transfer set (static int8, :mod:`hf_task_distill.export.int8`).

Output ``model/``: the student as Transformers.js and ONNX Runtime load it, without the PyTorch
weights (those stay in ``finetune/model``): ``config.json``, ``preprocessor_config.json`` (a timm
student's is the one Transformers.js needs,
:func:`~hf_task_distill.export.transformers_js.write_transformers_js_files`; a segmentation
student's is its ``SegformerImageProcessor``) and ``onnx/`` (``model.onnx``, ``model_quantized.onnx``
for ``onnx-int8``, ``export.json``; see :mod:`hf_task_distill.export.onnx`). The publish stage
copies ``onnx/`` (and that processor file) into ``student/``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ._settings import TASK
from .base import Stage, StageResult, register_stage

#: The student's files the deployable folder carries besides ``onnx/`` (no weights).
CONFIG_FILES = ("config.json", "preprocessor_config.json")


@register_stage
class ExportStage(Stage):
    """The finetuned student exported to ``--export_formats``; output ``model/`` (config, processor, ``onnx/``)."""

    name = "export"
    settings_read = (*TASK, "export_formats")  # the parity sample is the task's evaluation split
    recomputed_freely = True  # seconds of work on the finetuned student

    def enabled(self, config):
        return bool(config.run.export_formats)

    def upstream(self, config):
        return ("transfer", "finetune")  # the transfer set calibrates onnx-int8

    def task_splits(self, config, eval_split):
        return (eval_split,)

    def report(self, outputs):
        """One line: the formats, fp32 parity, int8 accuracy change and batch-1 latency against PyTorch."""
        return ["", outputs["summary"]] if outputs.get("summary") else []

    def run(self, context, directory):
        """Export into ``directory/model``; the ledger counts the forward passes parity and latency took."""
        if not context.state.is_main_process:
            return StageResult({})  # only the main process writes the manifest
        from ..export import export_student
        from ..export.transformers_js import write_transformers_js_files
        from ..files import read_json
        from ..hub.publish import _add_image_processor

        finetuned = context.outputs("finetune")["model"]
        model_dir = os.path.join(directory, "model")
        os.makedirs(model_dir, exist_ok=True)
        formats = list(context.config.run.export_formats)
        # the evaluation split is the parity sample (its labels give int8's accuracy change), the
        # transfer set calibrates static int8; an export of other weights left by an earlier
        # attempt is replaced: this folder is the stage's
        written = export_student(
            finetuned,
            formats,
            model_dir,
            images=context.task,
            calibration=_calibration_images(context, formats),
            overwrite=True,
        )
        for name in CONFIG_FILES:
            if os.path.isfile(os.path.join(finetuned, name)):
                shutil.copyfile(os.path.join(finetuned, name), os.path.join(model_dir, name))
        write_transformers_js_files(model_dir)
        _add_image_processor(model_dir, context.task.task_type)  # a segmentation student's, as published
        outputs: dict[str, Any] = {"model": model_dir, "formats": formats}
        record_path = os.path.join(model_dir, "onnx", "export.json")
        entries = []
        if os.path.isfile(record_path):
            record = read_json(record_path)
            outputs["summary"] = export_summary(record)
            entries = ledger_entries(record, self.name, _model_name(context))
        outputs["files"] = sorted(
            os.path.relpath(p, model_dir).replace(os.sep, "/") for paths in written.values() for p in paths
        )
        return StageResult(outputs, entries)


def _calibration_images(context, formats: list[str]):
    """What static int8 calibrates on: the transfer set the student was distilled on (for
    ``--transfer task``, the task's whole training split without its labels); ``None`` without
    ``onnx-int8``."""
    return context.transfer_dataset() if "onnx-int8" in formats else None


def _model_name(context) -> str:
    from ..hub.names import public_name

    return public_name(context.config.student.student) + ", finetuned"


def export_summary(record: dict[str, Any]) -> str:
    """The export's one line in a run's summary: formats, fp32 parity, int8's agreement and accuracy
    change, and the batch-1 median latency of ONNX Runtime against PyTorch eager.

    Args:
        record (`dict`): an ``onnx/export.json`` record (:mod:`hf_task_distill.export.onnx`).

    Returns:
        `str`: e.g. ``Export (onnx-int8): parity on 256 images max |Δlogit| 3e-06, top-1 100.0%; int8 (static)
        top-1 agreement 99.2%, accuracy -0.39 points; batch 1: ONNX Runtime 0.41 ms vs PyTorch 1.2 ms (2.9x)``;
        a segmentation student's agreements are per pixel (``per-pixel agreement 100.0%``).
    """
    parity, batch_1 = record["parity"], record["latency"]["batch_1"]
    fp32 = parity["fp32"]
    per_pixel = record.get("task_type") == "image-segmentation"  # argmax agreement per pixel, not image
    parts = [
        f"Export ({record['format']}): parity on {parity['sample']['images']} images max |Δlogit| "
        f"{fp32['max_abs_diff']:.2g}, "
        + ("per-pixel agreement" if per_pixel else "top-1")
        + f" {100 * fp32['argmax_agreement']:.1f}%"
    ]
    if "int8" in parity:
        int8 = parity["int8"]
        change = int8.get("accuracy_change_points")
        method = record.get("quantization", {}).get("method", "dynamic")
        parts.append(
            f"int8 ({method}) {'per-pixel' if per_pixel else 'top-1'} agreement {100 * int8['argmax_agreement']:.1f}%"
            + (f", accuracy {change:+.2f} points" if change is not None else "")
        )
    ort, torch = batch_1["onnxruntime"], batch_1["pytorch"]
    parts.append(
        f"batch 1: ONNX Runtime {ort['median_ms']:.3g} ms vs PyTorch {torch['median_ms']:.3g} ms "
        f"({ort['speedup_vs_pytorch']:.2f}x)"
    )
    return "; ".join(parts)


def forward_images(record: dict[str, Any]) -> int:
    """Images one model ran through while the export was measured: the parity sample, then the
    latency timings (warm-up and timed runs at batch 1 and at the throughput batch)."""
    from ..export.onnx import WARMUP_RUNS

    timed = sum(row["batch"] * (WARMUP_RUNS + runs) for row, runs in _timed_batches(record["latency"]))
    return int(record["parity"]["sample"]["images"]) + timed


def _timed_batches(latency: dict[str, Any]):
    from ..export.onnx import LATENCY_RUNS, THROUGHPUT_RUNS

    for key, rows in latency.items():
        yield rows["pytorch"], LATENCY_RUNS if key == "batch_1" else THROUGHPUT_RUNS


def ledger_entries(record: dict[str, Any], stage: str, model: str) -> list:
    """The export's compute: one entry per runtime measured (PyTorch eager, ONNX Runtime fp32 and
    int8), each the parity and latency forward passes (:func:`forward_images`) at the student's FLOPs
    per image, counted on the PyTorch model (the ONNX graph does the same multiply-adds; int8 in
    integers). All of them ran on the CPU, whatever accelerator the run has."""
    from ..ledger import LedgerEntry

    images, flops = forward_images(record), float(record["flops_per_image"])
    machine = record["machine"]
    device = f"CPU ({machine['cpu_count']} cores, {machine['machine']})"
    measured = record["latency"]["batch_1"]
    return [
        LedgerEntry(
            stage, f"student forward, {label} (export parity + latency)", model, images, flops, device
        )
        for key, label in RUNTIMES.items()
        if key in measured
    ]


#: The runtimes an export times (``export.json``'s latency rows) and how the ledger names them.
RUNTIMES = {
    "pytorch": "PyTorch eager",
    "onnxruntime": "ONNX Runtime fp32",
    "onnxruntime_int8": "ONNX Runtime int8",
}
