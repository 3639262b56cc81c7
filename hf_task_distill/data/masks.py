"""Segmentation masks: decoding, checking and rendering them for a view.

A mask is a single-channel image of class ids, the size of its image: ``0 .. num_labels - 1``, and
:data:`~hf_task_distill.data.validation.IGNORE_INDEX` (255) for a pixel that carries no label (the
ADE20K and ``transformers`` convention, ``semantic_loss_ignore_index``). PNG masks in mode ``L``
(8-bit grey), ``P`` (palette-indexed: the index is the class id, as in Pascal VOC), ``I``/``I;16``
and ``1`` are read as ids. A colour mask (RGB whose channels differ: a palette-*coloured*
rendering) has no ids until its colours are mapped: :func:`masks_from_palette` does it once.

A mask follows its image's view: the same crop box and flip, resized to the model's input size by
nearest-neighbour sampling at pixel centres (``nearest-exact``, the same grid as the image's
bilinear/bicubic resize), so a mask is never interpolated and stays aligned with the pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .images import ImageDecodeError, image_source, load_image, load_rgb_image
from .validation import IGNORE_INDEX, UNLABELLED

__all__ = [
    "MAX_SEGMENTATION_CLASSES",
    "check_masks",
    "mask_array",
    "masks_from_palette",
    "reduce_labels_map",
    "render_mask",
]

#: Class ids must stay below the ignore index (255).
MAX_SEGMENTATION_CLASSES = IGNORE_INDEX

_ID_MODES = ("L", "P", "I", "I;16", "1")


class MaskError(ValueError):
    """A mask the task cannot use (the message names the row and column)."""


def mask_array(value: Any, *, where: str = "mask") -> np.ndarray:
    """A mask as class ids.

    Args:
        value: a ``datasets`` image value (a PIL image, ``{"bytes"|"path"}``, a path) or an array ``[H, W]``
            (a NumPy array, a tensor, or nested lists: an ``Array2D`` column's cells).
        where (`str`): names the mask in errors (row and column).

    Returns:
        `np.ndarray` of shape `[height, width]`, int64.

    Raises:
        MaskError: a colour mask, more than one channel, a file that cannot be decoded, or a value that
            is neither an image nor an array.
    """
    if isinstance(value, np.ndarray | torch.Tensor | list | tuple):  # lists: an Array2D/Sequence column
        try:
            array = np.asarray(value)
        except ValueError as err:  # ragged nested lists
            raise MaskError(f"{where}: a mask array must be [height, width] ({err})") from err
        if array.ndim != 2:
            raise MaskError(f"{where}: a mask array must be [height, width], got shape {tuple(array.shape)}")
        return array.astype(np.int64)
    try:
        image = load_image(value)
    except (ImageDecodeError, TypeError) as err:
        raise MaskError(f"{where}: {err}") from err
    if image.mode in _ID_MODES:
        return np.asarray(image, dtype=np.int64)
    if image.mode in ("RGB", "RGBA", "LA"):
        array = np.asarray(image)
        channels = array[..., :3] if image.mode != "LA" else array[..., :1]
        if image.mode != "LA" and not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise MaskError(
                f"{where} is a colour ({image.mode}) image: a palette-coloured mask has no class ids. Map "
                "its colours to ids first: hf_task_distill.data.masks.masks_from_palette(dataset, column, "
                "palette) with palette = {(r, g, b): class_id}"
            )
        return channels[..., 0].astype(np.int64)
    raise MaskError(f"{where}: a mask must be a single-channel image of class ids, got mode {image.mode}")


def _image_size(value: Any) -> tuple[int, int]:
    """``(width, height)`` of an image value as the models see it (EXIF orientation applied)."""
    return load_rgb_image(value).size


def check_masks(
    dataset,
    mask_column: str,
    *,
    image_column: str,
    num_labels: int,
    label_map: Sequence[int] | None = None,
    where: str = "dataset",
) -> int:
    """Decode every mask of ``dataset`` and refuse, naming the row, what training cannot use.

    Args:
        dataset (`datasets.Dataset`): the rows (images and masks).
        mask_column (`str`): the mask column.
        image_column (`str`): the image column (masks must have their image's size).
        num_labels (`int`): the task's class count; ids must be in ``[0, num_labels)`` or 255.
        label_map (`Sequence[int]`, *optional*): a lookup table applied to raw mask values first
            (see :func:`reduce_labels_map`).
        where (`str`): names the dataset in errors.

    Returns:
        `int`: the rows without a mask (``None``: unlabelled rows).

    Raises:
        MaskError: a mask that cannot be decoded, is coloured, differs in size from its image, or holds
            ids outside the classes that are not 255; ``num_labels`` above 255.
    """
    from .images import undecoded

    if num_labels > MAX_SEGMENTATION_CLASSES:
        raise MaskError(
            f"{where}: {num_labels} classes, but segmentation masks keep 255 as the ignore index, so at "
            f"most {MAX_SEGMENTATION_CLASSES} classes are supported"
        )
    if mask_column not in dataset.column_names:
        raise MaskError(
            f"{where} has no mask column '{mask_column}' (columns: {', '.join(dataset.column_names)}): "
            "a segmentation task needs one mask image per row"
        )
    rows = undecoded(
        undecoded(dataset.with_format(None).select_columns([image_column, mask_column]), image_column),
        mask_column,
    )
    table = None if label_map is None else np.asarray(label_map, dtype=np.int64)
    missing = 0
    for row, example in enumerate(rows):
        value = example[mask_column]
        if value is None:
            missing += 1
            continue
        source = image_source(value)
        here = f"{where} row {row}, column '{mask_column}'{f' ({source})' if source else ''}"
        ids = mask_array(value, where=here)
        image_size = _image_size(example[image_column])
        if (ids.shape[1], ids.shape[0]) != image_size:
            raise MaskError(
                f"{here}: the mask is {ids.shape[1]}x{ids.shape[0]} (width x height) but its image is "
                f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
            )
        if table is not None:
            ids = _lookup(table, ids, here)
        bad = np.unique(ids[(ids != IGNORE_INDEX) & ((ids < 0) | (ids >= num_labels))])
        if bad.size:
            raise MaskError(
                f"{here}: class id(s) {bad[:10].tolist()} outside the {num_labels} classes "
                f"(0..{num_labels - 1}) and not the ignore index {IGNORE_INDEX}"
            )
    return missing


def _lookup(table: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
        raise MaskError(f"{where}: mask value {int(ids.max())} is beyond the {len(table)}-entry value map")
    return table[ids]


def reduce_labels_map(num_values: int = 256) -> list[int]:
    """The ADE20K convention as a lookup table: raw 0 ("other") -> 255 (ignored), raw ``k`` -> ``k - 1``.

    The same rule as ``do_reduce_labels`` of transformers' segmentation image processors.

    Returns:
        `list[int]` of length ``num_values``: the class id of each raw mask value.
    """
    return [IGNORE_INDEX] + [k - 1 if k != IGNORE_INDEX else IGNORE_INDEX for k in range(1, num_values)]


def render_mask(
    value: Any,
    view: Any,
    size: tuple[int, int],
    *,
    label_map: Sequence[int] | None = None,
) -> torch.Tensor:
    """A mask cropped and flipped like its image's view, at the model's input size.

    Args:
        value: the row's mask (see :func:`mask_array`); ``None``, ``-1`` or ``-100``: an unlabelled row.
        view (`ViewParams`): the crop box ``(top, left, height, width)`` in mask pixels, and the flip.
        size (`tuple[int, int]`): output ``(height, width)``: the model's input size.
        label_map (`Sequence[int]`, *optional*): lookup table from raw values to class ids.

    Returns:
        `torch.LongTensor` of shape `[height, width]`: class ids, 255 where no label (all 255 for an
        unlabelled row). Nearest-neighbour at pixel centres: every output value is an input value.
    """
    if value is None or (isinstance(value, int) and value in (-1, UNLABELLED)):
        return torch.full(tuple(size), IGNORE_INDEX, dtype=torch.long)
    ids = mask_array(value)
    if label_map is not None:
        ids = _lookup(np.asarray(label_map, dtype=np.int64), ids, "mask")
    crop = torch.from_numpy(ids)[view.top : view.top + view.height, view.left : view.left + view.width]
    out = TF.resize(crop[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)[0]
    if view.flip:
        out = out.flip(-1)
    return out.long()


def masks_from_palette(dataset, column: str, palette: Mapping[tuple[int, int, int], int], **map_kwargs):
    """``dataset`` with the colour masks of ``column`` turned into class-id masks (mode ``L``).

    Args:
        dataset (`datasets.Dataset`): rows with colour (RGB) masks.
        column (`str`): the mask column.
        palette (`Mapping[tuple[int, int, int], int]`): each colour's class id (255: ignored).
        **map_kwargs: passed to ``Dataset.map`` (``num_proc``...).

    Returns:
        `datasets.Dataset`: the same rows, the mask column as single-channel id images.

    Raises:
        MaskError: a colour absent from ``palette`` (the message names the row and the colour).
    """
    import datasets
    from PIL import Image

    colours = np.asarray(list(palette), dtype=np.int64)
    ids = np.asarray(list(palette.values()), dtype=np.uint8)
    keys = colours[:, 0] << 16 | colours[:, 1] << 8 | colours[:, 2]
    order = np.argsort(keys)

    def convert(example, row):
        rgb = np.asarray(load_image(example[column]).convert("RGB"), dtype=np.int64)
        packed = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        position = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
        found = keys[order][position] == packed
        if not found.all():
            y, x = np.argwhere(~found)[0]
            raise MaskError(
                f"row {row}, column '{column}': colour {tuple(int(c) for c in rgb[y, x])} is not in the palette"
            )
        example[column] = Image.fromarray(ids[order][position].astype(np.uint8), mode="L")
        return example

    features = dataset.features.copy()
    features[column] = datasets.Image()
    return dataset.map(convert, with_indices=True, features=features, **map_kwargs)
