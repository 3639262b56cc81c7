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
    check_label_ids,
    class_label_names,
    label_array,
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

    ``eval_mode='center'`` keeps a central region of the image's aspect-preserving fit, ``crop_pct`` of
    its shorter side (resize-shorter-side-then-centre-crop); ``'squash'`` keeps the central ``crop_pct``
    of each side and resizes it to ``size`` regardless of aspect (ViT/SigLIP processors).
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
        """From a transformers image processor (DINOv2/BiT, CLIP, SigLIP, ViT, ...) or a timm wrapper's."""
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
        """From ``timm.data.resolve_data_config(...)`` output."""
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
        """From a model's own preprocessing: timm's data config for timm models, else its image processor.

        Without ``processor`` the image processor is loaded from where the model came from
        (``model.config._name_or_path``) with ``AutoImageProcessor``.
        """
        if processor is not None:
            return cls.from_image_processor(processor)
        from timm.data import resolve_data_config

        wrapped_cfg = getattr(getattr(model, "config", None), "pretrained_cfg", None)
        if (
            wrapped_cfg is not None
        ):  # TimmWrapper: the config's pretrained_cfg is what its saved processor uses
            return cls.from_timm_data_config(
                resolve_data_config(dict(wrapped_cfg), model=None, verbose=False)
            )
        if hasattr(model, "pretrained_cfg") and hasattr(model, "default_cfg"):  # a bare timm model
            return cls.from_timm_data_config(resolve_data_config({}, model=model))
        source = getattr(getattr(model, "config", None), "_name_or_path", "")
        if not source:
            raise ValueError(
                f"{type(model).__name__} does not say where it was loaded from: pass its image processor "
                "(e.g. processor=AutoImageProcessor.from_pretrained(...))"
            )
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"could not load the image processor of {type(model).__name__} from '{source}': {err}. "
                "Save it next to the model or pass it explicitly"
            ) from err
        return cls.from_image_processor(processor)

    @property
    def interpolation_mode(self) -> InterpolationMode:
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

    The names are timm's (``create_transform(scale=, ratio=, hflip=)``); the command line sets
    ``scale[0]`` as ``--crop_min_scale`` and ``hflip`` as ``--hflip_probability``, with the same defaults.

    Args:
        scale: Range of the crop's area, as a fraction of the image. The lower bound is 0.25, the
            package's recipe for every stage (``--crop_min_scale``; not from the paper); timm's and
            torchvision's default is 0.08.
        ratio: Range of the crop's aspect ratio (width / height); torchvision's default.
        hflip: Probability of a horizontal flip (``--hflip_probability``); 0 for text or digits.
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
    ):
        from .images import undecoded

        columns = [image_column] + ([label_column] if label_column else [])
        self.raw = undecoded(dataset.with_format(None).select_columns(columns), image_column)
        self.outputs, self.augmentation = dict(outputs), augmentation
        self.image_column, self.label_column, self.seed = image_column, label_column, int(seed)
        self.skip_unreadable, self.train = skip_unreadable, train
        self.label_map = None if label_map is None else [int(i) for i in label_map]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.raw)

    def view_generator(self, row: int) -> torch.Generator:
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
            item: dict[str, Any] = {
                name: render_view(pixels, view, spec) for name, spec in self.outputs.items()
            }
        else:
            item = {
                name: render_view(pixels, eval_view(image.size, spec), spec)
                for name, spec in self.outputs.items()
            }
        if self.label_column is not None:
            item["labels"] = map_label(label_or_unlabelled(example[self.label_column]), self.label_map)
        return item


#: The name of earlier versions (training views only).
RandomViewDataset = ViewDataset


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
    """Teacher and student view specs plus the shared augmentation; prepares datasets for distillation."""

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
        """The transform for ``outputs`` (default: student as ``pixel_values``, teacher as ``teacher_pixel_values``)."""
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
        """
        from ..models.labels import label_id_map
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
        label_map = None
        if label_column is not None:
            data_names = class_label_names(dataset, label_column)
            if label_names is not None or num_labels is not None:
                label_map = label_id_map(data_names, label_names, num_labels=num_labels, where=where)
            known = len(data_names) if data_names is not None and label_map is not None else num_labels
            if known is not None:
                check_label_ids(label_array(dataset, label_column), known, label_column, where=where)
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
        )
