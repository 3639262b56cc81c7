"""Semantic segmentation: a class per pixel; mean IoU, per-class IoU and pixel accuracy.

The paper's fifth task (ADE20K, 150 classes; Vemulapalli et al., ICML 2024). Targets are masks of
class ids, 255 where a pixel carries no label (:mod:`hf_task_distill.data.masks`); a mask follows its
image's crop and flip and is rendered at the model's input size by nearest-neighbour sampling.
Models are those ``AutoModelForSemanticSegmentation`` loads (SegFormer, MobileViT-V2 + DeepLabV3,
UperNet over a VFM backbone...), whose ``logits`` are ``[batch, num_labels, h, w]``.
"""

from __future__ import annotations

import math

import torch

from .base import TaskType, _register_builtin


class SemanticSegmentation(TaskType):
    """A class per pixel: ``AutoModelForSemanticSegmentation`` models, scored by torchmetrics' IoU.

    Metrics (:meth:`evaluate`) are computed at the model's input size on its evaluation view, the
    logits upsampled bilinearly to the rendered mask (as transformers' segmentation losses do), over
    the pixels whose label is not 255: ``mean_iou`` is the mean of the per-class IoU over the classes
    present in the truth or the prediction (torchmetrics ``MulticlassJaccardIndex``, classes absent
    from both are left out, as mmsegmentation does), ``pixel_accuracy`` the share of labelled pixels
    predicted right (``MulticlassAccuracy(average="micro")``). Both are fractions in [0, 1].
    """

    name = "image-segmentation"
    metric_names = ("mean_iou", "pixel_accuracy")
    metric_titles = ("mIoU", "pixel accuracy")
    details_file = ("per_class_iou", "per_class_iou")

    def model_class(self):
        from transformers import AutoModelForSemanticSegmentation

        return AutoModelForSemanticSegmentation

    def render_target(self, value, view, label_map, *, size=None):
        """The row's mask cropped and flipped like its image's view, at ``size`` (``[height, width]``
        class ids, 255 where unlabelled; all 255 for a row without a mask)."""
        from ..data.masks import render_mask

        if view is None or size is None:
            raise ValueError("a segmentation target needs the image's view and the model's input size")
        return render_mask(value, view, size, label_map=label_map)

    def check_targets(self, dataset, column, *, num_labels, label_names, image_column, where):
        """Every mask decoded and checked: its image's size, single-channel ids, ids in
        ``[0, num_labels)`` or 255 (:func:`~hf_task_distill.data.masks.check_masks`). Mask ids are the
        model's class ids (no remapping)."""
        from ..data.masks import check_masks

        count = num_labels if num_labels is not None else len(label_names or ())
        if not count:
            raise ValueError(f"{where}: a segmentation task needs its class names (or count)")
        check_masks(dataset, column, image_column=image_column, num_labels=count, where=where)
        return None

    def evaluate(self, model, dataset, *, task, batch_size: int, where: str):
        """Metrics over every labelled pixel of the split, and the per-class IoU (``{class name:
        IoU or None}`` in the task's class order; ``None`` for a class absent from truth and prediction)."""
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        from ..data.validation import IGNORE_INDEX

        num_labels = model.config.num_labels
        jaccard = MulticlassJaccardIndex(
            num_labels, average="none", ignore_index=IGNORE_INDEX, zero_division=math.nan
        )
        accuracy = MulticlassAccuracy(num_labels, average="micro", ignore_index=IGNORE_INDEX)
        for predictions, masks in predict_masks(
            model, dataset, task=task, batch_size=batch_size, where=where
        ):
            jaccard.update(predictions, masks)
            accuracy.update(predictions, masks)
        per_class = jaccard.compute()
        present = ~torch.isnan(per_class)
        mean_iou = float(per_class[present].mean()) if bool(present.any()) else 0.0
        metrics = {"mean_iou": mean_iou, "pixel_accuracy": float(accuracy.compute())}
        names = [model.config.id2label[i] for i in range(num_labels)]
        details = {
            name: (None if math.isnan(v) else round(v, 6))
            for name, v in zip(names, per_class.tolist(), strict=True)
        }
        return metrics, details

    def card_tags(self) -> list[str]:
        """The Hub's pipeline tag and the task's own name."""
        return [self.name, "semantic-segmentation"]


@torch.inference_mode()
def predict_masks(model, dataset, *, task=None, batch_size: int = 16, where: str = "evaluation split"):
    """Yield ``(predicted ids, true ids)`` batches, both ``[batch, height, width]`` at the model's input
    size on its evaluation view; the logits are upsampled bilinearly to the mask's size.

    Masks hold the task's class ids; when the model names the task's classes (``task.label_names``)
    in another order, the true ids are mapped to the model's by name (a mask has no names of its own).

    Raises:
        ValueError: a mask the task cannot use (see :func:`~hf_task_distill.data.masks.check_masks`), or
            task classes the model does not name (both lists given).
    """
    from ..data import ViewSpec, single_view_dataset
    from ..devices import process_state

    table = _model_id_table(model, task, where)
    prepared = single_view_dataset(
        dataset,
        ViewSpec.from_model(model),
        train=False,
        image_column=getattr(task, "image_column", None),
        label_column=getattr(task, "label_column", None),
        num_labels=model.config.num_labels,
        where=where,
        task_type=SemanticSegmentation(),
        render_target=None if table is None else _MappedMask(table),
    )
    device = process_state().device
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(prepared, batch_size=batch_size, collate_fn=_stack)
    for batch in loader:
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        logits = torch.nn.functional.interpolate(
            logits.float(), size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False
        )
        yield logits.argmax(1).cpu(), batch["labels"]


def _model_id_table(model, task, where: str) -> list[int] | None:
    """Mask value -> the model's class id, when the model lists the task's classes in another order
    (``None`` when the ids agree or either side has no names)."""
    from ..data.validation import IGNORE_INDEX
    from ..models.labels import label_id_map, label_names_of

    names = getattr(task, "label_names", None)
    mapping = label_id_map(
        None if names is None else list(names),
        label_names_of(model.config),
        num_labels=model.config.num_labels,
        where=where,
    )
    if mapping is None:
        return None
    return [mapping[i] if i < len(mapping) else i for i in range(IGNORE_INDEX)] + [IGNORE_INDEX]


class _MappedMask:
    """A segmentation target rendered through a mask-value table (picklable for data-loader workers)."""

    def __init__(self, table: list[int]):
        self.table = table

    def __call__(self, value, view, label_map, *, size=None):
        from ..data.masks import render_mask

        return render_mask(value, view, size, label_map=self.table)


def _stack(rows):
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
    }


_register_builtin(SemanticSegmentation)
