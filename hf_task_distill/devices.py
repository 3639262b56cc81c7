"""Which devices and processes a run has, decided in one place."""

from __future__ import annotations

import os

import torch

__all__ = ["has_accelerator", "launched_processes", "process_state"]


def has_accelerator() -> bool:
    """Whether torch sees any accelerator (CUDA, MPS, XPU, NPU, ...)."""
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return True
    return any(
        hasattr(getattr(torch, name, None), "is_available") and getattr(torch, name).is_available()
        for name in ("xpu", "npu", "mlu", "musa")
    )


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``), 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_ranks_need_use_cpu(use_cpu: bool) -> bool:
    """Whether ``TrainingArguments.use_cpu`` must be forced on: several launched processes, no accelerator.

    Unless told it runs on CPU, accelerate initialises the process group but trains each rank
    alone, without gradient synchronisation. Every ``TrainingArguments`` the project builds or
    subclasses goes through this.
    """
    return launched_processes() > 1 and not use_cpu and not has_accelerator()


def process_state():
    """accelerate's ``PartialState``, told to use the CPU when several processes run without an accelerator.

    Without that, accelerate initialises the process group but reports a single process on each
    rank, so work meant to be split is done twice and gradients are never synchronised.
    """
    from accelerate import PartialState

    return PartialState(cpu=launched_processes() > 1 and not has_accelerator())


def end_processes() -> None:
    """Let every rank arrive, then tear the process group down before the interpreter does.

    A gloo process group left to interpreter shutdown can abort a rank (SIGABRT, "terminate called
    without an active exception") after all the work is done, failing the whole launch. A no-op
    when only one process runs.
    """
    if launched_processes() <= 1 or not torch.distributed.is_initialized():
        return
    state = process_state()
    state.wait_for_everyone()
    state.destroy_process_group()
