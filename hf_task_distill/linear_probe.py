"""The linear probe of ``TeacherFinetuner`` (strategies ``linear`` and ``lp-ft``).

The frozen backbone embeds the labelled set once (optionally several augmented views per image) and
only the classification head trains, on the cached head inputs: E epochs cost one backbone pass, not
E. The epoch best on validation is kept. ``TeacherFinetuner.embed``/``.train_head`` call these
functions with its arguments.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import EvalPrediction

from .data.validation import UNLABELLED
from .data.views import stack_single_views
from .metrics import make_compute_metrics
from .models.heads import capture_head_inputs

__all__ = ["embed_head_inputs", "train_linear_head"]


@torch.inference_mode()
def embed_head_inputs(
    model: nn.Module,
    prepared: Any,
    *,
    views: int = 1,
    batch_size: int,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification head's inputs for every image of ``prepared``, computed once per view.

    Args:
        model (`nn.Module`):
            A transformers image classifier; moved to ``device`` and put in eval mode.
        prepared (`torch.utils.data.Dataset`):
            Rows of ``{"pixel_values": [3, H, W], "labels": int}``, as
            :func:`~hf_task_distill.data.views.single_view_dataset` gives. If it has ``set_epoch``, view
            ``k`` is drawn with ``set_epoch(k)`` (a random augmented view from ``(seed, k, row)``).
        views (`int`, *optional*, defaults to 1):
            Passes over ``prepared``; the features of view ``k`` follow those of view ``k - 1``.
        batch_size (`int`):
            Images per forward pass.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Where the model runs.
        num_workers (`int`, *optional*, defaults to 0):
            ``DataLoader`` worker processes.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the head inputs (`[views * rows, hidden]`, float32, on the
        CPU) and their labels (`[views * rows]`, ``-100`` for unlabelled rows).
    """
    model.to(device).eval()
    features, labels = [], []
    with capture_head_inputs(model) as captured:
        for view in range(views):
            if hasattr(prepared, "set_epoch"):
                prepared.set_epoch(view)  # view k of every image: drawn from (seed, k, row)
            loader = torch.utils.data.DataLoader(
                prepared, batch_size=batch_size, num_workers=num_workers, collate_fn=stack_single_views
            )
            for batch in loader:
                captured.clear()
                model(pixel_values=batch["pixel_values"].to(device))
                features.append(captured[-1].float().cpu())
                labels.append(batch["labels"])
    return torch.cat(features), torch.cat(labels)


def train_linear_head(
    head: nn.Linear,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    metric: str = "balanced_accuracy",
    extra_metrics: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Train a zero-initialised copy of ``head`` on cached features; keep the epoch best on validation.

    AdamW with a cosine learning-rate schedule down to 0 over all steps, batches shuffled by a
    generator seeded with ``seed``; ``head`` itself is left unchanged. Unlabelled training rows
    (``-100``) are dropped; the validation metrics are those of
    :func:`~hf_task_distill.metrics.make_compute_metrics`.

    Args:
        head (`nn.Linear`):
            The classifier to copy (its shape, dtype and device).
        x_train (`torch.Tensor` of shape `[rows, hidden]`), y_train (`torch.Tensor` of shape `[rows]`):
            Cached training features and labels.
        x_val (`torch.Tensor` of shape `[val_rows, hidden]`), y_val (`torch.Tensor` of shape `[val_rows]`):
            Cached validation features and labels.
        epochs (`int`): Passes over the training features.
        learning_rate (`float`): AdamW's peak learning rate.
        weight_decay (`float`): AdamW's weight decay.
        batch_size (`int`): Training rows per step.
        seed (`int`): Seed of the shuffling.
        metric (`str`, *optional*, defaults to `"balanced_accuracy"`):
            The selection metric (an ``eval_`` prefix is ignored); balanced accuracy if the metrics lack it.
        extra_metrics (`Sequence[str]`, *optional*):
            ``evaluate`` metrics reported besides the local ones.

    Returns:
        `tuple[dict[str, torch.Tensor], list[dict[str, Any]]]`: the best epoch's head state (in
        ``head``'s dtype and on its device) and, per epoch, ``{"epoch": e, **metrics, "best":
        {**best metrics so far, "epoch": its epoch}}``.
    """
    compute = make_compute_metrics(extra_metrics)
    probe = copy.deepcopy(head).float().cpu().train()
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=weight_decay)
    total = max(1, math.ceil(len(x_train) / batch_size) * epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    generator = torch.Generator().manual_seed(seed)
    labelled = y_train != UNLABELLED
    x_train, y_train = x_train[labelled], y_train[labelled]
    best_score, best_state, history = -math.inf, copy.deepcopy(probe.state_dict()), []
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(probe(x_train[rows]), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            scores = compute(EvalPrediction(predictions=probe(x_val).numpy(), label_ids=y_val.numpy()))
        score = scores.get(metric.removeprefix("eval_"), scores["balanced_accuracy"])
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(probe.state_dict())
            best = dict(scores, epoch=epoch + 1)
        history.append({"epoch": epoch + 1, **scores, "best": best})
    dtype, device = head.weight.dtype, head.weight.device
    return {k: v.to(device=device, dtype=dtype) for k, v in best_state.items()}, history
