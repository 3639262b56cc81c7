"""Where a classifier's features are: the input of its classification head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["capture_head_inputs", "find_classification_head", "reinitialise_head"]


def find_classification_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The layer that maps features to the task's classes, and its qualified name.

    The model's student family decides (:meth:`~hf_task_distill.models.families.StudentFamily.head`);
    for transformers and timm models it is the linear layer with ``config.num_labels`` outputs
    named ``classifier``, ``head`` or ``fc`` (else the last such layer).

    Raises:
        ValueError: the model has no such layer, or the layer the family names is not in the model.
    """
    from .families.base import family_head

    head = family_head(model)
    for name, module in model.named_modules():
        if module is head:
            return name, head
    raise ValueError(f"the head a student family gave for {type(model).__name__} is not one of its modules")


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
