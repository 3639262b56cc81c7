"""Where a classifier's features are: the input of its classification head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["capture_head_inputs", "find_classification_head", "reinitialise_head"]


def find_classification_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The linear layer that maps features to the task's classes (``classifier`` in transformers)."""
    num_labels = model.config.num_labels
    candidates = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels
    ]
    for name, module in candidates:
        if name.split(".")[-1] in ("classifier", "head", "fc"):
            return name, module
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no linear layer with {num_labels} outputs to serve as the head"
        )
    return candidates[-1]


@contextlib.contextmanager
def capture_head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model`` appends its head's input (the image features a
    linear probe or a feature-distillation loss uses), with gradients, to the yielded list."""
    _, head = find_classification_head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
    try:
        yield captured
    finally:
        handle.remove()


def reinitialise_head(model: nn.Module) -> None:
    """Give ``model``'s head its initialisation afresh: for a checkpoint whose head has the right
    size but was trained for other classes (``from_pretrained`` loaded it, since the shapes fit; a
    head of another size transformers re-initialises itself). Uses the model's ``_init_weights``,
    else ``reset_parameters``."""
    _, head = find_classification_head(model)
    before = head.weight.detach().clone()
    for param in head.parameters():  # transformers 5 skips tensors it marked as loaded
        param._is_hf_initialized = False
    init = getattr(model, "_init_weights", None)
    if callable(init):
        init(head)
    if torch.equal(head.weight.detach(), before):  # a model whose init left it alone
        head.reset_parameters()
