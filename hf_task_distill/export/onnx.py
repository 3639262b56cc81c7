"""The ``onnx`` and ``onnx-int8`` formats: the student as an ONNX graph in ``<output_dir>/onnx/``, with
its parity against PyTorch and its CPU latency measured at export.

Files (the Hugging Face / Transformers.js layout of a model repository's ``onnx/`` folder):

- ``onnx/model.onnx``: fp32, input ``pixel_values`` ``[batch, 3, H, W]`` (dynamic batch axis, ``H, W``
  the student's input size), output ``logits`` (``[batch, num_labels]``, or ``[batch, num_labels, h, w]``
  for a segmentation student); written by torch's own exporter (``torch.onnx.export(dynamo=True)``,
  the default and recommended path since torch 2.9: ``torch.export`` then ONNX Script translation;
  the TorchScript path is deprecated).
- ``onnx/model_quantized.onnx`` (``onnx-int8`` only): int8 by ONNX Runtime's quantizer
  (:mod:`hf_task_distill.export.int8`): static per-channel QDQ calibrated on the ``calibration``
  images (a run's transfer set; by default a task's training split), dynamic without any.
- ``onnx/export.json``: what was measured (see :func:`export_record` ... in :class:`OnnxFormat`):
  the source weights' sha256, parity (max |Δlogit| and top-1 / per-pixel argmax agreement of ONNX
  Runtime against PyTorch on a sample of images), CPU latency (median and p90 at batch 1,
  throughput at batch 32, ONNX Runtime and PyTorch eager in the same call, as ratios; both timed with
  denormal floats flushed to zero, see :func:`flush_denormals`), parameters, FLOPs per image, file
  sizes and the machine (with its load average around the timing). Relative names only.

- ``preprocessor_config.json`` beside ``onnx/`` (timm students only): timm's evaluation transform in
  the fields Transformers.js reads (:func:`~hf_task_distill.export.transformers_js.write_transformers_js_files`),
  so the exported folder runs in Transformers.js as it is; written after ``onnx/`` is in place, and
  derived from ``config.json`` (which Python keeps reading). A transform Transformers.js cannot
  reproduce is recorded in ``export.json`` (``transformers_js.problem``) instead.

The folder is written beside ``onnx/`` and moved into place only once parity holds
(:func:`~hf_task_distill.files.write_folder_atomically`), so ``onnx/`` is one whole export or absent,
never a mix; an ``onnx/`` exported from other weights is refused unless ``overwrite=True``.

The policy (tolerances, which statistics) is the small pure functions at the top; the mechanics
(export, sessions, timing) follow.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import time
import traceback
from typing import Any

import numpy as np

from .base import ExportFormat
from .int8 import CALIBRATION_IMAGES, quantize_int8
from .transformers_js import PREPROCESSOR_FILE, transformers_js_preprocessor, write_transformers_js_files

__all__ = [
    "EXPORT_RECORD",
    "ONNX_FOLDER",
    "PARITY_MAX_ABS_DIFF",
    "OnnxExportError",
    "OnnxFormat",
    "OnnxInt8Format",
    "OnnxParityError",
    "latency_summary",
    "parity_problem",
    "prediction_agreement",
]

ONNX_FOLDER = "onnx"  # next to the weights, as Transformers.js and the Hub expect
MODEL_FILE, QUANTIZED_FILE, EXPORT_RECORD = "model.onnx", "model_quantized.onnx", "export.json"
WEIGHTS_FILE = "model.safetensors"
INSTALL_HINT = "pip install 'hf-task-distill[onnx]' (onnx, onnxruntime, onnxscript)"

# --- policy: pure functions of measured numbers -------------------------------------------------

#: fp32 parity: the largest |ONNX Runtime logit - PyTorch logit| allowed (logit units).
PARITY_MAX_ABS_DIFF = 1e-4
#: fp32 parity: the share of images (pixels, for segmentation) whose argmax must agree.
PARITY_MIN_AGREEMENT = 1.0
SAMPLE_IMAGES = 256  # images in the parity sample (at most); >= 200 as the acceptance asks
RANDOM_SAMPLE_IMAGES = 64  # without evaluation images: seeded random pixels
LATENCY_RUNS, WARMUP_RUNS = 30, 3  # batch-1 timings (after warm-up)
THROUGHPUT_BATCH, THROUGHPUT_RUNS = 32, 5
DENORMAL_CONFIG_KEY = "session.set_denormal_as_zero"  # ONNX Runtime's session option
DENORMALS_NOTE = (
    "flushed to zero in both runtimes while timing (torch.set_flush_denormal, ORT set_denormal_as_zero)"
)


def parity_problem(
    max_abs_diff: float,
    agreement: float,
    *,
    tolerance: float = PARITY_MAX_ABS_DIFF,
    min_agreement: float = PARITY_MIN_AGREEMENT,
) -> str | None:
    """What is wrong with an export's parity, or ``None`` when it holds.

    Args:
        max_abs_diff (`float`): the largest absolute logit difference measured (logit units).
        agreement (`float`): share in [0, 1] of images (or pixels) whose argmax agrees.
        tolerance (`float`): the largest difference allowed.
        min_agreement (`float`): the smallest agreement allowed.

    Returns:
        `str` or `None`: a sentence with the measured numbers and the limits they broke.
    """
    problems = []
    if not max_abs_diff <= tolerance:  # NaN fails too
        problems.append(f"max |Δlogit| {max_abs_diff:.3g} > {tolerance:.3g}")
    if not agreement >= min_agreement:
        problems.append(f"argmax agreement {100 * agreement:.2f}% < {100 * min_agreement:.2f}%")
    return "; ".join(problems) or None


def prediction_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of predictions whose argmax over the class axis (axis 1) agrees: per image for
    ``[N, C]`` logits, per pixel for ``[N, C, h, w]``; in [0, 1]."""
    return float(np.mean(reference.argmax(1) == other.argmax(1)))


