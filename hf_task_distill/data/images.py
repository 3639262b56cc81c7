"""Turn whatever a dataset row holds into an 8-bit RGB PIL image, or fail with one documented error.

Web images and medical scans arrive as greyscale, palette, RGBA, CMYK or 16-bit files; models want
three 8-bit channels. Every decode in the package goes through :func:`load_rgb_image` so that the
conversion rules live in one place, and so does the policy for hostile input: a truncated, corrupt,
empty or non-image file, a decompression bomb (more than :data:`MAX_PIXELS` pixels, checked from the
header before any pixel is decoded) or an absurd aspect ratio (more than :data:`MAX_ASPECT_RATIO`)
raises :class:`ImageDecodeError` and nothing else. Callers decide what that means: an error naming
the row in a labelled target set, a counted skip in a web pool or transfer set.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS",
    "ImageDecodeError",
    "image_source",
    "load_image",
    "load_rgb_image",
    "to_rgb",
    "undecoded",
]

MAX_PIXELS = 89_478_485  # PIL's own warning threshold (about 9,459 x 9,459): far above any training image
MAX_ASPECT_RATIO = 100.0  # longer side / shorter side; banners beyond this carry no usable crop


class ImageDecodeError(ValueError):
    """A dataset cell that is not a usable image (corrupt, truncated, empty, too large, degenerate)."""


# Background used when flattening transparent images: neutral grey keeps the composite close to the
# dataset mean instead of biasing towards black (PIL's default drop of alpha) or white.
_ALPHA_BACKGROUND = (128, 128, 128)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (EXIF orientation applied, alpha flattened, 16-bit rescaled)."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_bit_depth_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = array / 65535.0
    else:  # 32-bit int or float: stretch the observed range, the only scale such files imply
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    grey = np.clip(np.nan_to_num(scaled) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def image_source(value: Any) -> str | None:
    """The file an image cell came from (a path, or a ``{"path": ...}`` cell), for error messages."""
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return getattr(value, "filename", None) or None


def load_rgb_image(value: Any) -> Image.Image:
    """Decode a dataset cell (PIL image, ``{"bytes", "path"}`` dict, path, bytes or array) to RGB.

    Raises :class:`ImageDecodeError` for anything that does not decode to a usable image, and
    ``TypeError`` for a cell of a type that cannot hold an image at all (a programming error).
    """
    return to_rgb(_decoded(value))


def load_image(value: Any) -> Image.Image:
    """Decode a dataset cell under the same checks as :func:`load_rgb_image`, keeping its mode (a
    segmentation mask's class ids must not be converted); EXIF orientation is applied as to images.

    Raises :class:`ImageDecodeError` or ``TypeError`` as :func:`load_rgb_image` does.
    """
    return ImageOps.exif_transpose(_decoded(value))


def _decoded(value: Any) -> Image.Image:
    try:
        image = _open(value)
        _check_size(image)
        image.load()  # decode now: truncation and corrupt data surface here, not in a later stage
        return image
    except (ImageDecodeError, TypeError):
        raise
    except Image.DecompressionBombError as err:  # PIL refuses at open above twice its own limit
        raise ImageDecodeError(
            f"image is above the {MAX_PIXELS:,}-pixel limit (a decompression-bomb guard; {err})"
        ) from err
    except MemoryError as err:
        raise ImageDecodeError(f"not enough memory to decode the image: {err}") from err
    except Exception as err:  # PIL raises a zoo (OSError, SyntaxError, struct.error, IndexError, ...)
        raise ImageDecodeError(f"cannot decode image ({type(err).__name__}: {err})"[:300]) from err


def undecoded(dataset, image_column: str):
    """``dataset`` with its ``datasets.Image`` column left undecoded (``{"bytes", "path"}`` cells), so
    that rows reach :func:`load_rgb_image` instead of ``datasets``' own decoder, which raises a bare
    ``OSError``/``UnidentifiedImageError`` naming no row for a truncated or corrupt file. Other
    columns and datasets without such a column come back unchanged (a feature change, no data copy)."""
    import datasets

    feature = (getattr(dataset, "features", None) or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width} x {height})")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"image is {width} x {height} = {width * height:,} pixels, above the {MAX_PIXELS:,}-pixel limit "
            "(a decompression-bomb guard); raise hf_task_distill.data.images.MAX_PIXELS if the file is genuine"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            f"image is {width} x {height}: aspect ratio above {MAX_ASPECT_RATIO:g} (no usable crop); "
            "raise hf_task_distill.data.images.MAX_ASPECT_RATIO if such images are expected"
        )


def _open(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ImageDecodeError("image cell has neither bytes nor a path")
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, np.ndarray):
        image = Image.fromarray(value)
    elif value is None:
        raise ImageDecodeError("image cell is empty (None)")
    else:
        raise TypeError(f"cannot read an image from a value of type {type(value).__name__}")
    return image
