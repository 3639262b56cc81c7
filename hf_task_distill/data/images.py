"""Turn whatever a dataset row holds into an 8-bit RGB PIL image.

Web images and medical scans arrive as greyscale, palette, RGBA, CMYK or 16-bit files; models want
three 8-bit channels. Every decode in the package goes through :func:`load_rgb_image` so that the
conversion rules live in one place.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["load_rgb_image", "to_rgb"]

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


def load_rgb_image(value: Any) -> Image.Image:
    """Decode a dataset cell (PIL image, ``{"bytes", "path"}`` dict, path, bytes or array) to RGB."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image cell has neither bytes nor a path")
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, np.ndarray):
        image = Image.fromarray(value)
    elif value is None:
        raise ValueError("image cell is empty (None)")
    else:
        raise TypeError(f"cannot read an image from a value of type {type(value).__name__}")
    return to_rgb(image)
