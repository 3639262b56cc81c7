"""The one image-decoding path: every odd file either becomes an RGB image or raises ImageDecodeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import png_header_claiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_task_distill.data.images import MAX_ASPECT_RATIO, ImageDecodeError, load_rgb_image

FUZZ = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _encoded(fmt: str, mode: str = "RGB", size=(12, 9), **save) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


SAMPLES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


def _decodes_or_refuses(data: bytes) -> None:
    try:
        image = load_rgb_image({"bytes": data, "path": None})
    except ImageDecodeError:
        return
    assert image.mode == "RGB" and min(image.size) >= 1
    np.asarray(image)  # the pixels are really there


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_the_documented_error(data):
    _decodes_or_refuses(data)


@FUZZ
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), max_size=8),
)
def test_real_image_files_cut_short_or_corrupted_decode_or_raise_the_documented_error(fmt, cut, flips):
    """Valid headers get the decoders past the magic bytes, where the crashes hide."""
    data = bytearray(SAMPLES[fmt][: max(1, cut)])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _decodes_or_refuses(bytes(data))


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"bytes": b"", "path": None}, "cannot decode image"),
        ({"bytes": b"<html>404 not found</html>", "path": None}, "cannot identify image file"),
        ({"bytes": SAMPLES["JPEG"][: len(SAMPLES["JPEG"]) // 2], "path": None}, "(?i)truncated"),
        ({"bytes": SAMPLES["PNG"][:60], "path": None}, "cannot decode image"),
        ({"bytes": png_header_claiming(60_000, 60_000), "path": None}, "above the 89,478,485-pixel limit"),
        ({"bytes": png_header_claiming(10_000, 10_000), "path": None}, "100,000,000 pixels, above the"),
        ({"bytes": _encoded("PNG", size=(1, 150)), "path": None}, "aspect ratio above 100"),
        ({"bytes": None, "path": None}, "neither bytes nor a path"),
        (None, "image cell is empty"),
    ],
    ids=[
        "zero-bytes",
        "html",
        "truncated-jpeg",
        "truncated-png",
        "bomb",
        "bomb-below-pil-limit",
        "sliver",
        "no-bytes-no-path",
        "none",
    ],
)
def test_bad_images_raise_one_clear_error(cell, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_rgb_image(cell)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="gone.png"):
        load_rgb_image(str(tmp_path / "gone.png"))


def test_a_cell_that_cannot_hold_an_image_is_a_type_error():
    with pytest.raises(TypeError, match="type int"):
        load_rgb_image(7)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("1", "BMP"),
    ],
)
def test_every_mode_becomes_eight_bit_rgb_of_the_same_size(mode, fmt):
    image = load_rgb_image({"bytes": _encoded(fmt, mode=mode, size=(12, 9)), "path": None})
    assert image.mode == "RGB" and image.size == (12, 9)


def test_exif_rotation_is_applied():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (9, 12, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert load_rgb_image(buffer.getvalue()).size == (9, 12)  # portrait, as a viewer shows it


def test_limits_are_at_the_documented_values():
    assert MAX_ASPECT_RATIO == 100.0
    assert load_rgb_image({"bytes": _encoded("PNG", size=(1, 100)), "path": None}).size == (1, 100)


def test_a_bad_image_in_the_labelled_set_is_an_error_naming_its_row_and_file(tmp_path, colour_splits):
    from datasets import Image as ImageFeature
    from datasets import concatenate_datasets

    from hf_task_distill import TeacherFinetuner, TeacherFinetuningArguments
    from hf_task_distill.data import TargetTask
    from hf_task_distill.data.validation import check_images_decode

    broken = tmp_path / "scan_0042.png"
    broken.write_bytes(_encoded("PNG")[:40])
    train = colour_splits["train"].select(range(5)).cast_column("image", ImageFeature(decode=False))
    bad_row = train.select([0]).map(lambda _: {"image": {"bytes": None, "path": str(broken)}})
    train = concatenate_datasets([train, bad_row.cast(train.features)])
    with pytest.raises(
        ImageDecodeError, match=r"training split: image in row 5 \(.*scan_0042.png\) is unusable"
    ):
        check_images_decode(train, "image", where="training split")

    task = TargetTask(
        name="colours", splits={"train": train, "test": train}, label_names=["a", "b", "c", "d"]
    )
    args = TeacherFinetuningArguments(
        output_dir=str(tmp_path / "out"), strategy="full", use_cpu=True, report_to="none"
    )
    finetuner = TeacherFinetuner("unused-because-the-check-comes-first", task, args)
    with pytest.raises(
        ImageDecodeError, match=r"colours (training|validation) split: image in row \d+ \(.*scan_0042.png\)"
    ):
        finetuner.train()