def latency_summary(seconds: list[float], batch: int) -> dict[str, float]:
    """Median and 90th-percentile latency in milliseconds and throughput in images per second (at
    the median) of repeated timings of one ``batch``."""
    times = np.asarray(seconds, dtype=np.float64)
    median = float(np.median(times))
    return {
        "batch": batch,
        "median_ms": round(1000 * median, 4),
        "p90_ms": round(1000 * float(np.percentile(times, 90)), 4),
        "images_per_s": round(batch / median, 2) if median > 0 else float("inf"),
    }


def speedup(reference: dict[str, float], other: dict[str, float]) -> float:
    """How many times faster ``other`` is than ``reference`` (ratio of median latencies; > 1: faster)."""
    return round(reference["median_ms"] / other["median_ms"], 3) if other["median_ms"] > 0 else float("inf")


# --- errors ----------------------------------------------------------------------------------------


class OnnxExportError(ValueError):
    """The exporter could not turn the student into an ONNX graph (the message names the module and
    operator it failed on)."""


class OnnxParityError(OnnxExportError):
    """The exported graph does not give PyTorch's answers within tolerance (the message gives the
    measured numbers); nothing was written."""


def _require_onnx():
    """``(onnx, onnxruntime)``, or ``ImportError`` naming the extra to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter translates with it)
    except ImportError as err:
        raise ImportError(f"the onnx export formats need {err.name}: {INSTALL_HINT}") from err
    return onnx, onnxruntime


# --- loading the student ------------------------------------------------------------------------


def load_student(folder: str):
    """The student saved in ``folder`` (eval mode) and its task type's name, loaded as evaluation
    loads it (:meth:`TaskType.load_model <hf_task_distill.tasks.TaskType.load_model>`); the task type
    is the one whose auto class maps the config's architecture (classification otherwise)."""
    from transformers import AutoConfig

    from ..tasks import get_task_type
    from ..tasks.base import _REGISTRY, _auto_class_names

    architectures = set(getattr(AutoConfig.from_pretrained(folder), "architectures", None) or ())
    task_type = get_task_type("image-classification")
    for candidate in _REGISTRY.entries(newest_first=True):
        if architectures & _auto_class_names(candidate.model_class()):
            task_type = candidate
            break
    return task_type.load_model(folder).eval(), task_type.name


