"""A broad "web" image pool that needs no network: printed characters of many alphabets.

The offline miniature of the paper pretrains a small "foundation model" on a broad pool and then
transfers it to the handwritten-digits task. This module makes that pool: a few hundred character
classes (digits, Latin, Greek, Cyrillic, Armenian, Hebrew, symbols) rendered from the fonts that ship
inside matplotlib's wheel (DejaVu, STIX, Computer Modern), with random size, position, rotation, stroke
width and blur. The frame matches :func:`~hf_task_distill.demo.digits.load_digits_task`: small square
white-on-black greyscale stored as RGB, glyph roughly centred and about as large, thick and blurry as
an upscaled 8x8 scan.

Every image is a pure function of ``(seed, index)``: its class, font and augmentation are drawn from
``numpy.random.default_rng([seed, index])``, so any slice can be regenerated alone, in any process, and
the same config gives byte-identical PNGs (with the same Pillow/FreeType build).

Needs matplotlib (for its fonts, and fontTools which it depends on, to check glyph coverage).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "GLYPH_ALPHABETS",
    "GlyphPoolConfig",
    "glyph_class_names",
    "glyph_coverage",
    "glyph_fonts",
    "glyph_pool_example",
    "make_glyph_pool",
    "render_glyph",
]

# Characters that look the same as one already listed (Latin A / Greek Alpha / Cyrillic A, Greek Phi /
# Cyrillic Ef, ...) are left out: as separate classes they would be pure label noise when the pool is
# used for supervised pretraining. Near-misses within one script (l/I/1, O/0, c/C) stay: they are real.
GLYPH_ALPHABETS: dict[str, str] = {
    "digits": "0123456789",
    "latin_upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "latin_lower": "abcdefghijklmnopqrstuvwxyz",
    # without the Latin look-alikes A B E Z H I K M N O P T Y X
    "greek_upper": "ΓΔΘΛΞΠΣΦΨΩ",
    # without omicron (= Latin o)
    "greek_lower": "αβγδεζηθικλμνξπρστυφχψω",
    # without the Latin/Greek look-alikes А В Г Е К М Н О П Р С Т Ф Х
    "cyrillic_upper": "БДЁЖЗИЙЛУЦЧШЩЪЫЬЭЮЯ",
    # without the Latin look-alikes а е о р с у х
    "cyrillic_lower": "бвгдёжзийклмнптфцчшщъыьэюя",
    # without the Latin look-alikes հ ո ս օ (h n u o)
    "armenian_lower": "աբգդեզէըթժիլխծկձղճմյնշչպջռվտրցւփքֆ",
    "hebrew": "אבגדהוזחטיךכלםמןנסעףפץצקרשת",
    "symbols": "!?#$%&*+=/\\@()[]{}<>~^§¶©®±×÷€£¥√∞∫∂∇∈∀∃∩∪≈≠≤≥→←↑↓↔★☆♠♣♥♦♪☺✓■□●○▲◆⊕⊗",
}

# Text faces of the matplotlib wheel. Left out: the *Display fonts (a few dozen glyphs), LastResort
# (a tofu box for every code point, by design), STIXNonUni/STIXSiz* and cmex/cmmi/cmsy (private or
# math-symbol encodings).
_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)

# Glyphs whose name is right but whose drawing is not: TeX's text-italic encoding puts a pound sign at
# the dollar position, and BaKoMa's cmti10 still calls it "dollar".
_MISNAMED_GLYPHS = {"cmti10.ttf": "$"}

# The Adobe Glyph List gives these names to both a Greek letter and a math sign of the same shape;
# fontTools reads them as the sign, fonts use them for the letter too.
_AGL_GREEK_ALIASES = {"Delta": "\u0394", "Omega": "\u03a9", "mu": "\u03bc"}

_MIN_FONTS_PER_CLASS = 2


def _font_dir() -> str:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the glyph pool renders matplotlib's fonts: pip install matplotlib") from err
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    folder = _font_dir()
    paths = tuple(os.path.join(folder, name) for name in _FONT_FILES)
    present = tuple(p for p in paths if os.path.isfile(p))
    if not present:  # pragma: no cover - a broken matplotlib install
        raise FileNotFoundError(f"none of matplotlib's fonts were found in {folder}")
    return present


def glyph_fonts() -> list[str]:
    """Paths of the matplotlib-shipped TTF fonts the pool is rendered from."""
    return list(_fonts())


def _covered_chars(path: str, wanted: str) -> frozenset[str]:
    """The characters of ``wanted`` the font really draws: in its cmap *and* under a glyph that means them.

    Matplotlib's Computer Modern fonts (BaKoMa) put TeX's own encoding behind a Unicode-looking cmap:
    ``<`` draws an inverted exclamation mark, ``\\`` a curly quote. The glyph's name, read through the
    Adobe Glyph List, catches those; names that mean nothing to the list are trusted to the cmap.
    """
    from fontTools import agl
    from fontTools.ttLib import TTFont

    font = TTFont(path, lazy=True)
    try:
        cmap = font.getBestCmap() or {}
    finally:
        font.close()
    covered = set()
    misnamed = _MISNAMED_GLYPHS.get(os.path.basename(path), "")
    for char in wanted:
        if char in misnamed:
            continue
        glyph_name = cmap.get(ord(char))
        if glyph_name is None or glyph_name == ".notdef":
            continue
        meaning = agl.toUnicode(glyph_name)
        if not meaning or char in (meaning, _AGL_GREEK_ALIASES.get(glyph_name)):
            covered.add(char)
    return frozenset(covered)


@functools.lru_cache(maxsize=1)
def _coverage() -> dict[str, tuple[str, ...]]:
    wanted = "".join(GLYPH_ALPHABETS.values())
    covered = {path: _covered_chars(path, wanted) for path in _fonts()}
    table: dict[str, tuple[str, ...]] = {}
    for chars in GLYPH_ALPHABETS.values():
        for char in chars:
            fonts = tuple(p for p in _fonts() if char in covered[p])
            if char not in table and len(fonts) >= _MIN_FONTS_PER_CLASS:
                table[char] = fonts
    return table


def glyph_coverage() -> dict[str, list[str]]:
    """Class character -> font paths that draw it, in label order (classes with < 2 fonts dropped)."""
    return {char: list(fonts) for char, fonts in _coverage().items()}


@functools.lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    return tuple(_coverage())


def glyph_class_names() -> list[str]:
    """The class characters in label order (the ``label`` ``ClassLabel`` names of the pool)."""
    return list(_class_names())


def _check_range(name: str, value, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a (min, max) pair with min <= max, got {value!r}")
    if lo < low or hi > high:
        raise ValueError(f"{name} must lie within [{low}, {high}], got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class GlyphPoolConfig:
    """What to render and how widely to vary it.

    Lengths are in pixels of the output image (``image_size``) or fractions of its side, so the look
    does not change with ``supersample``. The defaults span the look of the upscaled 8x8 digits: the
    glyph fills most of the frame, strokes from hairline-crisp to thick and soft.

    * ``scale``: capital height (the font's "H") as a fraction of the frame; lower case and symbols
      keep their natural size relative to it. Glyphs that would overflow are shrunk to fit.
    * ``rotation``: maximum rotation in degrees, either way.
    * ``shift``: maximum offset of the glyph's centre from the frame's centre, as a fraction of the
      side, each axis (clipped so a glyph that fits stays inside).
    * ``stroke_width``: extra outline drawn around the glyph (thickens strokes by twice this).
    * ``blur_radius``: Gaussian blur radius applied to the final image.
    * ``supersample``: render at this multiple of ``image_size``, then box-downsample (smooth edges).
    """

    num_images: int
    image_size: int = 32
    seed: int = 0
    scale: tuple[float, float] = (0.65, 1.0)
    rotation: float = 20.0
    shift: float = 0.06
    stroke_width: tuple[float, float] = (0.0, 2.0)
    blur_radius: tuple[float, float] = (0.0, 2.0)
    supersample: int = 4

    def __post_init__(self):
        def integer(name: str, value, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        integer("num_images", self.num_images, 1)
        integer("image_size", self.image_size, 8)
        integer("seed", self.seed, 0)
        integer("supersample", self.supersample, 1)
        if self.supersample > 8:
            raise ValueError(f"supersample must be at most 8, got {self.supersample!r}")
        for name, low, high in (("rotation", 0.0, 180.0), ("shift", 0.0, 0.5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ValueError(f"{name} must be a number within [{low}, {high}], got {value!r}")
        object.__setattr__(self, "scale", _check_range("scale", self.scale, 0.05, 1.0))
        object.__setattr__(
            self, "stroke_width", _check_range("stroke_width", self.stroke_width, 0.0, self.image_size / 4)
        )
        object.__setattr__(
            self, "blur_radius", _check_range("blur_radius", self.blur_radius, 0.0, self.image_size / 4)
        )


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # A face costs ~0.07 ms to open but ~0.2 MB to keep, and the pool uses ~1,200 (font, size) pairs:
    # a small cache keeps memory flat at a few percent of the speed.
    # BASIC layout: one glyph needs no shaping, and it gives the same pixels with or without libraqm.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@functools.cache
def _cap_height_per_px(path: str) -> float:
    """Height of the font's "H" per pixel of font size: turns a target cap height into a font size."""
    _, top, _, bottom = _font(path, 200).getbbox("H")
    return (bottom - top) / 200


def render_glyph(char: str, font_path: str, rng: np.random.Generator, config: GlyphPoolConfig) -> Image.Image:
    """One augmented render of ``char`` in ``font_path``: an RGB, white-on-black, square image.

    Draws exactly six uniform numbers from ``rng`` (scale, rotation, x shift, y shift, stroke, blur),
    in that order, whatever their values, so a caller's later draws stay reproducible.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"char must be a single character, got {char!r}")
    scale = rng.uniform(*config.scale)
    angle = rng.uniform(-config.rotation, config.rotation)
    shift_x, shift_y = rng.uniform(-config.shift, config.shift, size=2)
    stroke = rng.uniform(*config.stroke_width)
    blur = rng.uniform(*config.blur_radius)

    ss = config.supersample
    side = config.image_size * ss
    font = _font(font_path, max(4, round(scale * side / _cap_height_per_px(font_path))))
    stroke_px = round(stroke * ss)

    # Draw the glyph on a canvas just big enough for it, rotate it, then crop to the ink.
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke_px)
    pad = 2
    glyph = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(glyph).text(
        (pad - left, pad - top), char, fill=255, font=font, stroke_width=stroke_px, stroke_fill=255
    )
    if angle:
        # Nearest is enough (and ~5x faster): the box downsampling below antialiases the edges.
        glyph = glyph.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    box = glyph.getbbox()
    frame = Image.new("L", (side, side), 0)
    if box is not None:
        glyph = glyph.crop(box)
        width, height = glyph.size
        if width > side or height > side:
            fit = side / max(width, height)
            width, height = max(1, int(width * fit)), max(1, int(height * fit))
            glyph = glyph.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)

        def place(size: int, shift: float) -> int:
            start = round((side - size) / 2 + shift * side)
            return min(max(start, 0), side - size)

        frame.paste(glyph, (place(width, shift_x), place(height, shift_y)))
    if ss > 1:
        frame = frame.reduce(ss)
    if blur > 0:
        frame = frame.filter(ImageFilter.GaussianBlur(blur))
    return frame.convert("RGB")


def glyph_pool_example(index: int, config: GlyphPoolConfig) -> dict:
    """Row ``index`` of the pool made from ``config``: ``image`` (PIL), ``char``, ``label``, ``font``.

    Depends only on ``(config, index)``: class uniform over classes, font uniform over the fonts
    that draw it, then the render's augmentation, all from ``default_rng([seed, index])``.
    """
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    coverage = _coverage()
    names = _class_names()
    rng = np.random.default_rng([config.seed, int(index)])
    label = int(rng.integers(len(names)))
    char = names[label]
    fonts = coverage[char]
    font_path = fonts[int(rng.integers(len(fonts)))]
    image = render_glyph(char, font_path, rng, config)
    return {"image": image, "char": char, "label": label, "font": os.path.basename(font_path)}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_glyph_pool(config: GlyphPoolConfig, indices: Sequence[int] | None = None):
    """The pool as a ``datasets.Dataset`` with ``image``, ``char``, ``label`` (``ClassLabel``) and ``font``.

    ``indices`` regenerates only those rows (default: all ``range(config.num_images)``); row ``i`` is
    identical whichever slice it is made in, so a large pool can be built in parallel pieces.
    """
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = range(config.num_images) if indices is None else list(indices)
    if indices is not None:
        for index in rows:
            if isinstance(index, bool) or not isinstance(index, int | np.integer):
                raise ValueError(f"indices must be integers, got {index!r}")
            if not 0 <= index < config.num_images:
                raise ValueError(f"index {index} is outside the pool of {config.num_images} images")
    columns: dict[str, list] = {"image": [], "char": [], "label": [], "font": []}
    for index in rows:
        example = glyph_pool_example(int(index), config)
        columns["image"].append({"bytes": _png(example["image"]), "path": None})
        for key in ("char", "label", "font"):
            columns[key].append(example[key])
    features = Features(
        {
            "image": ImageFeature(),
            "char": Value("string"),
            "label": ClassLabel(names=glyph_class_names()),
            "font": Value("string"),
        }
    )
    return Dataset.from_dict(columns, features=features)
