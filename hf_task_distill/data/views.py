"""Paired views: one crop and flip per image, rendered for the teacher and for the student.

Consistent teaching (Beyer et al., 2022) needs the teacher to label exactly the view the student
learns from. A view is therefore described once, as a crop box in the decoded image plus a flip
(:class:`ViewParams`), and rendered twice: at the teacher's resolution and normalisation and at the
student's (:class:`ViewSpec`, derived from each model's own preprocessing config). Recording the
parameters, not the pixels, also lets a teacher-output cache replay the exact view later.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .images import ImageDecodeError, image_source, load_rgb_image
from .validation import (
    UNLABELLED,
    check_dataset_type,
    check_image_column,
    check_images_decode,
)

__all__ = [
    "UNREADABLE_ROW",
    "PairedViews",
    "RandomViewDataset",
    "ViewDataset",
    "map_label",
    "ViewTransform",
    "single_view_dataset",
    "ViewAugmentation",
    "ViewParams",
    "ViewSpec",
    "derived_seed",
    "eval_view",
    "label_or_unlabelled",
    "render_view",
    "sample_view",
    "seeded_generator",
]

#: Key of the placeholder a :class:`RandomViewDataset` with ``skip_unreadable`` returns for a row
#: whose image cannot be decoded; its value is the row.
UNREADABLE_ROW = "unreadable_row"

_PIL_RESAMPLE_TO_MODE = {
    0: InterpolationMode.NEAREST,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
    4: InterpolationMode.BOX,
    5: InterpolationMode.HAMMING,
}


@dataclass(frozen=True)
class ViewSpec:
    """How one model wants its pixels: output size, normalisation, resampling and evaluation crop.

    Usually derived from a model's own preprocessing (:meth:`from_model`, :meth:`from_image_processor`,
    :meth:`from_timm_data_config`), so that each model sees the pixels it was trained on.

    Args:
        size (`tuple[int, int]`):
            Output ``(height, width)`` in pixels.
        mean (`tuple[float, ...]`, *optional*, defaults to ImageNet's `(0.485, 0.456, 0.406)`):
            Per-channel mean subtracted after scaling pixels to [0, 1].
        std (`tuple[float, ...]`, *optional*, defaults to ImageNet's `(0.229, 0.224, 0.225)`):
            Per-channel standard deviation divided by after the mean.
        interpolation (`str`, *optional*, defaults to `"bicubic"`):
            A ``torchvision.transforms.InterpolationMode`` value (``"bilinear"``, ``"nearest"``...).
        crop_pct (`float`, *optional*, defaults to 1.0):
            Share of the image kept by the evaluation crop, in (0, 1].
        eval_mode (`str`, *optional*, defaults to `"center"`):
            ``"center"`` keeps a central region of the image's aspect-preserving fit, ``crop_pct`` of its
            shorter side (resize-shorter-side-then-centre-crop, timm's and DINOv2/CLIP's processors);
            ``"squash"`` keeps the central ``crop_pct`` of each side and resizes it to ``size``
            regardless of aspect (ViT/SigLIP processors).

    Raises:
        ValueError: if ``eval_mode`` is neither ``"center"`` nor ``"squash"``, or ``crop_pct`` is not in (0, 1].
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    eval_mode: str = "center"

    def __post_init__(self):
        if self.eval_mode not in ("center", "squash"):
            raise ValueError(f"eval_mode must be 'center' or 'squash', got {self.eval_mode!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_image_processor(cls, processor: Any) -> ViewSpec:
        """From a transformers image processor (DINOv2/BiT, CLIP, SigLIP, ViT, ...) or a timm wrapper's.

        A processor that centre-crops gives ``eval_mode="center"`` with ``crop_pct`` = crop / resize;
        one that resizes to a fixed height and width gives ``"squash"``. ``do_normalize=False`` gives
        mean 0 and std 1; ``do_rescale=False`` (a model that takes 0..255) divides mean and std by 255.

        Args:
            processor (`BaseImageProcessor` or `TimmWrapperImageProcessor`): the model's image processor.

        Returns:
            `ViewSpec`: the processor's size, normalisation, resampling and evaluation crop.

        Raises:
            ValueError: if the processor states no output size.
        """
        data_config = getattr(processor, "data_config", None)
        if data_config is not None:  # TimmWrapperImageProcessor carries timm's resolved data config
            return cls.from_timm_data_config(data_config)
        size = _size_dict(getattr(processor, "size", None))
        crop = _size_dict(getattr(processor, "crop_size", None))
        do_crop = bool(getattr(processor, "do_center_crop", False)) and crop.get("height")
        if do_crop:
            out = (int(crop["height"]), int(crop["width"]))
            resized = size.get("shortest_edge") or min(
                size.get("height") or out[0], size.get("width") or out[1]
            )
            crop_pct, mode = min(1.0, min(out) / float(resized)), "center"
        elif size.get("height"):
            out, crop_pct, mode = (int(size["height"]), int(size["width"])), 1.0, "squash"
        elif size.get("shortest_edge"):
            edge = int(size["shortest_edge"])
            out, crop_pct, mode = (edge, edge), 1.0, "center"
        else:
            raise ValueError(
                f"cannot read an output size from {type(processor).__name__} (size={size}, crop_size={crop})"
            )
        if getattr(processor, "do_normalize", True):
            mean = tuple(float(m) for m in processor.image_mean)
            std = tuple(float(s) for s in processor.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if getattr(processor, "do_rescale", True) is False:  # model expects 0..255 inputs
            mean, std = tuple(m / 255.0 for m in mean), tuple(s / 255.0 for s in std)
        resample = getattr(processor, "resample", 3)
        mode_name = _PIL_RESAMPLE_TO_MODE.get(
            int(getattr(resample, "value", resample)), InterpolationMode.BICUBIC
        ).value
        return cls(size=out, mean=mean, std=std, interpolation=mode_name, crop_pct=crop_pct, eval_mode=mode)

    @classmethod
    def from_timm_data_config(cls, data_config: dict[str, Any]) -> ViewSpec:
        """From ``timm.data.resolve_data_config(...)`` output.

        Args:
            data_config (`dict[str, Any]`): needs ``input_size`` (``(channels, height, width)``), ``mean``
                and ``std``; ``interpolation``, ``crop_pct`` and ``crop_mode`` are optional.

        Returns:
            `ViewSpec`: ``eval_mode="squash"`` for timm's ``crop_mode="squash"``, else ``"center"``.
        """
        _, height, width = data_config["input_size"]
        crop_mode = data_config.get("crop_mode", "center")
        return cls(
            size=(int(height), int(width)),
            mean=tuple(float(m) for m in data_config["mean"]),
            std=tuple(float(s) for s in data_config["std"]),
            interpolation=data_config.get("interpolation", "bicubic") or "bicubic",
            crop_pct=float(data_config.get("crop_pct", 1.0) or 1.0),
            eval_mode="squash" if crop_mode == "squash" else "center",
        )

    @classmethod
    def from_model(cls, model: Any, processor: Any = None) -> ViewSpec:
        """From a model's own preprocessing, as its student family reads it: timm's data config for
        timm models, else its image processor (a registered family may read its models its own way).

        Without ``processor`` the image processor is loaded from where the model came from
        (``model.config._name_or_path``) with ``AutoImageProcessor``.

        Args:
            model (`PreTrainedModel` or `timm` model):
                A transformers model (a ``TimmWrapperModel`` uses its config's ``pretrained_cfg``) or a
                bare timm model (its ``pretrained_cfg``).
            processor (`BaseImageProcessor`, *optional*):
                The model's image processor; takes precedence over everything else.

        Returns:
            `ViewSpec`: the model's evaluation view.

        Raises:
            ValueError: if the model does not say where it was loaded from, or its image processor cannot
                be loaded from there.
        """
        if processor is not None:
            return cls.from_image_processor(processor)
        from ..models.families.base import family_view_spec

        return family_view_spec(model)

    @property
    def interpolation_mode(self) -> InterpolationMode:
        """``interpolation`` as a ``torchvision.transforms.InterpolationMode``."""
        return InterpolationMode(self.interpolation)


def _size_dict(size: Any) -> dict[str, Any]:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    return {
        k: getattr(size, k)
        for k in ("height", "width", "shortest_edge", "longest_edge")
        if getattr(size, k, None)
    }


@dataclass(frozen=True)
class ViewAugmentation:
    """Random-resized-crop and flip parameters shared by teacher and student views (training only).

    The crop is drawn by torchvision's ``RandomResizedCrop`` rule (:func:`sample_view`) in the decoded
    image, once per image, and rendered for every model. The names are timm's
    (``create_transform(scale=, ratio=, hflip=)``); the command line sets ``scale[0]`` as
    ``--crop_min_scale`` and ``hflip`` as ``--hflip_probability``, with the same defaults.

    Args:
        scale (`tuple[float, float]`, *optional*, defaults to `(0.25, 1.0)`):
            Range of the crop's area as a share of the image's, ``0 < low <= high <= 1``. The lower
            bound 0.25 is the package's recipe for every stage (not from the paper); timm's and
            torchvision's default is 0.08.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the crop's aspect ratio (width / height), ``0 < low <= high``; drawn log-uniformly.
        hflip (`float`, *optional*, defaults to 0.5):
            Probability of a horizontal flip, in [0, 1] (0 for text or digits).

    Raises:
        ValueError: if a bound is out of range or ``low > high`` (the message names the field).
    """

    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self):
        from ..checks import check_number

        low = check_number(self.scale[0], "scale[0]", above=0, maximum=1)
        check_number(self.scale[1], f"scale[1] (with scale[0] = {low:g})", minimum=low, maximum=1)
        low = check_number(self.ratio[0], "ratio[0]", above=0)
        check_number(self.ratio[1], f"ratio[1] (with ratio[0] = {low:g})", minimum=low)
        check_number(self.hflip, "hflip", minimum=0, maximum=1)


@dataclass(frozen=True)
class ViewParams:
    """One view of one image: crop box ``(top, left, height, width)`` in decoded pixels, and a flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def sample_view(
    image_size: tuple[int, int], augmentation: ViewAugmentation, generator: torch.Generator | None = None
) -> ViewParams:
    """Draw a random-resized-crop box and flip (torchvision's ``RandomResizedCrop`` rule) from ``generator``."""
    width, height = image_size
    area = width * height
    log_ratio = (math.log(augmentation.ratio[0]), math.log(augmentation.ratio[1]))

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    box = None
    for _ in range(10):
        target_area = area * uniform(*augmentation.scale)
        aspect = math.exp(uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            box = (top, left, h, w)
            break
    if box is None:  # fall back to a central crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < augmentation.ratio[0]:
            w, h = width, int(round(width / augmentation.ratio[0]))
        elif in_ratio > augmentation.ratio[1]:
            h, w = height, int(round(height * augmentation.ratio[1]))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = augmentation.hflip > 0 and torch.rand((), generator=generator).item() < augmentation.hflip
    return ViewParams(*box, flip=bool(flip))


def eval_view(image_size: tuple[int, int], spec: ViewSpec) -> ViewParams:
    """The deterministic evaluation view of ``spec`` as a crop box (see :class:`ViewSpec`)."""
    width, height = image_size
    if spec.eval_mode == "squash":
        w, h = max(1, round(width * spec.crop_pct)), max(1, round(height * spec.crop_pct))
    else:
        out_h, out_w = spec.size
        scale = min(width / out_w, height / out_h)  # largest region of the output's aspect that fits
        w = max(1, min(width, round(out_w * scale * spec.crop_pct)))
        h = max(1, min(height, round(out_h * scale * spec.crop_pct)))
    return ViewParams(top=(height - h) // 2, left=(width - w) // 2, height=h, width=w)


def render_view(pixels: torch.Tensor, view: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """Crop ``pixels`` (uint8 ``[3, H, W]``) to ``view``, resize to ``spec.size``, flip, normalise."""
    crop = pixels[:, view.top : view.top + view.height, view.left : view.left + view.width].float()
    out = TF.resize(crop, list(spec.size), interpolation=spec.interpolation_mode, antialias=True)
    if view.flip:
        out = out.flip(-1)
    out = out.clamp_(0.0, 255.0).div_(255.0)
    return TF.normalize(out, list(spec.mean), list(spec.std))


class ViewTransform:
    """``datasets`` transform: raw rows -> one rendered view per named output, plus ``labels``.

    ``outputs`` maps output names to view specs, e.g. ``{"pixel_values": student, "teacher_pixel_values":
    teacher}``. Training draws one :class:`ViewParams` per image and renders it for every output;
    evaluation renders each spec's own deterministic view. Labels that are missing, ``None``, ``-1``
    or ``-100`` become ``-100`` (unlabelled); a dataset without a label column yields no ``labels``.
    """

    def __init__(
        self,
        outputs: dict[str, ViewSpec],
        *,
        train: bool,
        augmentation: ViewAugmentation | None = None,
        image_column: str = "image",
        label_column: str | None = "label",
        return_view_params: bool = False,
        generator: torch.Generator | None = None,
    ):
        if not outputs:
            raise ValueError("a view transform needs at least one output")
        self.outputs, self.train = dict(outputs), train
        self.augmentation = augmentation or ViewAugmentation()
        self.image_column, self.label_column = image_column, label_column
        self.return_view_params = return_view_params
        self.generator = generator

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.image_column not in batch:
            raise KeyError(
                f"rows have no image column '{self.image_column}' (columns: {', '.join(batch)}); "
                "pass image_column= to PairedViews.apply"
            )
        out: dict[str, list] = {name: [] for name in self.outputs}
        params = []
        for value in batch[self.image_column]:
            image = load_rgb_image(value)
            pixels = TF.pil_to_tensor(image)
            shared = sample_view(image.size, self.augmentation, self.generator) if self.train else None
            first = None
            for name, spec in self.outputs.items():
                view = shared if shared is not None else eval_view(image.size, spec)
                first = first or view
                out[name].append(render_view(pixels, view, spec))
            params.append(first)
        if self.label_column is not None and self.label_column in batch:
            out["labels"] = [label_or_unlabelled(v) for v in batch[self.label_column]]
        if self.return_view_params:
            out["view_params"] = params
        return out


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed that is a function of ``parts`` only (e.g. ``(seed, epoch, row)``)."""
    key = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(key[:8], "little") >> 1


def seeded_generator(*parts: Any) -> torch.Generator:
    """A generator seeded by :func:`derived_seed`: random draws that no other code can shift."""
    return torch.Generator().manual_seed(derived_seed(*parts))


class ViewDataset(torch.utils.data.Dataset):
    """A dataset's rows rendered as model inputs: one view per row, for every named output.

    Training (``train=True``) draws each row's random view from a generator seeded by
    ``(seed, epoch, row)`` only. A view drawn from the global RNG depends on how far that RNG has
    run: on the worker count, on the batch the data loader prefetched before a checkpoint, on what
    else drew numbers; this makes a resumed run see exactly the views of an uninterrupted one. The
    Trainer subclasses call :meth:`set_epoch` at every epoch start. Evaluation renders each output's
    own deterministic view (:func:`eval_view`).

    Images are read undecoded and decoded by :func:`~hf_task_distill.data.images.load_rgb_image`
    (the package's one decode policy), never by ``datasets``: an unusable image raises
    :class:`ImageDecodeError` naming the row and its file, or, with ``skip_unreadable`` (a web-scale
    transfer set nobody has checked), yields an ``UNREADABLE_ROW`` placeholder that the trainer's
    collator drops and counts. ``label_map[i]`` is the model's id of the dataset's class ``i`` (see
    :func:`~hf_task_distill.models.labels.label_id_map`); ``None`` keeps the ids as they are.
    """

    def __init__(
        self,
        dataset,
        outputs: dict[str, ViewSpec],
        *,
        augmentation: ViewAugmentation,
        image_column: str,
        label_column: str | None,
        seed: int = 0,
        skip_unreadable: bool = False,
        train: bool = True,
        label_map: Any = None,
        render_target: Any = None,
    ):
        from .images import undecoded

        columns = [image_column] + ([label_column] if label_column else [])
        self.raw = undecoded(dataset.with_format(None).select_columns(columns), image_column)
        self.outputs, self.augmentation = dict(outputs), augmentation
        self.image_column, self.label_column, self.seed = image_column, label_column, int(seed)
        self.skip_unreadable, self.train = skip_unreadable, train
        self.label_map = None if label_map is None else [int(i) for i in label_map]
        self.epoch = 0
        # how a row's label becomes the model's target: a task type's ``render_target`` (its label as
        # the model's class id for classification, the default)
        self.render_target = render_target or class_target

    def set_epoch(self, epoch: int) -> None:
        """Draw the next training views for ``epoch`` (the trainers call it at every epoch start).

        Args:
            epoch (`int`): the epoch number; the views are a function of ``(seed, epoch, row)``.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.raw)

    def view_generator(self, row: int) -> torch.Generator:
        """The generator that draws ``row``'s training view this epoch.

        Args:
            row (`int`): the row index in the dataset.

        Returns:
            `torch.Generator`: seeded by :func:`derived_seed` of ``(seed, epoch, row)``; a new one per call.
        """
        return seeded_generator(self.seed, self.epoch, row)

    def __getitem__(self, row: int) -> dict[str, Any]:
        example = self.raw[int(row)]
        try:
            image = load_rgb_image(example[self.image_column])
        except ImageDecodeError as err:
            if not self.skip_unreadable:
                source = image_source(example[self.image_column])
                raise ImageDecodeError(f"row {row}{f' ({source})' if source else ''}: {err}") from err
            return {UNREADABLE_ROW: int(row)}  # dropped by the collator, counted by the trainer
        pixels = TF.pil_to_tensor(image)
        if self.train:
            view = sample_view(image.size, self.augmentation, self.view_generator(row))
            views = dict.fromkeys(self.outputs, view)
        else:
            views = {name: eval_view(image.size, spec) for name, spec in self.outputs.items()}
        item: dict[str, Any] = {
            name: render_view(pixels, views[name], spec) for name, spec in self.outputs.items()
        }
        if self.label_column is not None:
            # the target belongs to the model being trained: the student's view (``pixel_values``)
            target = "pixel_values" if "pixel_values" in self.outputs else next(iter(self.outputs))
            item["labels"] = self.render_target(
                example[self.label_column], views[target], self.label_map, size=self.outputs[target].size
            )
        return item


#: The name of earlier versions (training views only).
RandomViewDataset = ViewDataset


def class_target(value: Any, view: Any, label_map: list[int] | None) -> int:
    """An image-level label as the model's class id: the target of image classification, which no view
    changes (the ``render_target`` a :class:`ViewDataset` uses by default)."""
    return map_label(label_or_unlabelled(value), label_map)


def map_label(label: int, label_map: list[int] | None) -> int:
    """The model's id of dataset class ``label`` (unlabelled rows stay unlabelled)."""
    return label if label_map is None or label == UNLABELLED else label_map[label]


def single_view_dataset(
    dataset,
    spec: ViewSpec,
    *,
    train: bool,
    augmentation: ViewAugmentation | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    where: str = "dataset",
    check_images: bool = False,
    seed: int = 0,
    render_target: Any = None,
    task_type: Any = None,
) -> ViewDataset:
    """``dataset`` with one model's views (``pixel_values``) and ``labels``: for finetuning or embedding.

    ``label_names`` (the model's classes in output order) remap the labels by name when the dataset
    lists the same classes in another order (see :meth:`PairedViews.apply`). ``check_images``
    decodes every image up front (for small labelled training sets), so that a bad file is an error
    naming its row before training starts.
    """
    views = PairedViews(teacher=spec, student=spec, augmentation=augmentation or ViewAugmentation())
    return views.apply(
        dataset,
        train=train,
        image_column=image_column,
        label_column=label_column,
        num_labels=num_labels,
        label_names=label_names,
        where=where,
        outputs={"pixel_values": spec},
        check_images=check_images,
        seed=seed,
        render_target=render_target,
        task_type=task_type,
    )


def stack_single_views(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate rows of :func:`single_view_dataset` into ``pixel_values`` and ``labels`` (unlabelled rows: -100)."""
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r.get("labels", UNLABELLED) for r in rows]),
    }


def label_or_unlabelled(value: Any) -> int:
    """A label id, or ``-100`` for missing, ``None``, NaN, ``-1`` and ``-100`` (unlabelled rows)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNLABELLED
    value = int(value)
    return UNLABELLED if value in (-1, UNLABELLED) else value


@dataclass
class PairedViews:
    """Teacher and student view specs plus the shared augmentation; prepares datasets for distillation.

    Consistent teaching (Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", 2022): in training, one crop and flip per image is drawn and rendered for both models
    (the teacher at its size and normalisation, the student at its own), so the teacher labels exactly
    what the student sees.

    Args:
        teacher (`ViewSpec`): the teacher's view.
        student (`ViewSpec`): the student's view.
        augmentation (`ViewAugmentation`, *optional*): the shared crop and flip; defaults to
            ``ViewAugmentation()``.

    Example:

    ```python
    >>> views = PairedViews.from_models(teacher_model, student_model)
    >>> train_rows = views.apply(task["train"], train=True, seed=0)  # pixel_values, teacher_pixel_values, labels
    ```
    """

    teacher: ViewSpec
    student: ViewSpec
    augmentation: ViewAugmentation = ViewAugmentation()

    @classmethod
    def from_models(
        cls,
        teacher: Any,
        student: Any,
        *,
        teacher_processor: Any = None,
        augmentation: ViewAugmentation | None = None,
    ) -> PairedViews:
        """Each model's own :class:`ViewSpec` (:meth:`ViewSpec.from_model`) paired.

        Args:
            teacher (`PreTrainedModel`): the teacher model.
            student (`PreTrainedModel` or `timm` model): the student model.
            teacher_processor (`BaseImageProcessor`, *optional*): the teacher's image processor, when it
                cannot be loaded from where the teacher came from.
            augmentation (`ViewAugmentation`, *optional*): the shared augmentation; defaults to ``ViewAugmentation()``.

        Returns:
            `PairedViews`: the two views and the augmentation.

        Raises:
            ValueError: if a model's view cannot be read (see :meth:`ViewSpec.from_model`).
        """
        return cls(
            teacher=ViewSpec.from_model(teacher, teacher_processor),
            student=ViewSpec.from_model(student),
            augmentation=augmentation or ViewAugmentation(),
        )

    def transform(
        self,
        *,
        train: bool,
        image_column: str = "image",
        label_column: str | None = "label",
        outputs: dict[str, ViewSpec] | None = None,
        **kwargs,
    ) -> ViewTransform:
        """A ``datasets`` transform (``dataset.with_transform``) rendering each row's views.

        Args:
            train (`bool`): draw random shared views (``True``) or each output's evaluation view.
            image_column (`str`, *optional*, defaults to `"image"`): the image column.
            label_column (`str`, *optional*, defaults to `"label"`): the label column; ``None`` for none.
            outputs (`dict[str, ViewSpec]`, *optional*): output name -> view; defaults to the student as
                ``pixel_values`` and the teacher as ``teacher_pixel_values``.
            **kwargs: passed to :class:`ViewTransform` (``return_view_params``, ``generator``).

        Returns:
            `ViewTransform`: the transform.
        """
        return ViewTransform(
            outputs or {"pixel_values": self.student, "teacher_pixel_values": self.teacher},
            train=train,
            augmentation=self.augmentation,
            image_column=image_column,
            label_column=label_column,
            **kwargs,
        )

    def apply(
        self,
        dataset,
        *,
        train: bool,
        image_column: str | None = None,
        label_column: str | None = None,
        num_labels: int | None = None,
        label_names: Sequence[str] | None = None,
        where: str = "dataset",
        outputs: dict[str, ViewSpec] | None = None,
        check_images: bool = False,
        seed: int = 0,
        skip_unreadable: bool = False,
        render_target: Any = None,
        task_type: Any = None,
    ) -> ViewDataset:
        """Check ``dataset`` and return it ready for a model, as a :class:`ViewDataset`: random views
        drawn from ``(seed, epoch, row)`` for training, each output's deterministic view for evaluation.

        Image and label columns are found from the features unless named (a dataset without labels is
        fine: a transfer set). Rows may be labelled, unlabelled, or a mix. ``label_names`` are the
        model's classes in output order: when the label column is a ``ClassLabel`` whose names are
        the same classes in another order (or a subset), labels are remapped to the model's ids by
        name; other names are an error giving both lists (see
        :func:`~hf_task_distill.models.labels.label_id_map`). With ``num_labels`` (the model's class
        count) the label ids are checked to be in range up front. ``skip_unreadable`` (training only):
        a row whose image cannot be decoded yields an ``UNREADABLE_ROW`` placeholder instead of an
        error, for a web-scale transfer set that nobody has checked.

        Args:
            dataset (`datasets.Dataset`): the rows.
            train (`bool`): random shared views (training) or deterministic views (evaluation).
            image_column (`str`, *optional*): found from the features (first ``Image``) when not given.
            label_column (`str`, *optional*): found from the features when not given; none is fine.
            num_labels (`int`, *optional*): the model's class count, to check label ids against.
            label_names (`Sequence[str]`, *optional*): the model's classes in output order, to remap by name.
            where (`str`, *optional*, defaults to `"dataset"`): names the dataset in errors.
            outputs (`dict[str, ViewSpec]`, *optional*): output name -> view; defaults to ``pixel_values``
                (student) and ``teacher_pixel_values`` (teacher).
            check_images (`bool`, *optional*, defaults to `False`): decode every image now.
            seed (`int`, *optional*, defaults to 0): seed of the training views.
            skip_unreadable (`bool`, *optional*, defaults to `False`): placeholder rows for unreadable images
                (training only).
            render_target (`Callable`, *optional*): how a row's label becomes the model's target given
                its view; defaults to ``task_type``'s.
            task_type (`TaskType`, *optional*, defaults to image classification): checks the target
                column (:meth:`TaskType.check_targets`) and renders targets.

        Returns:
            `ViewDataset`: items ``{output name: float tensor [3, height, width], "labels": int}`` (no
            ``labels`` without a label column; unlabelled rows ``-100``).

        Raises:
            TypeError: if ``dataset`` is not a ``datasets.Dataset`` (the message says what to pass).
            ValueError: if it is empty, lacks the image or named label column, has a label id out of range
                or classes the model lacks (the message names the column, row or classes).
            ImageDecodeError: with ``check_images``, if an image cannot be decoded (the message names the row).
        """
        from .loading import find_image_column, find_label_column

        check_dataset_type(dataset, where)
        if len(dataset) == 0:
            raise ValueError(f"{where} is empty")
        image_column = image_column or find_image_column(dataset.features) or "image"
        check_image_column(dataset, image_column, where=where)
        if label_column is None:
            label_column = find_label_column(dataset.features)
        elif label_column not in dataset.column_names:
            raise ValueError(
                f"{where} has no label column '{label_column}' (columns: {', '.join(dataset.column_names)})"
            )
        from ..tasks import get_task_type

        task = task_type or get_task_type()
        label_map = None
        if label_column is not None:
            label_map = task.check_targets(
                dataset,
                label_column,
                num_labels=num_labels,
                label_names=label_names,
                image_column=image_column,
                where=where,
            )
        if check_images:
            check_images_decode(dataset, image_column, where=where)
        return ViewDataset(
            dataset,
            outputs or {"pixel_values": self.student, "teacher_pixel_values": self.teacher},
            augmentation=self.augmentation,
            image_column=image_column,
            label_column=label_column,
            seed=seed,
            skip_unreadable=skip_unreadable and train,
            train=train,
            label_map=label_map,
            render_target=render_target or task.render_target,
        )