class _Logits:
    """Builds the ``pixel_values -> logits`` module the graph is traced from (a transformers model
    returns a ``ModelOutput``; the graph's one output is its logits)."""

    @staticmethod
    def wrap(model):
        import torch

        class LogitsOnly(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.model = inner

            def forward(self, pixel_values):
                return self.model(pixel_values=pixel_values).logits

        return LogitsOnly(model).eval()


# --- mechanics: export, quantize ------------------------------------------------------------------


def export_graph(model, path: str, size: tuple[int, int]) -> None:
    """Export ``model`` (``pixel_values -> logits``) to ``path`` with a dynamic batch axis.

    Raises:
        OnnxExportError: the exporter failed; the message names the module, the source line and
            the operator when the failure says which.
    """
    import torch

    wrapped = _Logits.wrap(model)
    example = torch.zeros(2, 3, *size)  # batch 2: a batch of 1 would be specialised as a constant
    batch = torch.export.Dim("batch", min=1)
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise), torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_shapes={"pixel_values": {0: batch}},
                external_data=False,
                verbose=False,
            )
        strip_source_paths(program.model)
        program.save(path, external_data=False)
    except Exception as err:  # noqa: BLE001 - every exporter failure becomes one readable error
        raise OnnxExportError(describe_trace_failure(err, wrapped)) from err


#: Node metadata torch's exporter fills with the Python stack of each operator: absolute source paths
#: (a user's home folder, their virtual environment) that would be published with the model.
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_source_paths(model) -> None:
    """Remove :data:`STACK_TRACE_KEY` from every node of ``model`` (an ``onnx_ir.Model``: the graph,
    its subgraphs and its functions), so that no path from the exporting machine is written."""
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in graph.all_nodes():
            node.metadata_props.pop(STACK_TRACE_KEY, None)


def describe_trace_failure(err: BaseException, wrapped) -> str:
    """A one-line account of an exporter failure: the innermost module of ``wrapped`` it happened in
    (its name in the model and class), the source line, the operator and the exporter's summary."""
    names = {id(m): name for name, m in wrapped.model.named_modules()}
    module, line, operator = None, None, None
    chain, seen = [err], set()
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if id(nxt) in seen:
            break
        seen.add(id(nxt))
        chain.append(nxt)
    for exc in chain:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            owner = frame.f_locals.get("self")
            if id(owner) in names:  # innermost module frame wins (frames are outermost first)
                module = f"'{names[id(owner)] or '(the model)'}' ({type(owner).__name__})"
                source = traceback.extract_tb(exc.__traceback__)
                line = _frame_line(frame, lineno, source)
            node = frame.f_locals.get("node")
            if getattr(node, "op", None) == "call_function":
                operator = str(node.target)
                stack = node.meta.get("nn_module_stack") or {}
                if stack and module is None:
                    qualified, cls = list(stack.values())[-1]
                    qualified = qualified.removeprefix("model.") if qualified != "model" else ""
                    cls = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                    module = f"'{qualified or '(the model)'}' ({cls})"
    summary = _exception_summary(chain)
    if operator is None:
        found = re.search(r"OpOverload\(op='([^']+)'", str(err))
        operator = found.group(1) if found else None
    where = ", ".join(
        part
        for part in (
            f"in module {module}" + (f" at {line}" if line else "") if module else "",
            f"operator {operator}" if operator else "",
        )
        if part
    )
    return f"torch.onnx.export could not export the student ({where or 'no module named'}): {summary}"


def _frame_line(frame, lineno: int, source) -> str:
    name = os.path.basename(frame.f_code.co_filename)
    text = next((s.line for s in source if s.lineno == lineno and s.name == frame.f_code.co_name), "")
    code = text.split("#", 1)[0].strip() if text else ""
    return f"{name}:{lineno}" + (f" `{code}`" if code else "")


