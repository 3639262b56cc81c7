"""The labelled target task: splits, label names and column names, with the label-budget and test-split copies.

It lives apart from :mod:`~hf_task_distill.data.loading` so that the task loaders (``loading``,
``digits``) both build it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from datasets import Dataset, DatasetDict

from .budget import image_budget_indices, select_label_budget, stratified_holdout_indices
from .registry import TaskSpec
from .validation import label_array

__all__ = ["TargetTask"]


@dataclass
class TargetTask:
    """A labelled image task (classification, or semantic segmentation): its splits, label names and where
    the columns are.

    Built by :func:`~hf_task_distill.data.load_target_task` (which checks it); ``task["train"]`` is a split.

    Args:
        name (`str`):
            The task's name, used in run folders, model cards and error messages.
        splits (`datasets.DatasetDict`):
            The splits by role (``train``, and ``validation``/``test`` when the task has them).
        label_names (`list[str]`):
            The class names; label id ``i`` is ``label_names[i]``.
        image_column (`str`, *optional*, defaults to `"image"`):
            The column holding the images.
        label_column (`str`, *optional*, defaults to `"label"`):
            The column holding the label ids (``ClassLabel``); for a segmentation task, the masks.
        spec (`TaskSpec`, *optional*):
            The registry entry the task was loaded from, if any.
        label_budget (`dict`, *optional*):
            How :meth:`with_label_budget` cut the split (``split``, ``per_class``, ``fraction``, ``seed``,
            ``size`` in images; ``split``, ``images``, ``seed``, ``size`` for a budget in images); ``None``
            when every label is kept.
        task_type (`str`, *optional*, defaults to `"image-classification"`):
            The task's Hub pipeline tag (``"image-classification"``, ``"image-segmentation"``); set from
            the registry entry (``TaskSpec.task_type``) when the task is loaded by name.
    """

    name: str
    splits: DatasetDict
    label_names: list[str]
    image_column: str = "image"
    label_column: str = "label"
    spec: TaskSpec | None = None
    label_budget: dict[str, Any] | None = field(default=None)
    task_type: str = "image-classification"

    @property
    def num_labels(self) -> int:
        """The number of classes (``len(label_names)``)."""
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        """The class names by label id, as ``transformers`` configs take them."""
        return dict(enumerate(self.label_names))

    def __getitem__(self, split: str) -> Dataset:
        if split not in self.splits:
            raise KeyError(f"task '{self.name}' has no split '{split}' (splits: {', '.join(self.splits)})")
        return self.splits[split]

    def with_label_budget(
        self,
        *,
        per_class: int | None = None,
        fraction: float | None = None,
        images: int | None = None,
        seed: int = 0,
        split: str = "train",
    ) -> TargetTask:
        """A copy whose ``split`` keeps only a seeded label budget.

        ``per_class``/``fraction`` draw a stratified budget (see ``label_budget_indices``); ``images``
        draws ``images`` images of the split at random (see ``image_budget_indices``), the budget of a
        segmentation task, whose images have no single class to stratify by (the paper's ADE20K budgets
        are 1,200 ... 19,210 images).

        Args:
            per_class (`int`, *optional*):
                Images kept per class; give this, ``fraction`` or ``images``.
            fraction (`float`, *optional*):
                Share of each class kept, in (0, 1].
            images (`int`, *optional*):
                Images kept in all, in [1, size of the split]; the only budget of a segmentation task.
            seed (`int`, *optional*, defaults to 0):
                Seed of the draw; the same seed keeps the same images.
            split (`str`, *optional*, defaults to `"train"`):
                The split to cut.

        Returns:
            `TargetTask`: a copy with the cut split and ``label_budget`` recording the cut.

        Raises:
            KeyError: if the task has no split ``split``.
            ValueError: if no budget or more than one is given, one is out of range (``images`` above
                the split's size included), or ``per_class``/``fraction`` is given for a segmentation task.
        """
        if images is not None:
            if per_class is not None or fraction is not None:
                raise ValueError(
                    "give one label budget: images= (images of the split) cannot be combined with "
                    f"per_class= or fraction= (got images={images!r}, per_class={per_class!r}, "
                    f"fraction={fraction!r})"
                )
            rows = image_budget_indices(len(self[split]), images, seed=seed, split=split)
            budget = {"split": split, "images": len(rows), "seed": seed, "size": len(rows)}
            splits = DatasetDict({**self.splits, split: self[split].select(rows.tolist())})
            return replace(self, splits=splits, label_budget=budget)
        if per_class is None and fraction is None:
            raise ValueError("give exactly one label budget: per_class=, fraction= or images=")
        if self.task_type != "image-classification":
            raise ValueError(
                f"task '{self.name}' is {self.task_type}: its images have no single class to stratify by, "
                "so per_class= and fraction= do not apply; give images= (a number of images) instead"
            )
        subset = select_label_budget(
            self[split], label_column=self.label_column, per_class=per_class, fraction=fraction, seed=seed
        )
        splits = DatasetDict({**self.splits, split: subset})
        budget = {
            "split": split,
            "per_class": per_class,
            "fraction": fraction,
            "seed": seed,
            "size": len(subset),
        }
        return replace(self, splits=splits, label_budget=budget)

    def with_test_split(self, fraction: float, *, seed: int = 0) -> TargetTask:
        """A copy whose ``train`` gives ``fraction`` of each class to a new ``test`` split.

        For a task that has no test or validation split, so that it can be evaluated on images nobody
        trained on. The hold-out is stratified and seeded, and takes at least one image of a class with
        two or more; a segmentation task's (images of many classes each) is a seeded random
        ``fraction`` of the images, at least one, never all.

        Args:
            fraction (`float`):
                Share of each class's training images moved to ``test``, in (0, 1).
            seed (`int`, *optional*, defaults to 0):
                Seed of the draw.

        Returns:
            `TargetTask`: a copy with the smaller ``train`` and the new ``test`` split.

        Raises:
            ValueError: if the task already has a ``test`` split, or every class has a single image (none
                can be held out).
        """
        if "test" in self.splits:
            raise ValueError(f"task '{self.name}' already has a test split")
        if self.task_type != "image-classification":  # images of many classes each: a random hold-out
            train_rows, test_rows = _random_holdout_indices(len(self["train"]), fraction, seed)
        else:
            train_rows, test_rows = stratified_holdout_indices(
                label_array(self["train"], self.label_column), fraction, seed=seed
            )
        if test_rows.size == 0:
            raise ValueError(
                f"task '{self.name}' has no test split and too few images to hold one out (every class has "
                "a single image): add a test split"
            )
        splits = DatasetDict(
            {
                **self.splits,
                "train": self["train"].select(train_rows.tolist()),
                "test": self["train"].select(test_rows.tolist()),
            }
        )
        return replace(self, splits=splits)


def _random_holdout_indices(num_rows: int, fraction: float, seed: int):
    """``(kept, held out)`` sorted row indices: a seeded random ``fraction`` of ``num_rows`` (at least
    one row, never all; none when there is a single row)."""
    import numpy as np

    held = min(max(1, round(num_rows * fraction)), num_rows - 1)
    if held < 1:
        return np.arange(num_rows), np.arange(0)
    test = image_budget_indices(num_rows, held, seed=seed)
    return np.setdiff1d(np.arange(num_rows), test), test
