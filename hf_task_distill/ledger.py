"""The compute ledger: what each stage cost, in images, measured FLOPs and wall time.

The paper compares methods by the compute they spend (teacher finetuning, transfer-set curation,
distillation, student finetuning). FLOPs per image are counted by ``torch.utils.flop_counter`` on
one real forward (and, for training, forward + backward) pass of the actual model at its input
size, never taken from a table. Counted FLOPs are multiply-adds x 2, as PyTorch reports them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["ComputeLedger", "LedgerEntry", "count_flops_per_image", "describe_device"]


def describe_device() -> str:
    """A short name for where the work ran: the GPU model, or the CPU with its core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def _example_batch(model: torch.nn.Module, image_size: tuple[int, int], batch: int) -> torch.Tensor:
    for tensor in (*model.parameters(), *model.buffers()):
        # a model loaded in half precision takes half-precision pixels (as the trainer casts them)
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
        return torch.zeros(batch, 3, *image_size, dtype=dtype, device=tensor.device)
    return torch.zeros(batch, 3, *image_size)


def _grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, *args, output_mask=None, **kwargs) -> int:
    """Backward FLOPs of a (possibly grouped) convolution: each requested gradient costs one forward.

    torch's built-in formula transposes the weight shape as if the convolution were dense, which
    overcounts a depthwise convolution's backward by about its group count (65x forward measured for
    a 64-group 3x3 conv, against 2x for a dense one). Mobile students are full of depthwise convs.
    """
    from torch.utils.flop_counter import conv_flop_count

    if output_mask is None:
        output_mask = args[7]
    transposed = args[4]
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops_per_image(
    model: torch.nn.Module, image_size: tuple[int, int] | int, *, training: bool = False, batch: int = 2
) -> float:
    """FLOPs of one image through ``model`` (forward; with ``training`` forward + backward).

    Runs one pass of ``batch`` images of ``image_size`` under ``FlopCounterMode`` and divides by
    the batch. Training counts the backward pass of a scalar loss; parameters that are frozen
    contribute no weight gradients, as in the real run. The model is left exactly as it was: its
    train/eval mode, its ``.grad`` fields, its buffers (a training-mode pass would move BatchNorm's
    running statistics towards the example batch) and the random number generators (dropout draws).
    """
    from torch.utils.flop_counter import FlopCounterMode

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    pixels = _example_batch(model, size, batch)
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if training else []
    devices = [t.device for t in model.parameters() if t.device.type == "cuda"][:1]
    model.train(training)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        corrected = {torch.ops.aten.convolution_backward: _grouped_conv_backward_flop}
        with (
            torch.random.fork_rng(devices=devices),
            FlopCounterMode(display=False, custom_mapping=corrected) as counter,
        ):
            if training:
                loss = _logits(model(pixel_values=pixels)).float().logsumexp(-1).sum()
                if trainable:  # backward, .grad untouched
                    torch.autograd.grad(loss, trainable, allow_unused=True)
            else:
                with torch.no_grad():
                    model(pixel_values=pixels)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return counter.get_total_flops() / batch


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None:
        logits = getattr(outputs, "last_hidden_state", None)
    if logits is None:
        raise TypeError(f"cannot find logits in {type(outputs).__name__}")
    return logits


@dataclass
class LedgerEntry:
    """One kind of work in one stage: ``images`` passes of ``flops_per_image`` each."""

    stage: str
    work: str  # e.g. "teacher forward", "student training"
    model: str
    images: int
    flops_per_image: float
    device: str = ""

    @property
    def flops(self) -> float:
        """Total FLOPs of this work: ``images * flops_per_image``."""
        return self.images * self.flops_per_image


@dataclass
class ComputeLedger:
    """Entries for every stage of a run, saved as ``compute_ledger.json`` next to its outputs."""

    entries: list[LedgerEntry] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)  # per stage: its kinds of work overlap in time

    def add(self, entry: LedgerEntry) -> LedgerEntry:
        """Append ``entry``; returns it."""
        self.entries.append(entry)
        return entry

    def extend(self, other: ComputeLedger) -> None:
        """Append ``other``'s entries and add its wall-clock seconds stage by stage."""
        self.entries.extend(other.entries)
        for stage, seconds in other.wall_s.items():
            self.wall_s[stage] = self.wall_s.get(stage, 0.0) + seconds

    def stage_totals(self) -> dict[str, dict[str, float]]:
        """Per stage: FLOPs (summed over its kinds of work) and wall time."""
        totals: dict[str, dict[str, float]] = {}
        for entry in self.entries:
            row = totals.setdefault(entry.stage, {"flops": 0.0, "wall_s": self.wall_s.get(entry.stage, 0.0)})
            row["flops"] += entry.flops
        for stage, seconds in self.wall_s.items():
            totals.setdefault(stage, {"flops": 0.0, "wall_s": seconds})
        return totals

    @property
    def total_flops(self) -> float:
        """FLOPs of every entry together."""
        return sum(entry.flops for entry in self.entries)

    def as_dict(self) -> dict[str, Any]:
        """The ledger as JSON-ready data: ``entries`` (each with its total ``flops``) and ``wall_s`` per stage."""
        return {
            "entries": [asdict(entry) | {"flops": entry.flops} for entry in self.entries],
            "wall_s": self.wall_s,
            "stage_totals": self.stage_totals(),
            "total_flops": self.total_flops,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`as_dict` to ``path`` as JSON (``compute_ledger.json``)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ComputeLedger:
        """The inverse of :meth:`as_dict` (derived fields are recomputed, not read)."""
        entries = [LedgerEntry(**{k: v for k, v in e.items() if k != "flops"}) for e in payload["entries"]]
        return cls(entries, dict(payload.get("wall_s", {})))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ComputeLedger:
        """Read a ledger written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def markdown(self) -> str:
        """A table for the run summary and the model card."""
        lines = [
            "| stage | work | model | images | GFLOPs / image | total TFLOPs | stage wall time | device |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        shown: set[str] = set()
        for e in self.entries:
            wall = "" if e.stage in shown else _duration(self.wall_s.get(e.stage, 0.0))
            shown.add(e.stage)
            lines.append(
                f"| {e.stage} | {e.work} | {e.model} | {e.images:,} | {e.flops_per_image / 1e9:.4g} | "
                f"{e.flops / 1e12:.4g} | {wall} | {e.device} |"
            )
        total_wall = _duration(sum(self.wall_s.values()))
        lines.append(f"| **total** | | | | | **{self.total_flops / 1e12:.4g}** | {total_wall} | |")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Stopwatch:
    """``with Stopwatch() as t: ...; t.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start, self.seconds = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
