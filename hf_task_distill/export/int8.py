"""int8 quantization of an exported student (the ``onnx-int8`` format's ``onnx/model_quantized.onnx``).

Two methods, both ONNX Runtime's (``onnxruntime.quantization``):

- **static** (used whenever calibration images are available): weights quantized per output channel
  to signed int8, activations to unsigned int8 with ranges fixed beforehand from the min/max each
  activation reaches on a calibration sample (``quantize_static``, ``CalibrationMethod.MinMax``), in
  the QDQ format (QuantizeLinear/DequantizeLinear pairs around float operators, which ONNX Runtime
  fuses into integer kernels, and which onnxruntime-web, hence Transformers.js, runs too). The graph
  is first pre-processed as ONNX Runtime recommends (``quant_pre_process``: shape inference and graph
  optimisation). Softmax and Split stay in float (:data:`FLOAT_OPERATORS`). The calibration sample is the transfer set in a pipeline run (the images the
  student was distilled on, as the paper's task-oriented transfer suggests; never the evaluation
  images the accuracy change is measured on), else the task's training split.
- **dynamic** (no calibration images): weights quantized once, activation ranges computed per batch
  at run time (``quantize_dynamic``; Conv becomes ``ConvInteger``, run by the CPU provider with
  unsigned 8-bit weights, hence ``QuantType.QUInt8``). An image's result then depends on the batch it
  is in.

Why static is the default (``benchmarks/export_onnx.py``, ImageNet-weighted EfficientNet-Lite0 on 256
real images, 64 other images for calibration): static int8 kept fp32's top-1 on 210 of 256 at 4.8 ms
per image, dynamic int8 on 110 of 256 at 35.2 ms, slower than fp32's 9.0 ms (one CPU thread); a
per-tensor static trial kept about half. See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["CALIBRATION_IMAGES", "quantize_int8"]

#: Operators static int8 leaves in float: Transformers.js 4.3.2 (onnxruntime-node 1.30) computed a
#: MobileViT-V2 whose QDQ graph quantized them differently from ONNX Runtime 1.32 in Python (up to
#: 2.6 logits apart, no top-1 kept against fp32, while Python's kept all); with them in float the two
#: runtimes give identical logits. Convolutional students have neither operator.
FLOAT_OPERATORS = ("Softmax", "Split")
#: Calibration images (at most; evenly spaced over the source) for static quantization.
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 8  # images per calibration forward pass


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice and progress on the root logger; keep only errors."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: str, target: str, calibration: np.ndarray | None = None) -> dict[str, Any]:
    """Quantize the fp32 graph ``source`` into ``target``: static with ``calibration``, else dynamic.

    Args:
        source (`str`): the fp32 ONNX model (input ``pixel_values``).
        target (`str`): where the int8 model is written.
        calibration (`np.ndarray`, *optional*): ``[N, 3, H, W]`` float32 pixel values (the student's
            evaluation view) the activation ranges are calibrated on; ``None``: dynamic quantization.

    Returns:
        `dict`: how it was quantized, for ``export.json``: ``method`` (``"static"`` or
        ``"dynamic"``), the ONNX Runtime settings, and for static the number of calibration images.

    Raises:
        ValueError: ``calibration`` is empty or not ``[N, 3, H, W]``.
    """
    if calibration is None:
        return _quantize_dynamic(source, target)
    if calibration.ndim != 4 or calibration.shape[1] != 3 or len(calibration) == 0:
        raise ValueError(
            f"int8 calibration pixels must be [N, 3, H, W] with N >= 1, got shape {list(calibration.shape)}"
        )
    return _quantize_static(source, target, calibration)


def _quantize_dynamic(source: str, target: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(source, target, weight_type=QuantType.QUInt8)
    return {
        "method": "dynamic",
        "weights": "uint8 per tensor",
        "activations": "uint8, ranges per batch at run time",
    }


def _quantize_static(source: str, target: str, calibration: np.ndarray) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                {"pixel_values": np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH], np.float32)}
                for i in range(0, len(calibration), CALIBRATION_BATCH)
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch, _quiet_root_logger():
        prepared = os.path.join(scratch, "preprocessed.onnx")
        # the dynamo exporter has already inferred every shape; symbolic inference only adds time
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        nodes = [n for n in onnx.load(prepared).graph.node if n.op_type in FLOAT_OPERATORS]
        kept_float = [n.name for n in nodes]
        kept_ops = {
            op: sum(n.op_type == op for n in nodes)
            for op in FLOAT_OPERATORS
            if any(n.op_type == op for n in nodes)
        }
        quantize_static(
            prepared,
            target,
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=kept_float,
        )
    return {
        "method": "static",
        "format": "QDQ",
        "weights": "int8 per output channel",
        "activations": "uint8, ranges calibrated (min/max)",
        "calibration_images": len(calibration),
        "operators_kept_in_float": kept_ops,
    }
