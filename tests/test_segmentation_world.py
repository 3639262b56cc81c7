"""The offline segmentation world: labelled masks aligned with what is drawn, and a pool whose share of
task-domain images is what was asked for."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Image as ImageFeature
from PIL import Image, ImageFilter

pytest.importorskip("matplotlib")

from hf_task_distill.demo.segmentation import (  # noqa: E402
    DEFAULT_SEGMENTATION_CLASSES,
    IGNORE_INDEX,
    POOL_KINDS,
    SegmentationWorldConfig,
    segmentation_world_example,
    segmentation_world_pool,
    segmentation_world_task,
)

N = len(DEFAULT_SEGMENTATION_CLASSES)


@pytest.fixture(scope="module")
def task():
    return segmentation_world_task(seed=3, label_budget=12, validation_images=8, test_images=20)


@pytest.fixture(scope="module")
def pool():
    return segmentation_world_pool(size=150, in_domain_share=0.2, seed=3, with_kind=True)


def png_bytes(dataset, column: str = "image") -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column(column, ImageFeature(decode=False))[column]]


def arrays(example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(example[k]) for k in ("image", "background", "mask"))


# ---- the labelled task --------------------------------------------------------------------------


def test_task_splits_sizes_columns_and_label_names(task):
    splits, names = task
    assert names == ["background", *DEFAULT_SEGMENTATION_CLASSES]
    assert {k: v.num_rows for k, v in splits.items()} == {"train": 12, "validation": 8, "test": 20}
    for split in splits.values():
        assert split.column_names == ["image", "mask"]
        assert isinstance(split.features["mask"], ImageFeature)
        row = split[0]
        assert row["image"].mode == "RGB" and row["mask"].mode == "L"
        assert row["image"].size == row["mask"].size == (64, 64)


def test_masks_hold_only_class_ids_and_the_ignore_index_and_every_class_occurs(task):
    splits, names = task
    for name, split in splits.items():
        values = set(np.unique(np.stack([np.asarray(m) for m in split["mask"]])).tolist())
        assert values <= set(range(len(names))) | {IGNORE_INDEX}, name
        assert set(range(1, len(names))) | {0, IGNORE_INDEX} <= values, name


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_images(task):
    splits, _ = task
    again, _ = segmentation_world_task(seed=3, label_budget=12, validation_images=8, test_images=20)
    for name in splits:
        for column in ("image", "mask"):
            assert png_bytes(again[name], column) == png_bytes(splits[name], column), (name, column)
    other, _ = segmentation_world_task(seed=4, label_budget=12, validation_images=1, test_images=1)
    assert not set(png_bytes(other["train"])) & set(png_bytes(splits["train"]))


def test_no_image_is_in_two_splits_or_in_the_pool(task, pool):
    splits, _ = task
    seen = [set(png_bytes(s)) for s in splits.values()] + [set(png_bytes(pool))]
    assert sum(len(s) for s in seen) == len(set().union(*seen))


def test_mask_is_where_the_objects_were_drawn():
    """Object pixels differ from the bare background in every channel (the polarity rule: at least
    half of a 55-level gap); background pixels are the background untouched, bar a soft edge: none
    is as far from it as an object pixel."""
    for index in range(12):
        image, background, mask = arrays(segmentation_world_example(index, "test", seed=1))
        diff = np.abs(image.astype(int) - background.astype(int)).min(axis=2)
        objects = (mask >= 1) & (mask <= N)
        assert objects.any()
        assert diff[objects].min() >= 26, index
        assert diff[mask == 0].max() < 26, index  # no background pixel looks like an object
        untouched = np.abs(image.astype(int) - background.astype(int)).max(axis=2) == 0
        assert untouched[mask == 0].mean() > 0.9, index


def test_polarity_sets_which_side_is_light_and_changes_nothing_else():
    """Default light-on-dark (the mini-VFM's look): every object pixel is brighter than the background
    under it; dark-on-light the reverse; "either" shows both. The objects, boxes and masks are the same
    whatever the polarity (the coin is drawn either way)."""

    def sides(polarity: str) -> list[bool]:
        config = SegmentationWorldConfig(polarity=polarity)
        light = []
        for index in range(10):
            example = segmentation_world_example(index, "test", seed=4, config=config)
            image, background, mask = arrays(example)
            objects = (mask >= 1) & (mask <= N)
            brighter = (image.astype(int) > background.astype(int)).all(axis=2)
            darker = (image.astype(int) < background.astype(int)).all(axis=2)
            assert brighter[objects].all() or darker[objects].all(), (polarity, index)
            light.append(bool(brighter[objects].all()))
            reference = segmentation_world_example(index, "test", seed=4)
            assert example["objects"] == reference["objects"]
            assert np.array_equal(mask, np.asarray(reference["mask"]))
        return light

    assert SegmentationWorldConfig().polarity == "light-on-dark"
    assert all(sides("light-on-dark"))
    assert not any(sides("dark-on-light"))
    assert 0 < sum(sides("either")) < 10


def test_the_top_object_is_of_the_cycled_class_and_shows_in_its_box():
    config = SegmentationWorldConfig()
    for index in range(2 * N):
        example = segmentation_world_example(index, "train", seed=2, config=config)
        top = example["objects"][-1]
        assert top["class_id"] == index % N + 1
        assert top["char"] in config.classes[top["class_id"] - 1]
        left, upper, right, lower = top["box"]
        mask = np.asarray(example["mask"])
        assert (mask[upper:lower, left:right] == top["class_id"]).sum() >= 20
        assert {o["class_id"] for o in example["objects"]} >= set(np.unique(mask).tolist()) - {
            0,
            IGNORE_INDEX,
        }


def test_the_ignore_band_lies_around_objects_and_follows_boundary_width():
    def band(width: int) -> tuple[np.ndarray, np.ndarray]:
        config = SegmentationWorldConfig(boundary_width=width)
        mask = np.asarray(segmentation_world_example(5, "validation", seed=0, config=config)["mask"])
        return mask, mask == IGNORE_INDEX

    plain, none = band(0)
    assert not none.any()
    one, ring = band(1)
    assert ring.any()
    objects = Image.fromarray(((plain >= 1) & (plain <= N)).astype(np.uint8) * 255)
    near = np.asarray(objects.filter(ImageFilter.MaxFilter(3))) > 0
    assert near[ring].all()  # every ignored pixel is within 1 px of an object
    assert (one[~ring] == plain[~ring]).all()  # the band only replaces, it moves nothing
    _, wide = band(2)
    assert wide.sum() > ring.sum() and (wide | ring == wide).all()


def test_class_groups_and_other_sizes():
    config = SegmentationWorldConfig(classes=["0123456789", "XYZ"], image_size=32, objects_per_image=(2, 2))
    splits, names = segmentation_world_task(label_budget=4, validation_images=1, test_images=1, config=config)
    assert names == ["background", "0123456789", "XYZ"]
    assert splits["train"][0]["image"].size == splits["train"][0]["mask"].size == (32, 32)
    example = segmentation_world_example(1, config=config)
    assert len(example["objects"]) == 2 and example["objects"][-1]["char"] in "XYZ"


# ---- the pool -----------------------------------------------------------------------------------


def test_pool_has_images_only_and_the_configured_in_domain_share(pool):
    assert pool.num_rows == 150
    kinds = pool["kind"]
    assert kinds.count("task") == 30
    assert set(kinds) <= set(POOL_KINDS) and set(POOL_KINDS[1:]) <= set(kinds)
    assert pool[0]["image"].size == (64, 64) and pool[0]["image"].mode == "RGB"
    plain = segmentation_world_pool(size=40, in_domain_share=0.25, seed=3)
    assert plain.column_names == ["image"]
    for share, expected in ((0.0, 0), (1.0, 40), (0.5, 20)):
        shares = segmentation_world_pool(size=40, in_domain_share=share, seed=3, with_kind=True)["kind"]
        assert shares.count("task") == expected, share


def test_pool_is_deterministic_and_its_task_rows_come_from_the_task_generator(pool):
    again = segmentation_world_pool(size=150, in_domain_share=0.2, seed=3, with_kind=True)
    assert png_bytes(again) == png_bytes(pool) and again["kind"] == pool["kind"]
    row = pool["kind"].index("task")
    expected = segmentation_world_example(row, "pool", seed=3)["image"]
    assert np.array_equal(np.asarray(pool[row]["image"]), np.asarray(expected))


# ---- bad inputs: refused, naming the field ------------------------------------------------------


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"classes": ()}, "classes"),
        ({"classes": "AB"}, "classes"),
        ({"classes": ("A", "")}, "classes"),
        ({"classes": ("A", "AB")}, "classes"),
        ({"classes": ("A", "\u4e00")}, "classes"),  # a character the fonts do not draw
        ({"image_size": 8}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"objects_per_image": (0, 2)}, "objects_per_image"),
        ({"objects_per_image": (3, 2)}, "objects_per_image"),
        ({"objects_per_image": 2}, "objects_per_image"),
        ({"object_size": (0.6, 0.4)}, "object_size"),
        ({"object_size": (0.5, 1.5)}, "object_size"),
        ({"image_size": 16, "object_size": (0.1, 0.5)}, "object_size"),
        ({"rotation": -1}, "rotation"),
        ({"stroke_width": (0, 20)}, "stroke_width"),
        ({"blur_radius": (-1, 0)}, "blur_radius"),
        ({"boundary_width": -1}, "boundary_width"),
        ({"boundary_width": True}, "boundary_width"),
        ({"supersample": 0}, "supersample"),
        ({"polarity": "light"}, "polarity"),
    ],
)
def test_bad_config_values_are_refused_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        SegmentationWorldConfig(**fields)


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: segmentation_world_task(label_budget=0), "label_budget"),
        (lambda: segmentation_world_task(test_images=1.5), "test_images"),
        (lambda: segmentation_world_task(seed=-1), "seed"),
        (lambda: segmentation_world_pool(size=0), "size"),
        (lambda: segmentation_world_pool(size=10, in_domain_share=1.5), "in_domain_share"),
        (lambda: segmentation_world_pool(size=10, in_domain_share=True), "in_domain_share"),
        (lambda: segmentation_world_example(0, split="unlabelled"), "split"),
        (lambda: segmentation_world_example(-1), "index"),
    ],
)
def test_bad_arguments_are_refused_naming_them(call, named):
    with pytest.raises(ValueError, match=named):
        call()
