"""An offline segmentation world: printed characters on textured backgrounds, with per-pixel masks.

The segmentation counterpart of the glyph "web" (:mod:`hf_task_distill.demo.glyphs`), for the "does it
transfer" experiment: a teacher built on the shipped mini-VFM is finetuned on a small label budget of
masks, distilled into a student on a transfer set drawn from an unlabelled pool, and compared with the
student trained on the labels alone.

* **The labelled task** (:func:`segmentation_world_task`): square RGB images (64 px by default) with one
  to three characters of the task's classes composited onto a random texture (gradient, stripes,
  blobs or checkerboard, plus pixel noise); the mask holds a class id per pixel: 0 for background,
  1..N for the classes, and 255 (:data:`IGNORE_INDEX`) on a thin band around each object's outline,
  where the anti-aliased edge is neither one nor the other. A class is a character (or a group of
  characters), so a model must tell shapes apart, not only find ink.
* **The pool** (:func:`segmentation_world_pool`): unlabelled images, a configured share of them from the
  task's generator (fresh images, never those of the labelled splits) and the rest generic: textures
  alone, characters of other classes in the same compositing, or the glyph pool's white-on-black
  print. No generic image holds a task class, so a transfer set retrieved by similarity to the
  labelled images has something to find that a random pool sample mostly misses.

Colours are drawn so every object stands out from its background: by default each image is dark
(channels in [0, 100]) with light objects ([155, 255]), the polarity of the glyph "web" the mini-VFM
was pretrained on; ``SegmentationWorldConfig(polarity=...)`` gives the reverse, or either per image.
A pixel the mask calls an object differs from the bare background by at least 27 levels in every
channel.

Every image is a pure function of ``(seed, split, index)`` (``numpy.random.default_rng``), so any slice
can be regenerated alone and the same arguments give byte-identical PNGs (with the same Pillow and
FreeType build). Needs matplotlib, for the fonts (see :mod:`hf_task_distill.demo.glyphs`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .glyphs import GlyphPoolConfig, _check_range, _coverage, _png, render_glyph

__all__ = [
    "BACKGROUND",
    "DEFAULT_SEGMENTATION_CLASSES",
    "IGNORE_INDEX",
    "POLARITIES",
    "POOL_KINDS",
    "SegmentationWorldConfig",
    "segmentation_world_example",
    "segmentation_world_pool",
    "segmentation_world_task",
]

#: Name of class 0 in the label list.
BACKGROUND = "background"
#: Mask value of the boundary band: the pixels a loss and the metrics leave out.
IGNORE_INDEX = 255
#: The task's classes by default: digits and capitals with distinct shapes, all known to the mini-VFM.
DEFAULT_SEGMENTATION_CLASSES = ("2", "3", "7", "A", "K")
#: How a task image's characters stand out: light on dark, dark on light, or either per image.
POLARITIES = ("light-on-dark", "dark-on-light", "either")
#: What a pool image can be: from the task's generator, or one of the three generic kinds.
POOL_KINDS = ("task", "texture", "other_glyphs", "printed")

# Each split draws from its own random stream, so the pool's task images are never labelled images.
_STREAMS = {"train": 1, "validation": 2, "test": 3, "pool": 4}
_POOL_LAYOUT_STREAM = 5
_DARK, _LIGHT = (0.0, 100.0), (155.0, 255.0)
_GLYPH_SCALE = (0.75, 0.95)  # cap height as a fraction of the object's square frame


def _integer(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an integer <= {high}, got {value!r}")


def _check_classes(classes) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, tuple | list) or not classes:
        raise ValueError(f"classes must be a non-empty tuple of strings, got {classes!r}")
    if len(classes) >= IGNORE_INDEX:
        raise ValueError(f"classes must number fewer than {IGNORE_INDEX}, got {len(classes)}")
    known, seen = _coverage(), set()
    for name in classes:
        if not isinstance(name, str) or not name:
            raise ValueError(f"classes must hold non-empty strings of characters, got {name!r}")
        for char in name:
            if char not in known:
                raise ValueError(f"classes: {char!r} (in {name!r}) is not a glyph class the fonts draw")
            if char in seen:
                raise ValueError(f"classes: {char!r} is in more than one class")
            seen.add(char)
    return tuple(classes)


@dataclass(frozen=True)
class SegmentationWorldConfig:
    """How the segmentation world's images look (sizes of the splits and the pool are arguments of
    :func:`segmentation_world_task` and :func:`segmentation_world_pool`).

    Args:
        classes: the task's foreground classes, in label order (mask ids 1..N); each is a string of
            one or more characters of :func:`~hf_task_distill.demo.glyphs.glyph_class_names`, and an
            object of the class shows one of them. No character may be in two classes.
        image_size: side of the square images and masks, in pixels.
        objects_per_image: (min, max) number of objects per task image, inclusive.
        object_size: (min, max) side of an object's square frame, as a fraction of ``image_size``;
            the character's capital height is 75-95% of its frame.
        rotation: maximum rotation of a character in degrees, either way.
        stroke_width: (min, max) extra outline around a character's strokes, in pixels.
        blur_radius: (min, max) Gaussian blur radius of a character's ink, in pixels.
        boundary_width: width in pixels of the :data:`IGNORE_INDEX` band laid outside each object's
            outline (and between objects of different classes); 0 leaves the masks without one.
        supersample: characters are drawn at this multiple of their size, then box-downsampled.
        polarity: ``"light-on-dark"`` (light characters on a dark texture: the look of the glyph
            "web" the mini-VFM was pretrained on, so the VFM knows the task's domain),
            ``"dark-on-light"`` (the reverse, which the mini-VFM has not seen) or ``"either"`` (a
            coin flip per image).

    Raises:
        ValueError: a field out of range, naming the field.
    """

    classes: tuple[str, ...] = DEFAULT_SEGMENTATION_CLASSES
    image_size: int = 64
    objects_per_image: tuple[int, int] = (1, 3)
    object_size: tuple[float, float] = (0.4, 0.65)
    rotation: float = 20.0
    stroke_width: tuple[float, float] = (0.0, 1.5)
    blur_radius: tuple[float, float] = (0.0, 0.6)
    boundary_width: int = 1
    supersample: int = 2
    polarity: str = "light-on-dark"

    def __post_init__(self):
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}")
        object.__setattr__(self, "classes", _check_classes(self.classes))
        _integer("image_size", self.image_size, 16, 1024)
        _integer("boundary_width", self.boundary_width, 0, 8)
        _integer("supersample", self.supersample, 1, 8)
        count = self.objects_per_image
        if not isinstance(count, tuple | list) or len(count) != 2:
            raise ValueError(f"objects_per_image must be a (min, max) pair of integers, got {count!r}")
        _integer("objects_per_image", count[0], 1, 8)
        _integer("objects_per_image", count[1], int(count[0]), 8)
        object.__setattr__(self, "objects_per_image", (int(count[0]), int(count[1])))
        value = self.rotation
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 180:
            raise ValueError(f"rotation must be a number within [0, 180], got {value!r}")
        size = _check_range("object_size", self.object_size, 0.1, 1.0)
        object.__setattr__(self, "object_size", size)
        smallest = round(size[0] * self.image_size)
        if smallest < 8:
            raise ValueError(f"object_size: the smallest object is {smallest} px, at least 8 are needed")
        for name in ("stroke_width", "blur_radius"):
            object.__setattr__(self, name, _check_range(name, getattr(self, name), 0.0, smallest / 4))

    @property
    def label_names(self) -> list[str]:
        """The mask's class names by id: ``"background"`` first, then :attr:`classes`."""
        return [BACKGROUND, *self.classes]


@functools.lru_cache(maxsize=64)
def _glyph_config(side: int, config: SegmentationWorldConfig) -> GlyphPoolConfig:
    return GlyphPoolConfig(
        num_images=1,
        image_size=side,
        scale=_GLYPH_SCALE,
        rotation=config.rotation,
        shift=0.0,
        stroke_width=config.stroke_width,
        blur_radius=config.blur_radius,
        supersample=config.supersample,
    )


@functools.lru_cache(maxsize=8)
def _other_chars(classes: tuple[str, ...]) -> tuple[str, ...]:
    """Glyph classes of none of the task's classes: what generic pool images show."""
    taken = set("".join(classes))
    return tuple(c for c in _coverage() if c not in taken)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _texture(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """A random texture between two colours of ``[low, high]``: ``(size, size, 3)`` float32 levels."""
    kind = int(rng.integers(4))
    first, second = rng.uniform(low, high, size=(2, 3)).astype(np.float32)
    angle, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
    frequency, noise = rng.uniform(2, 8), rng.uniform(0, 12)
    yy, xx = _grid(size)
    along = math.cos(angle) * xx + math.sin(angle) * yy
    if kind == 0:  # a linear gradient
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * along + phase)
    elif kind == 2:  # soft blobs: a coarse random grid, upsampled
        coarse = rng.random((int(frequency), int(frequency)), dtype=np.float32)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    else:  # a checkerboard
        across = -math.sin(angle) * xx + math.cos(angle) * yy
        t = ((np.floor(along * frequency) + np.floor(across * frequency)) % 2).astype(np.float32)
    image = first + (second - first) * t[:, :, None]
    image += rng.normal(0, noise, size=image.shape).astype(np.float32)
    return np.clip(image, low, high)


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` with :data:`IGNORE_INDEX` on every pixel within ``width`` px (8-connected) of an object
    of another class: outside each outline, and on both sides where two classes meet."""
    if width == 0:
        return mask
    band = np.zeros(mask.shape, dtype=bool)
    grow = ImageFilter.MaxFilter(2 * width + 1)
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        near = np.asarray(Image.fromarray((mask == class_id).astype(np.uint8) * 255).filter(grow)) > 0
        band |= near & (mask != class_id)
    out = mask.copy()
    out[band] = IGNORE_INDEX
    return out


def _compose(
    rng: np.random.Generator, config: SegmentationWorldConfig, chars: tuple[str, ...], top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Objects of ``chars`` (one string per class id 1..N) on a texture, the one of class ``top`` last.

    Returns the image and its bare background (``(size, size, 3)`` uint8), the mask before the
    ignore band (``(size, size)`` uint8 class ids) and the objects in drawing order.
    """
    size = config.image_size
    coin = rng.random()  # drawn whatever the polarity, so the rest of the image is the same
    light_on_dark = {"light-on-dark": True, "dark-on-light": False}.get(config.polarity, coin < 0.5)
    ground, ink = (_DARK, _LIGHT) if light_on_dark else (_LIGHT, _DARK)
    background = _texture(rng, size, *ground)
    image, mask = background.copy(), np.zeros((size, size), dtype=np.uint8)
    count = int(rng.integers(config.objects_per_image[0], config.objects_per_image[1] + 1))
    class_ids = [int(c) for c in rng.integers(1, len(chars) + 1, size=count - 1)] + [top]
    coverage = _coverage()
    objects = []
    for class_id in class_ids:
        char = chars[class_id - 1][int(rng.integers(len(chars[class_id - 1])))]
        fonts = coverage[char]
        font = fonts[int(rng.integers(len(fonts)))]
        side = min(size, max(8, round(rng.uniform(*config.object_size) * size)))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        colour = _texture(rng, side, *ink)  # the object's own fill: a texture of the other polarity
        glyph = render_glyph(char, font, rng, _glyph_config(side, config))
        alpha = np.asarray(glyph, dtype=np.float32)[:, :, :1] / 255.0
        region = image[y : y + side, x : x + side]
        region[:] = region * (1 - alpha) + colour * alpha
        mask[y : y + side, x : x + side][alpha[:, :, 0] >= 0.5] = class_id
        objects.append({"class_id": class_id, "char": char, "box": (x, y, x + side, y + side)})
    as_uint8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return as_uint8(image), as_uint8(background), mask, objects


def segmentation_world_example(
    index: int, split: str = "train", seed: int = 0, config: SegmentationWorldConfig | None = None
) -> dict:
    """One image of the task's generator with its mask, its bare background and its objects.

    Depends only on ``(seed, split, index, config)``: each split is its own random stream, and the
    class of the top object cycles through the classes with ``index``, so any ``N`` consecutive
    indices show every class.

    Args:
        index: row of the split (a non-negative integer).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"pool"`` (the pool's task images).
        seed: the world's seed (a non-negative integer).
        config: the look; default :class:`SegmentationWorldConfig`.

    Returns:
        A dict with ``image`` (PIL RGB, ``image_size`` square), ``mask`` (PIL mode ``"L"``, same size:
        class ids 0..N and :data:`IGNORE_INDEX` on the boundary band), ``background`` (PIL RGB, the
        texture before the objects were drawn) and ``objects`` (drawing order, the last on top: dicts
        with ``class_id``, ``char`` and ``box``, the object's frame ``(left, top, right, bottom)`` in
        pixels).

    Raises:
        ValueError: an unknown split, or an index or seed that is not a non-negative integer.
    """
    config = config or SegmentationWorldConfig()
    if split not in _STREAMS:
        raise ValueError(f"split must be one of {sorted(_STREAMS)}, got {split!r}")
    _integer("index", index, 0)
    _integer("seed", seed, 0)
    rng = np.random.default_rng([seed, _STREAMS[split], int(index)])
    top = int(index) % len(config.classes) + 1
    image, background, mask, objects = _compose(rng, config, config.classes, top)
    return {
        "image": Image.fromarray(image),
        "mask": Image.fromarray(_ignore_band(mask, config.boundary_width)),
        "background": Image.fromarray(background),
        "objects": objects,
    }


def _generic_image(index: int, seed: int, config: SegmentationWorldConfig) -> tuple[str, Image.Image]:
    """Pool row ``index`` when it is generic: its kind and image (never a task class in it)."""
    rng = np.random.default_rng([seed, _STREAMS["pool"], int(index)])
    kind = POOL_KINDS[1 + int(rng.integers(3))]
    others = _other_chars(config.classes)
    if kind == "texture":  # any colours: no polarity rule without objects
        image = np.round(_texture(rng, config.image_size, 0.0, 255.0)).astype(np.uint8)
        return kind, Image.fromarray(image)
    if kind == "other_glyphs":
        image, _, _, _ = _compose(rng, config, (others,), 1)
        return kind, Image.fromarray(image)
    char = others[int(rng.integers(len(others)))]
    fonts = _coverage()[char]
    font = fonts[int(rng.integers(len(fonts)))]
    printed = GlyphPoolConfig(num_images=1, image_size=config.image_size, supersample=config.supersample)
    return kind, render_glyph(char, font, rng, printed)  # the glyph pool's look, at this size


def _pool_kinds(size: int, in_domain_share: float, seed: int) -> np.ndarray:
    """True at the pool rows drawn from the task's generator: exactly ``round(size * share)`` of them."""
    in_domain = np.zeros(size, dtype=bool)
    order = np.random.default_rng([seed, _POOL_LAYOUT_STREAM, size]).permutation(size)
    in_domain[order[: round(size * in_domain_share)]] = True
    return in_domain


def segmentation_world_task(
    seed: int = 0,
    label_budget: int = 32,
    validation_images: int = 100,
    test_images: int = 200,
    config: SegmentationWorldConfig | None = None,
):
    """The labelled segmentation task: a few labelled images, and held-out ones to evaluate on.

    Each split is its own random stream of :func:`segmentation_world_example`, so no image is in two
    splits, nor in :func:`segmentation_world_pool` of the same seed; every split of at least N
    images shows every class.

    Args:
        seed: the world's seed (a non-negative integer).
        label_budget: number of labelled ``train`` images (the masks a teacher is finetuned on).
        validation_images: number of ``validation`` images.
        test_images: number of ``test`` images.
        config: the look; default :class:`SegmentationWorldConfig` (64 px, 5 classes).

    Returns:
        ``(splits, label_names)``: a ``datasets.DatasetDict`` with ``train``, ``validation`` and
        ``test``, each with columns ``image`` (RGB) and ``mask`` (mode ``"L"``, same size; class ids
        0..N, :data:`IGNORE_INDEX` on the boundary band), both ``datasets.Image()``; and the class
        names by mask id, ``"background"`` first.

    Raises:
        ValueError: a size below 1 or a bad seed, naming the argument.
    """
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    config = config or SegmentationWorldConfig()
    _integer("seed", seed, 0)
    _integer("label_budget", label_budget, 1)
    _integer("validation_images", validation_images, 1)
    _integer("test_images", test_images, 1)
    sizes = {"train": label_budget, "validation": validation_images, "test": test_images}
    features = Features({"image": ImageFeature(), "mask": ImageFeature()})
    splits = {}
    for split, count in sizes.items():
        columns: dict[str, list] = {"image": [], "mask": []}
        for index in range(count):
            example = segmentation_world_example(index, split, seed, config)
            for column in columns:
                columns[column].append({"bytes": _png(example[column]), "path": None})
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits), config.label_names


def segmentation_world_pool(
    size: int = 2000,
    in_domain_share: float = 0.1,
    seed: int = 0,
    config: SegmentationWorldConfig | None = None,
    with_kind: bool = False,
):
    """The unlabelled pool a transfer set is drawn from: task-domain images among generic ones.

    Exactly ``round(size * in_domain_share)`` rows, at seeded random positions, come from the task's
    generator (fresh images, masks dropped); the others are generic, a third of each kind on
    average: ``"texture"`` (a background alone, any colours), ``"other_glyphs"`` (the task's
    compositing with characters of no task class) and ``"printed"`` (one white-on-black character
    of no task class, the look the mini-VFM was pretrained on).

    Args:
        size: number of pool images.
        in_domain_share: fraction of the pool from the task's generator, in [0, 1].
        seed: the world's seed (a non-negative integer); use the task's seed.
        config: the look; default :class:`SegmentationWorldConfig`. Use the task's.
        with_kind: also return a ``kind`` column (one of :data:`POOL_KINDS`), to measure how much
            of a transfer set is task domain.

    Returns:
        A ``datasets.Dataset`` with column ``image`` (RGB, ``image_size`` square,
        ``datasets.Image()``), and ``kind`` when asked; no masks.

    Raises:
        ValueError: a size below 1, a share outside [0, 1] or a bad seed, naming the argument.
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    config = config or SegmentationWorldConfig()
    _integer("size", size, 1)
    _integer("seed", seed, 0)
    share = in_domain_share
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ValueError(f"in_domain_share must be a number within [0, 1], got {share!r}")
    images, kinds = [], []
    for index, in_domain in enumerate(_pool_kinds(size, share, seed)):
        if in_domain:
            kind, image = "task", segmentation_world_example(index, "pool", seed, config)["image"]
        else:
            kind, image = _generic_image(index, seed, config)
        images.append({"bytes": _png(image), "path": None})
        kinds.append(kind)
    if not with_kind:
        return Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))
    features = Features({"image": ImageFeature(), "kind": Value("string")})
    return Dataset.from_dict({"image": images, "kind": kinds}, features=features)
