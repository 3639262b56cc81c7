"""The offline "web" pool: printed glyphs from matplotlib's fonts, in the digits task's frame."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from datasets import Image as ImageFeature
from PIL import Image

pytest.importorskip("matplotlib")

from hf_task_distill.demo.glyphs import (  # noqa: E402
    GLYPH_ALPHABETS,
    GlyphPoolConfig,
    glyph_class_names,
    glyph_coverage,
    glyph_fonts,
    glyph_pool_example,
    make_glyph_pool,
    render_glyph,
)

# A still, crisp, centred render: what the font draws, nothing else.
PLAIN = GlyphPoolConfig(
    num_images=1, scale=(0.7, 0.7), rotation=0.0, shift=0.0, stroke_width=(0, 0), blur_radius=(0, 0)
)


def plain(char: str, font: str, config: GlyphPoolConfig = PLAIN) -> np.ndarray:
    return np.asarray(render_glyph(char, font, np.random.default_rng(0), config))[:, :, 0]


@pytest.fixture(scope="module")
def pool():
    return make_glyph_pool(GlyphPoolConfig(num_images=240, seed=3))


def png_bytes(dataset) -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column("image", ImageFeature(decode=False))["image"]]


# ---- classes and fonts --------------------------------------------------------------------------


def test_a_few_hundred_classes_in_alphabet_order():
    names = glyph_class_names()
    assert 200 <= len(names) <= 400
    assert len(set(names)) == len(names) and all(len(c) == 1 for c in names)
    listed = "".join(GLYPH_ALPHABETS.values())
    assert [c for c in listed if c in set(names)] == names
    assert names[:10] == list("0123456789")  # printed digits are classes, first
    for alphabet in ("latin_upper", "latin_lower", "greek_lower", "cyrillic_lower", "symbols"):
        assert sum(c in names for c in GLYPH_ALPHABETS[alphabet]) >= 10, alphabet


def test_fonts_ship_with_matplotlib_and_every_class_has_two():
    import matplotlib

    fonts = glyph_fonts()
    assert len(fonts) >= 10 and all(os.path.isfile(f) for f in fonts)
    assert all(os.path.dirname(f) == os.path.join(matplotlib.get_data_path(), "fonts", "ttf") for f in fonts)
    names = {os.path.basename(f) for f in fonts}
    assert {"DejaVuSans.ttf", "DejaVuSerif.ttf", "STIXGeneral.ttf", "cmr10.ttf", "cmtt10.ttf"} <= names
    assert "LastResortHE-Regular.ttf" not in names  # a box for every code point
    coverage = glyph_coverage()
    assert list(coverage) == glyph_class_names()
    assert all(len(set(fs)) == len(fs) >= 2 and set(fs) <= set(fonts) for fs in coverage.values())


def test_computer_modern_keeps_only_characters_it_really_draws():
    coverage = glyph_coverage()
    by_name = {c: {os.path.basename(f) for f in fs} for c, fs in coverage.items()}
    assert {"cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf"} <= by_name["7"] & by_name["g"]
    # TeX's text encoding: "<" is an inverted exclamation mark, "\\" a curly quote, "{" a dash ...
    for char in "<>\\{}~^":
        assert not by_name[char] & {"cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf"}, char
    assert "cmtt10.ttf" in by_name["<"]  # ... but the typewriter font has the ASCII ones
    assert "cmti10.ttf" not in by_name["$"]  # its "dollar" glyph is a pound sign
    assert {"DejaVuSans.ttf", "STIXGeneral.ttf"} <= by_name["\u03a9"]  # AGL's "Omega" is the letter too


def test_every_class_renders_ink_and_no_tofu_in_every_font_said_to_cover_it():
    fonts = glyph_fonts()
    notdef = {f: plain("\uffff", f) for f in fonts}  # the font's missing-glyph drawing
    small = GlyphPoolConfig(**{**PLAIN.__dict__, "supersample": 2})
    small_notdef = {f: plain("\uffff", f, small) for f in fonts}
    for char, covering in glyph_coverage().items():
        for font in covering:
            ink = plain(char, font, small)
            assert (ink > 128).sum() >= 4, (char, os.path.basename(font))
            assert not np.array_equal(ink, small_notdef[font]), (char, os.path.basename(font))
    # the check has teeth: a character a font lacks does come out as its notdef drawing
    cmr10 = next(f for f in fonts if f.endswith("cmr10.ttf"))
    assert "\u05d0" not in "".join(c for c, fs in glyph_coverage().items() if cmr10 in fs)
    assert np.array_equal(plain("\u05d0", cmr10), notdef[cmr10])
    dejavu = fonts[0]
    assert np.array_equal(plain("\u0e01", dejavu), notdef[dejavu]) and (notdef[dejavu] > 128).any()


# ---- the frame ------------------------------------------------------------------------------------


def test_pool_images_are_in_the_digits_frame(pool):
    images = np.stack([np.asarray(image) for image in pool["image"]])
    assert images.shape == (len(pool), 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    grey = images[..., 0].astype(np.float64)
    border = np.concatenate([grey[:, 0], grey[:, -1], grey[:, :, 0], grey[:, :, -1]], axis=1)
    assert border.mean() < 25  # black background, white ink
    assert (grey.max(axis=(1, 2)) > 100).all()
    yy, xx = np.mgrid[:32, :32]
    weight = grey / grey.sum(axis=(1, 2), keepdims=True)
    cy, cx = (weight * yy).sum(axis=(1, 2)), (weight * xx).sum(axis=(1, 2))
    assert abs(cy.mean() - 15.5) < 1.0 and abs(cx.mean() - 15.5) < 1.0
    assert (np.abs(cy - 15.5) < 8).all() and (np.abs(cx - 15.5) < 8).all()
    # about as much ink as an upscaled 8x8 digit (mean grey ~79 of 255 for load_digits_task)
    assert 40 < grey.mean() < 120


def test_other_sizes_and_supersampling():
    for size, ss in ((28, 1), (28, 3), (40, 2)):
        config = GlyphPoolConfig(num_images=3, image_size=size, supersample=ss)
        for i in range(3):
            image = glyph_pool_example(i, config)["image"]
            assert image.size == (size, size) and image.mode == "RGB"


def test_stroke_and_blur_change_the_look():
    font = glyph_fonts()[0]
    thin = plain("7", font)
    thick = plain("7", font, GlyphPoolConfig(**{**PLAIN.__dict__, "stroke_width": (2.0, 2.0)}))
    soft = plain("7", font, GlyphPoolConfig(**{**PLAIN.__dict__, "blur_radius": (2.0, 2.0)}))
    assert (thick > 128).sum() > 1.5 * (thin > 128).sum()
    grey = lambda a: ((a > 20) & (a < 235)).sum()  # noqa: E731
    assert grey(soft) > 2 * grey(thin) and soft.max() < 255


# ---- determinism and rows -------------------------------------------------------------------------


def test_same_config_gives_byte_identical_pngs_and_another_seed_differs(pool):
    again = make_glyph_pool(GlyphPoolConfig(num_images=240, seed=3))
    assert png_bytes(again) == png_bytes(pool)
    assert again["char"] == pool["char"] and again["font"] == pool["font"]
    other = make_glyph_pool(GlyphPoolConfig(num_images=240, seed=4))
    differing = sum(a != b for a, b in zip(png_bytes(other), png_bytes(pool), strict=True))
    assert differing > 200


def test_any_slice_regenerates_the_same_rows(pool):
    rows = [0, 7, 239, 100]
    part = make_glyph_pool(GlyphPoolConfig(num_images=240, seed=3), indices=rows)
    assert png_bytes(part) == [png_bytes(pool)[i] for i in rows]
    assert part["label"] == [pool["label"][i] for i in rows]
    with pytest.raises(ValueError, match="outside the pool"):
        make_glyph_pool(GlyphPoolConfig(num_images=240, seed=3), indices=[240])
    with pytest.raises(ValueError, match="integers"):
        make_glyph_pool(GlyphPoolConfig(num_images=240, seed=3), indices=[1.5])


def test_labels_chars_and_fonts_agree(pool):
    label_feature = pool.features["label"]
    assert label_feature.names == glyph_class_names()
    coverage = glyph_coverage()
    for char, label, font in zip(pool["char"], pool["label"], pool["font"], strict=True):
        assert label_feature.int2str(label) == char
        assert font in {os.path.basename(f) for f in coverage[char]}
    assert len(set(pool["label"])) > 120  # classes drawn uniformly: 240 draws over ~270 classes
    assert len(set(pool["font"])) >= 15


def test_render_glyph_draws_a_fixed_number_of_values():
    rng, reference = np.random.default_rng(5), np.random.default_rng(5)
    config = GlyphPoolConfig(num_images=1)
    render_glyph("a", glyph_fonts()[0], rng, config)
    reference.uniform(size=6)
    assert rng.uniform() == reference.uniform()
    with pytest.raises(ValueError, match="single character"):
        render_glyph("ab", glyph_fonts()[0], rng, config)
    png = io.BytesIO()
    render_glyph("a", glyph_fonts()[0], rng, config).save(png, format="PNG")
    assert Image.open(png).size == (32, 32)


# ---- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.0}, "num_images"),
        ({"image_size": 4}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"supersample": 0}, "supersample"),
        ({"supersample": 9}, "supersample"),
        ({"scale": (0.9, 0.5)}, "scale"),
        ({"scale": (0.5, 1.5)}, "scale"),
        ({"scale": 0.5}, "scale"),
        ({"rotation": -1}, "rotation"),
        ({"rotation": 200}, "rotation"),
        ({"shift": 0.6}, "shift"),
        ({"stroke_width": (-1, 1)}, "stroke_width"),
        ({"blur_radius": (0, float("nan"))}, "blur_radius"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GlyphPoolConfig(**{"num_images": 10, **kwargs})


def test_index_must_be_non_negative():
    with pytest.raises(ValueError, match="index"):
        glyph_pool_example(-1, GlyphPoolConfig(num_images=1))
