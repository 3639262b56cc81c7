"""Data layer: task registry, loading, label budgets, image conversion, paired views."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import LABELS, make_colour_dataset, tiny_processor
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_task_distill.data import (
    PairedViews,
    TaskSpec,
    ViewAugmentation,
    ViewParams,
    ViewSpec,
    eval_view,
    get_task_spec,
    label_budget_indices,
    list_tasks,
    load_rgb_image,
    load_target_task,
    register_task,
    render_view,
    sample_view,
    to_rgb,
)

# ---- registry -------------------------------------------------------------------------------


def test_registry_holds_the_paper_tasks_as_data():
    assert {"cub", "eurosat", "ham10000", "places365", "imagenet"} <= set(list_tasks())
    for name in list_tasks():
        spec = get_task_spec(name)
        assert "/" in spec.hub_id and spec.image_column and spec.label_column
        assert "train" in spec.splits
        if spec.label_names is not None:
            assert len(spec.label_names) == spec.num_classes
    assert get_task_spec("EuroSAT").hub_id == "timm/eurosat-rgb"
    assert get_task_spec("imagenet").gated
    with pytest.raises(KeyError, match="unknown task 'mnist'; known tasks: ade20k, cub, eurosat"):
        get_task_spec("mnist")


def test_registered_task_loads_through_the_registry_path(tmp_path):
    """The same code path as a Hub task, pointed at a local Parquet copy (string labels in 'dx')."""
    rng = np.random.default_rng(0)
    names = ["akiec", "bcc", "nv"]
    for split, n in (("train", 12), ("test", 6)):
        images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
        ds = Dataset.from_dict(
            {"image": images, "dx": [names[i % 3] for i in range(n)]},
            features=Features({"image": ImageFeature(), "dx": Value("string")}),
        )
        (tmp_path / "data").mkdir(exist_ok=True)
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
    register_task(
        TaskSpec(
            name="toy_skin",
            hub_id=str(tmp_path),
            label_column="dx",
            splits={"train": "train", "test": "test"},
            num_classes=3,
            label_names=names,
        )
    )
    task = load_target_task("toy_skin")
    assert task.label_names == names and task.num_labels == 3
    assert task.label_column == "label" and isinstance(task["train"].features["label"], ClassLabel)
    assert task["train"][1]["label"] == 1 and task["test"][2]["label"] == 2
    assert task.id2label == {0: "akiec", 1: "bcc", 2: "nv"}


# ---- loading ------------------------------------------------------------------------------


def test_load_from_dataset_encodes_string_labels_consistently_across_splits():
    imgs = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue", "red")]
    train = Dataset.from_dict({"img": imgs, "species": ["cat", "dog", "eel", "cat"]})
    test = Dataset.from_dict({"img": imgs[:2], "species": ["dog", "dog"]})
    train = train.cast_column("img", ImageFeature())
    test = test.cast_column("img", ImageFeature())
    task = load_target_task(DatasetDict({"train": train, "test": test}), label_column="species")
    assert task.label_names == ["cat", "dog", "eel"]
    assert task["test"]["label"] == [1, 1]
    assert task.image_column == "image"


def test_load_from_image_folder(tmp_path):
    for split in ("train", "test"):
        for name, colour in (("cats", "red"), ("dogs", "blue")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), colour).save(folder / f"{i}.png")
    task = load_target_task(str(tmp_path))
    assert set(task.splits) == {"train", "test"}
    assert task.label_names == ["cats", "dogs"]
    assert len(task["train"]) == 6


def _write_tree(root, files):
    for i, relative in enumerate(files):
        path = root / relative
        if relative.endswith("/"):  # an empty folder
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            Image.new("RGB", (6, 6), (i * 7 % 256, 0, 0)).save(path)
        else:
            path.write_text("x")


@pytest.mark.parametrize(
    "files, fast",
    [
        (["a/1.png", "a/2.png", "b/3.png", "c d/[4].png"], True),  # root/<class>: train only
        (
            [
                "train/a/1.png",
                "train/b/2.png",
                "valid/a/3.png",
                "valid/b/4.png",
                "test/a/5.png",
                "test/b/6.png",
            ],
            True,
        ),
        (["training/x/1.png", "training/y/2.png", "eval/x/3.png", "eval/y/4.png"], True),
        (
            ["a/1.png", "a/notes.txt", "b/2.png", "b/.hidden.png"],
            True,
        ),  # non-images are skipped as datasets does
        (["a/1.png", "b/2.png", "top.png"], False),  # an image at the top: datasets decides
        (["train/a/1.png", "train/b/2.png", "other/a/3.png"], False),  # a split folder beside a non-split one
        (["a/x/1.png", "a/x/2.png", "b/y/3.png"], False),  # deeper trees
        (["train/cat/1.png", "train/dog/2.png", "test/cat/"], False),  # a split without images
        (["Train/cat/1.png", "Train/dog/2.png", "Test/cat/3.png"], False),  # datasets matches case
        (["cat/1.png", "test_tube/2.png"], False),  # datasets reads test_tube/ as a split
        (["cat/img_train_1.png", "dog/2.png"], False),  # ... and img_train_1.png
        (["test/cat/1.png", "test/dog/2.png", "train/cat/3.png", "train/dog/4.png"], True),  # split order
        (["cat/1.png", "dog/2.png", "__x.png"], False),
    ],
)
def test_an_image_folder_loads_with_one_pattern_per_split_exactly_as_datasets_infers_it(
    tmp_path, files, fast
):
    """datasets' own split inference walks the tree ~47 times (44 s for Fashion-MNIST's 62,000 files,
    on every pipeline run); the plain layouts are listed with one pattern per split instead, and must
    give the same splits, rows, order and labels."""
    import datasets

    from hf_task_distill.data.loading import image_folder_patterns, load_image_folder

    _write_tree(tmp_path, files)
    assert (image_folder_patterns(str(tmp_path)) is not None) == fast
    ours = load_image_folder(str(tmp_path))
    theirs = datasets.load_dataset("imagefolder", data_dir=str(tmp_path))
    assert list(ours) == list(theirs)  # the splits, in datasets' order
    for split in theirs:
        assert ours[split].features == theirs[split].features
        assert (
            ours[split]["label" if "label" in theirs[split].column_names else "image"]
            == theirs[split]["label" if "label" in theirs[split].column_names else "image"]
        )
        assert [np.asarray(im).tolist() for im in ours[split]["image"]] == [
            np.asarray(im).tolist() for im in theirs[split]["image"]
        ]


def test_bad_tasks_fail_with_a_clear_message():
    imgs = [Image.new("RGB", (8, 8))] * 3
    with pytest.raises(ValueError, match="split 'test' is empty"):
        load_target_task(
            DatasetDict({"train": make_colour_dataset(4, 0), "test": make_colour_dataset(4, 0).select([])})
        )
    with pytest.raises(ValueError, match=r"has no image column \(columns: text, label\)"):
        load_target_task(Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}))
    bad = Dataset.from_dict(
        {"image": imgs, "label": [0, 1, 5]},
        features=Features({"image": ImageFeature(), "label": Value("int64")}),
    )
    with pytest.raises(
        ValueError, match=r"split 'train': label column 'label' has 1 id\(s\) outside \[0, 2\) \(row 2: 5\)"
    ):
        load_target_task(bad, label_names=["a", "b"])
    strings = Dataset.from_dict({"image": imgs, "label": ["a", "b", "zebra"]}).cast_column(
        "image", ImageFeature()
    )
    with pytest.raises(ValueError, match=r"label\(s\) \['zebra'\] in 'label' are not among"):
        load_target_task(strings, label_names=["a", "b"])
    with pytest.raises(ValueError, match="cannot load a task from 'nonsense'"):
        load_target_task("nonsense")


# ---- label budgets ---------------------------------------------------------------------------


def test_per_class_budget_is_stratified_seeded_and_nested():
    labels = np.repeat(np.arange(5), [3, 10, 20, 7, 50])
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(labels.size)]
    five = label_budget_indices(labels, per_class=5, seed=3)
    assert np.bincount(labels[five]).tolist() == [3, 5, 5, 5, 5]  # "at most N per class"
    assert np.array_equal(five, label_budget_indices(labels, per_class=5, seed=3))
    assert not np.array_equal(five, label_budget_indices(labels, per_class=5, seed=4))
    ten = label_budget_indices(labels, per_class=10, seed=3)
    assert set(five) <= set(ten)
    assert np.all(np.diff(five) > 0)


def test_fraction_budget_keeps_each_class_share():
    labels = np.repeat(np.arange(3), [100, 200, 1000])
    picked = label_budget_indices(labels, fraction=0.1, seed=0)
    assert np.bincount(labels[picked]).tolist() == [10, 20, 100]
    assert np.bincount(labels[label_budget_indices(labels, fraction=0.001, seed=0)]).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="exactly one of"):
        label_budget_indices(labels, per_class=2, fraction=0.5)


def test_task_label_budget_records_what_it_kept(colour_splits):
    task = load_target_task(colour_splits["train"], name="colours").with_label_budget(per_class=3, seed=0)
    assert len(task["train"]) == 12
    assert sorted(np.bincount(task["train"]["label"])) == [3, 3, 3, 3]
    assert task.label_budget == {"split": "train", "per_class": 3, "fraction": None, "seed": 0, "size": 12}


# ---- images --------------------------------------------------------------------------------


def _roundtrip(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    "make, fmt, expected",
    [
        (lambda: Image.new("L", (6, 5), 200), "PNG", (200, 200, 200)),
        (lambda: Image.new("1", (6, 5), 1), "PNG", (255, 255, 255)),
        (lambda: Image.new("RGBA", (6, 5), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (lambda: Image.new("RGBA", (6, 5), (255, 0, 0, 0)), "PNG", (128, 128, 128)),
        (lambda: Image.new("LA", (6, 5), (50, 255)), "PNG", (50, 50, 50)),
        (lambda: Image.new("CMYK", (6, 5), (0, 255, 255, 0)), "JPEG", None),
        (lambda: Image.new("RGB", (6, 5), (0, 0, 255)).convert("P"), "PNG", (0, 0, 255)),
        (lambda: Image.fromarray(np.full((5, 6), 65535, dtype=np.uint16)), "PNG", (255, 255, 255)),
        (lambda: Image.fromarray(np.full((5, 6), 32768, dtype=np.uint16)), "PNG", (128, 128, 128)),
        (lambda: Image.fromarray(np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)), "TIFF", None),
    ],
)
def test_unusual_modes_become_8bit_rgb(make, fmt, expected):
    image = _roundtrip(make(), fmt)
    rgb = load_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.size == (6, 5)
    pixels = np.asarray(rgb)
    assert pixels.dtype == np.uint8
    if expected is not None:
        assert np.abs(pixels[2, 3].astype(int) - np.array(expected)).max() <= 2, (image.mode, pixels[2, 3])
    else:  # CMYK red-ish / float ramp: a real picture, not all black
        assert pixels.max() > 100


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (10, 4), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert to_rgb(Image.open(io.BytesIO(buffer.getvalue()))).size == (4, 10)


def test_image_cells_of_every_kind_decode(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (5, 5), 10).save(path)
    for cell in (
        str(path),
        {"bytes": path.read_bytes(), "path": None},
        {"bytes": None, "path": str(path)},
        path.read_bytes(),
    ):
        assert load_rgb_image(cell).mode == "RGB"
    with pytest.raises(ValueError, match="image cell is empty"):
        load_rgb_image(None)


# ---- views ---------------------------------------------------------------------------------


def test_view_specs_come_from_each_models_own_config():
    from transformers import CLIPImageProcessor, SiglipImageProcessor, ViTImageProcessor

    dino = ViewSpec.from_image_processor(tiny_processor(32))
    assert dino.size == (32, 32) and dino.crop_pct == pytest.approx(32 / 36) and dino.eval_mode == "center"
    clip = ViewSpec.from_image_processor(CLIPImageProcessor())
    assert clip.size == (224, 224) and clip.crop_pct == 1.0 and clip.mean[0] == pytest.approx(0.48145466)
    vit = ViewSpec.from_image_processor(ViTImageProcessor())
    assert vit.eval_mode == "squash" and vit.interpolation == "bilinear" and vit.mean == (0.5, 0.5, 0.5)
    siglip = ViewSpec.from_image_processor(SiglipImageProcessor(size={"height": 384, "width": 384}))
    assert siglip.size == (384, 384) and siglip.eval_mode == "squash"

    from hf_task_distill import create_student

    student = create_student("test_resnet", LABELS, image_size=48)
    spec = ViewSpec.from_model(student)
    assert spec.size == (48, 48) and spec.crop_pct == pytest.approx(student.config.pretrained_cfg["crop_pct"])


def test_paired_training_views_share_one_crop_and_flip():
    """A horizontal ramp image: the crop's position and flip are visible in both renderings."""
    ramp = np.tile(np.linspace(0, 255, 120, dtype=np.float32), (80, 1))
    image = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    teacher = ViewSpec(size=(56, 56), mean=(0.5,) * 3, std=(0.5,) * 3)
    student = ViewSpec(size=(24, 24), mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    views = PairedViews(teacher, student, ViewAugmentation(scale=(0.1, 0.5)))
    transform = views.transform(train=True, return_view_params=True)
    torch.manual_seed(0)
    out = transform({"image": [image] * 40})
    flips = 0
    for t, s, p in zip(out["teacher_pixel_values"], out["pixel_values"], out["view_params"], strict=True):
        assert t.shape == (3, 56, 56) and s.shape == (3, 24, 24)
        t01 = t * 0.5 + 0.5  # undo each normalisation: both views show the same pixels
        t_small = torch.nn.functional.interpolate(t01[None], size=(24, 24), mode="area")[0]
        assert torch.allclose(t_small, s, atol=0.06), p
        left_brighter = s[0, :, :4].mean() > s[0, :, -4:].mean()
        assert bool(left_brighter) == p.flip
        flips += p.flip
    assert 8 < flips < 32  # flips happen about half the time
    boxes = {(p.top, p.left, p.height, p.width) for p in out["view_params"]}
    assert len(boxes) > 30  # a fresh crop per image


def test_sample_view_follows_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    aug = ViewAugmentation(scale=(0.2, 0.4), ratio=(0.75, 1.333), hflip=0.0)
    for _ in range(200):
        v = sample_view((200, 100), aug, g)
        area = v.height * v.width / (200 * 100)
        assert 0.18 <= area <= 0.42 and 0 <= v.top <= 100 - v.height and 0 <= v.left <= 200 - v.width
        assert not v.flip


def test_eval_views_are_deterministic_central_crops():
    spec = ViewSpec(size=(32, 32), crop_pct=0.5)
    assert eval_view((100, 60), spec) == ViewParams(top=15, left=35, height=30, width=30)
    squash = ViewSpec(size=(32, 32), eval_mode="squash")
    assert eval_view((100, 60), squash) == ViewParams(top=0, left=0, height=60, width=100)
    pixels = torch.randint(0, 255, (3, 60, 100), dtype=torch.uint8)
    a = render_view(pixels, eval_view((100, 60), spec), spec)
    assert torch.equal(a, render_view(pixels, eval_view((100, 60), spec), spec))


def test_apply_marks_missing_labels_unlabelled_and_checks_ids():
    spec = ViewSpec(size=(16, 16))
    views = PairedViews(spec, spec)
    ds = make_colour_dataset(6, seed=0).cast_column("label", Value("int64"))
    ds = ds.map(lambda r, i: {"label": -1 if i % 2 else r["label"]}, with_indices=True)
    prepared = views.apply(ds, train=False, num_labels=4)
    assert len(prepared) == 6
    assert prepared[1]["labels"] == -100 and prepared[0]["labels"] >= 0
    unlabelled = views.apply(make_colour_dataset(3, seed=0, labelled=False), train=True)
    assert set(unlabelled[0]) == {"pixel_values", "teacher_pixel_values"}
    with pytest.raises(
        ValueError, match=r"has 4 classes \(\[red, green, blue, yellow\]\) but the model predicts 2"
    ):
        views.apply(make_colour_dataset(20, seed=0), train=True, num_labels=2)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        views.apply(
            make_colour_dataset(20, seed=0).cast_column("label", Value("int64")), train=True, num_labels=2
        )


def test_a_saved_dataset_folder_is_a_task_with_its_splits(tmp_path):
    """How a datasets object reaches the CLI and compare: save_to_disk, then --dataset <folder>."""
    task = DatasetDict({"train": make_colour_dataset(6, 0), "test": make_colour_dataset(4, 1)})
    task.save_to_disk(str(tmp_path / "dict"))
    task["train"].save_to_disk(str(tmp_path / "single"))
    loaded = load_target_task(str(tmp_path / "dict"))
    assert set(loaded.splits) == {"train", "test"} and loaded.name == "dict"
    assert loaded["train"]["label"] == task["train"]["label"] and loaded.label_names == LABELS
    single = load_target_task(str(tmp_path / "single"))
    assert set(single.splits) == {"train"} and len(single["train"]) == len(task["train"])