def _exception_summary(chain: list[BaseException]) -> str:
    """The innermost exception's type and first line (the exporter's wrappers add pages of advice)."""
    inner = chain[-1]
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first}".strip(": ")


# --- mechanics: the parity sample, running both models ------------------------------------------------


def sample_pixels(model, spec, images: Any, task_type: str, limit: int = SAMPLE_IMAGES):
    """The parity sample: ``(pixels [N, 3, H, W] float32, labels [N] or None, description)``.

    ``images`` is a list of PIL images, a ``datasets.Dataset`` or a ``TargetTask`` (its evaluation
    split: ``test``, else ``validation``), rendered with the student's evaluation view; rows are taken
    evenly spaced, at most ``limit``. Labels (classification only) come from a dataset's label column.
    ``None`` gives seeded random pixels (uniform 0..255, seed 0) through the same view.
    """
    import torch
    from PIL import Image

    from ..data.views import eval_view, render_view

    if images is None:
        rng = np.random.default_rng(0)
        arrays = rng.integers(0, 256, size=(RANDOM_SAMPLE_IMAGES, *spec.size, 3), dtype=np.uint8)
        images = [Image.fromarray(a) for a in arrays]
        described = {"source": "random pixels (uniform 0..255, seed 0)", "images": len(images)}
    elif isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("the export's parity sample is empty: give images (or None for random pixels)")
        images = list(images)[:: max(1, len(images) // limit)][:limit]
        described = {"source": "images given", "images": len(images)}
    else:
        return _dataset_pixels(model, spec, images, task_type, limit)
    tensors = []
    for image in images:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
        tensors.append(render_view(pixels, eval_view(image.size, spec), spec))
    return torch.stack(tensors).float(), None, described


def calibration_sample(model, spec, source: Any, task_type: str, limit: int = CALIBRATION_IMAGES):
    """The static int8 calibration sample: ``(pixels [N, 3, H, W] float32, description)``, or
    ``(None, None)`` without a source (the int8 model is then quantized dynamically).

    ``source`` is a list of PIL images, a ``datasets.Dataset`` (a transfer set: its ``image`` column)
    or a ``TargetTask`` (its ``train`` split, never the evaluation split the accuracy change is
    measured on), rendered with the student's evaluation view; at most ``limit`` rows, evenly spaced.

    Raises:
        ValueError: ``source`` holds no images.
    """
    if source is None:
        return None, None
    if not hasattr(source, "splits") and len(source) == 0:
        raise ValueError(
            "the int8 calibration sample is empty: give images (or leave it out for dynamic int8)"
        )
    if hasattr(source, "splits"):  # a TargetTask: the training split's images (labels unused)
        pixels, _, described = _dataset_pixels(model, spec, source, task_type, limit, split="train")
    else:
        pixels, _, described = sample_pixels(model, spec, source, task_type, limit)
    return pixels.numpy(), described


def _dataset_pixels(model, spec, source: Any, task_type: str, limit: int, split: str | None = None):
    import torch

    from ..data.views import single_view_dataset, stack_single_views
    from ..models.labels import label_names_of
    from ..tasks import get_task_type

    task, dataset = None, source
    if hasattr(source, "splits"):  # a TargetTask
        task = source
        split = split or (
            "test" if "test" in source.splits else "validation" if "validation" in source.splits else "train"
        )
        dataset = source[split]
    if len(dataset) == 0:
        raise ValueError(
            f"the export's image sample is empty: the {f'{split} split' if split else 'dataset'} has no rows"
        )
    rows = list(range(0, len(dataset), max(1, len(dataset) // limit)))[:limit]
    segmentation = task_type != "image-classification"
    prepared = single_view_dataset(
        dataset.select(rows),
        spec,
        train=False,
        image_column=getattr(task, "image_column", None),
        label_column=getattr(task, "label_column", None),
        num_labels=model.config.num_labels,
        label_names=None if segmentation else label_names_of(model.config),
        where=f"the export's parity sample{f' ({split} split)' if split else ''}",
        task_type=get_task_type(task_type) if segmentation else None,
    )
    views = [prepared[i] for i in range(len(prepared))]
    if segmentation:  # masks are not scored at export: parity is per-pixel agreement with PyTorch
        pixels, labels = torch.stack([view["pixel_values"] for view in views]), None
    else:
        batch = stack_single_views(views)
        pixels, labels = batch["pixel_values"], batch["labels"].numpy()
        labels = labels if (labels != -100).any() else None
    described = {"source": "dataset" + (f" ({split} split)" if split else ""), "images": len(rows)}
    return pixels.float(), labels, described


def torch_logits(wrapped, pixels, batch_size: int = THROUGHPUT_BATCH) -> np.ndarray:
    """PyTorch eager logits of ``pixels`` in batches, as float32 numpy."""
    import torch

    with torch.inference_mode():
        return np.concatenate(
            [wrapped(pixels[i : i + batch_size]).float().numpy() for i in range(0, len(pixels), batch_size)]
        )


def session_logits(session, pixels, batch_size: int = THROUGHPUT_BATCH) -> np.ndarray:
    """ONNX Runtime logits of ``pixels`` (a tensor) in batches."""
    array = pixels.numpy()
    return np.concatenate(
        [
            session.run(["logits"], {"pixel_values": array[i : i + batch_size]})[0]
            for i in range(0, len(array), batch_size)
        ]
    )


def open_session(path: str, threads: int, *, denormals_as_zero: bool = False):
    """A CPU ONNX Runtime session of ``path`` using ``threads`` intra-op threads (PyTorch's count);
    ``denormals_as_zero`` sets ONNX Runtime's ``session.set_denormal_as_zero`` (flush-to-zero and
    denormals-are-zero on its thread-pool threads; the calling thread follows
    :func:`flush_denormals`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if denormals_as_zero:
        options.add_session_config_entry(DENORMAL_CONFIG_KEY, "1")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def denormals_flushed() -> bool:
    """Whether this thread's floating-point unit flushes denormal floats to zero now (a product that
    should be 1e-39, below float32's smallest normal 1.18e-38, comes out 0)."""
    import torch

    return (torch.tensor(2e-39) * 0.5).item() == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero on this thread (``torch.set_flush_denormal``, the x86 FTZ/DAZ
    flags, which ONNX Runtime's kernels on the calling thread follow too) inside the block, and put
    the previous state back after.

    Why: a randomly initialised network can shrink its activations to ~1e-35 by its last stages
    (transformers' MobileViT-V2 with its own init does; its logits are then all 0), and arithmetic on
    denormals is slow on x86: PyTorch eager measured 1.45x slower on such a model. A trained student
    has no such activations, so timing without them is timing the deployed model.
    """
    import torch

    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def time_runs(run, runs: int, warmup: int = WARMUP_RUNS) -> list[float]:
    """Wall seconds of ``runs`` calls of ``run()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


# --- mechanics: latency, machine, fingerprint ----------------------------------------------------


def measure_latency(
    wrapped, models: dict[str, str], size: tuple[int, int], threads: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Batch-1 latency and batch-32 throughput of PyTorch eager and each ONNX model (``{name: path}``,
    run by ONNX Runtime with ``threads`` intra-op threads), on the same random pixels in one call,
    with each model's speed-up over PyTorch (median ratio).

    Both runtimes are timed with denormal floats flushed to zero (:func:`flush_denormals`).

    Returns:
        `tuple[dict, dict]`: the table (``batch_1``, ``batch_32``: one row per runtime) and the
        conditions it was timed under: the denormal handling and the 1-minute load average before and
        after (above the CPU count, other work shared the cores and the ratios mean little).
    """
    before = _load_average()
    with flush_denormals():
        sessions = {
            name: open_session(path, threads, denormals_as_zero=True) for name, path in models.items()
        }
        table = _time_all(wrapped, sessions, size)
    return table, {
        "denormals": DENORMALS_NOTE,
        "load_average_1m": {"before": before, "after": _load_average()},
    }


def _time_all(wrapped, sessions: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    import torch

    table: dict[str, Any] = {}
    for batch, runs in ((1, LATENCY_RUNS), (THROUGHPUT_BATCH, THROUGHPUT_RUNS)):
        pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        array = pixels.numpy()
        with torch.inference_mode():
            rows = {"pytorch": latency_summary(time_runs(lambda x=pixels: wrapped(x), runs), batch)}
        for name, session in sessions.items():
            timed = time_runs(lambda s=session, a=array: s.run(["logits"], {"pixel_values": a}), runs)
            rows[name] = latency_summary(timed, batch)
            rows[name]["speedup_vs_pytorch"] = speedup(rows["pytorch"], rows[name])
        table[f"batch_{batch}"] = rows
    return table


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes; above the CPU count means timings share the
    cores), or ``None`` where the system has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def describe_machine() -> dict[str, Any]:
    """Where the timings ran: OS, architecture, CPU model and count, threads and library versions
    (no host or user names)."""
    import onnxruntime
    import torch

    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def weights_fingerprint(model_folder: str) -> str:
    """The sha256 of the student's ``model.safetensors``: which weights an export was made from."""
    from ..files import _sha256

    return _sha256(os.path.join(model_folder, WEIGHTS_FILE))


def check_existing_export(target: str, fingerprint: str, overwrite: bool) -> None:
    """Refuse to replace ``target`` (an ``onnx/`` folder) holding another model's export.

    Raises:
        ValueError: ``target`` holds an export of other weights, or files without an ``export.json``
            (not written by this exporter), and ``overwrite`` is false; or ``target`` is a file.
    """
    from ..files import read_json

    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(
            f"'{target}' is a file, not an export folder: remove it or choose another output_dir"
        )
    if overwrite or not os.path.exists(target):
        return
    recorded = read_json(os.path.join(target, EXPORT_RECORD)).get("source", {}).get("sha256")
    if recorded == fingerprint:
        return
    what = (
        f"an export of other weights (sha256 {recorded[:12]}..., this student's is {fingerprint[:12]}...)"
        if recorded
        else f"files without an {EXPORT_RECORD} (not an export of this student)"
    )
    raise ValueError(
        f"'{target}' already holds {what}: refusing to mix or replace it; pass overwrite=True "
        "(hf-task-distill export --overwrite) to replace it, or choose another output_dir"
    )


def check_output_weights(output_dir: str, model_folder: str, fingerprint: str, overwrite: bool) -> None:
    """Refuse to put an ``onnx/`` export beside another student's weights: an ``output_dir`` (not the
    student's own folder) whose ``model.safetensors`` differs from the exported one would pair
    that student's ``config.json`` with this one's graph.

    Raises:
        ValueError: ``output_dir`` holds other weights and ``overwrite`` is false.
    """
    weights = os.path.join(output_dir, WEIGHTS_FILE)
    if overwrite or not os.path.isfile(weights) or os.path.samefile(output_dir, model_folder):
        return
    recorded = weights_fingerprint(output_dir)
    if recorded != fingerprint:
        raise ValueError(
            f"'{output_dir}' holds another student's weights ({WEIGHTS_FILE} sha256 {recorded[:12]}..., "
            f"this student's is {fingerprint[:12]}...): refusing to put this export beside them; "
            "export into an empty folder, or pass overwrite=True (hf-task-distill export --overwrite) "
            "with the safetensors format to replace that student"
        )


def transformers_js_note(model_folder: str) -> dict[str, Any]:
    """What the export adds for Transformers.js (docs/deployment.md), recorded in ``export.json``:
    ``{"written": [file names beside onnx/]}``, plus ``"problem"`` when a timm student's transform
    has no Transformers.js equivalent (the ONNX export itself still goes ahead)."""
    try:
        needed = transformers_js_preprocessor(model_folder) is not None
    except ValueError as err:
        return {"written": [], "problem": str(err)}
    return {"written": [PREPROCESSOR_FILE] if needed else []}


# --- the formats ----------------------------------------------------------------------------------------


class OnnxFormat(ExportFormat):
    """``onnx/model.onnx`` (fp32) and ``onnx/export.json``, with parity and latency measured at export."""

    name = "onnx"
    quantize = False

    def check(self, model_folder: str, output_dir: str | None = None, overwrite: bool = False) -> None:
        """The onnx packages are installed, and ``output_dir/onnx`` holds no other model's export."""
        _require_onnx()
        fingerprint = weights_fingerprint(model_folder)
        check_existing_export(os.path.join(output_dir or model_folder, ONNX_FOLDER), fingerprint, overwrite)
        check_output_weights(output_dir or model_folder, model_folder, fingerprint, overwrite)

    def export(
        self,
        model_folder: str,
        output_dir: str,
        images: Any = None,
        overwrite: bool = False,
        calibration: Any = None,
    ) -> list[str]:
        """Export, measure, and move ``onnx/`` into place when parity holds.

        Args:
            model_folder (`str`): the student's folder.
            output_dir (`str`): where ``onnx/`` goes.
            images (*optional*): the parity sample's images (see :func:`sample_pixels`); default
                seeded random pixels.
            overwrite (`bool`): replace an export of other weights.
            calibration (*optional*): ``onnx-int8``'s calibration images (see
                :func:`calibration_sample`); default the training split when ``images`` is a
                ``TargetTask``; with neither, int8 is quantized dynamically.

        Returns:
            `list[str]`: the paths of ``onnx/``'s files, then, for a timm student, of the
            ``preprocessor_config.json`` Transformers.js reads (written into ``output_dir``).

        Raises:
            OnnxExportError: the exporter cannot trace the student (the message names the module).
            OnnxParityError: fp32 parity fails (the message gives the numbers); nothing is written.
        """
        from ..files import write_folder_atomically

        _require_onnx()
        fingerprint = weights_fingerprint(model_folder)
        target = os.path.join(output_dir, ONNX_FOLDER)
        check_existing_export(target, fingerprint, overwrite)
        check_output_weights(output_dir, model_folder, fingerprint, overwrite)
        model, task_type = load_student(model_folder)
        browser = transformers_js_note(model_folder)
        if calibration is None and hasattr(images, "splits"):
            calibration = images  # a TargetTask: calibration_sample takes its training split
        samples = {"images": images, "calibration": calibration}
        write_folder_atomically(
            target, lambda tmp: self._write(tmp, model, task_type, samples, fingerprint, browser)
        )
        names = [MODEL_FILE] + ([QUANTIZED_FILE] if self.quantize else []) + [EXPORT_RECORD]
        written = [os.path.join(target, name) for name in names]
        if browser.get("written"):  # only once onnx/ is in place: a failed export writes nothing
            written += write_transformers_js_files(model_folder, output_dir)
        return written

    def _write(
        self, folder: str, model, task_type: str, samples: dict, fingerprint: str, browser: dict[str, Any]
    ) -> None:
        from ..data import ViewSpec
        from ..files import write_json_atomically

        os.makedirs(folder)
        spec = ViewSpec.from_model(model)
        export_graph(model, os.path.join(folder, MODEL_FILE), spec.size)
        quantization = None
        if self.quantize:
            pixels, described = calibration_sample(model, spec, samples["calibration"], task_type)
            quantization = quantize_int8(
                os.path.join(folder, MODEL_FILE), os.path.join(folder, QUANTIZED_FILE), pixels
            )
            if described:
                quantization["calibration_sample"] = described
        record = self._measure(folder, model, task_type, spec, samples["images"])
        if quantization:
            record["quantization"] = quantization
        record["source"] = {"weights": WEIGHTS_FILE, "sha256": fingerprint}
        record["transformers_js"] = browser
        write_json_atomically(os.path.join(folder, EXPORT_RECORD), record)

    def _measure(self, folder: str, model, task_type: str, spec, images: Any) -> dict[str, Any]:
        import torch

        from ..ledger import count_flops_per_image

        wrapped, threads = _Logits.wrap(model), torch.get_num_threads()
        pixels, labels, sample = sample_pixels(model, spec, images, task_type)
        sessions = {"onnxruntime": open_session(os.path.join(folder, MODEL_FILE), threads)}
        if self.quantize:
            sessions["onnxruntime_int8"] = open_session(os.path.join(folder, QUANTIZED_FILE), threads)
        reference = torch_logits(wrapped, pixels)
        parity = self._parity(reference, sessions, pixels, labels, sample)
        files = [MODEL_FILE] + ([QUANTIZED_FILE] if self.quantize else [])
        timed = dict(zip(sessions, files, strict=True))  # onnxruntime -> model.onnx, *_int8 -> quantized
        latency, conditions = measure_latency(
            wrapped, {n: os.path.join(folder, f) for n, f in timed.items()}, spec.size, threads
        )
        return {
            "format": self.name,
            "task_type": task_type,
            "model_class": type(model).__name__,
            "input": {"name": "pixel_values", "shape": ["batch", 3, *spec.size], "view": _view(spec)},
            "output": {"name": "logits", "shape": ["batch", *reference.shape[1:]]},
            "parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_image": count_flops_per_image(model, spec.size),
            "files": {name: os.path.getsize(os.path.join(folder, name)) for name in files},
            "exporter": _exporter_versions(),
            "parity": parity,
            "latency": latency,
            "machine": {**describe_machine(), "timing": conditions},
        }

    def _parity(self, reference: np.ndarray, sessions: dict[str, Any], pixels, labels, sample) -> dict:
        """fp32 parity (raising :class:`OnnxParityError` when it fails) and the int8 model's agreement
        with fp32 (and accuracy change, with labels)."""
        fp32 = session_logits(sessions["onnxruntime"], pixels)
        parity = {"sample": sample, "fp32": _compare(reference, fp32, labels)}
        problem = parity_problem(parity["fp32"]["max_abs_diff"], parity["fp32"]["argmax_agreement"])
        if problem:
            raise OnnxParityError(
                f"ONNX parity failed on {sample['images']} images ({sample['source']}): {problem}; "
                f"no {ONNX_FOLDER}/ folder was written"
            )
        parity["fp32"].update(tolerance=PARITY_MAX_ABS_DIFF, min_agreement=PARITY_MIN_AGREEMENT, passed=True)
        if self.quantize:
            parity["int8"] = _compare(fp32, session_logits(sessions["onnxruntime_int8"], pixels), labels)
            if labels is not None:
                parity["int8"]["accuracy_change_points"] = round(
                    100 * (parity["int8"]["accuracy"] - parity["fp32"]["accuracy"]), 3
                )
        return parity


def _compare(reference: np.ndarray, other: np.ndarray, labels) -> dict[str, Any]:
    """Max |Δlogit|, argmax agreement and (with labels) ``other``'s accuracy on the labelled rows."""
    out = {
        "max_abs_diff": float(np.max(np.abs(reference - other))),
        "argmax_agreement": prediction_agreement(reference, other),
    }
    if labels is not None:
        labelled = labels != -100
        out["accuracy"] = float(np.mean(other.argmax(1)[labelled] == labels[labelled]))
    return out


def _view(spec) -> dict[str, Any]:
    return {
        "size": list(spec.size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "eval_mode": spec.eval_mode,
    }


def _exporter_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


class OnnxInt8Format(OnnxFormat):
    """``onnx``'s files plus ``onnx/model_quantized.onnx`` (int8: static, calibrated on the
    ``calibration`` images, or dynamic without any; :mod:`hf_task_distill.export.int8`), its agreement
    with fp32 and, with labelled images, its accuracy change in points."""

    name = "onnx-int8"
    quantize = True
    includes = ("onnx",)
