"""Semantic segmentation as a task type: masks follow their image's view, bad masks are refused
naming the row, metrics agree with a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_task_distill.data import PairedViews, ViewAugmentation, ViewSpec
from hf_task_distill.data.masks import MaskError, masks_from_palette, reduce_labels_map, render_mask
from hf_task_distill.data.views import ViewParams
from hf_task_distill.tasks import get_task_type, task_type_of

SEGMENTATION = "image-segmentation"
CLASSES = ["background", "left", "right"]


def tiny_segformer(num_labels: int = len(CLASSES), seed: int = 0):
    import conftest

    return conftest.tiny_segformer(num_labels, seed, label_names=CLASSES[:num_labels])


def ramp_pair(width: int = 96, height: int = 64, bands: int = 12):
    """An image whose red channel is its column index (a ramp) and whose mask is the column's band:
    after any crop, flip and resize, the red value at a pixel says which band the mask must show."""
    columns = np.arange(width)
    red = np.round(columns * 255 / (width - 1)).astype(np.uint8)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = red[None, :]
    pixels[..., 1] = np.arange(height, dtype=np.uint8)[:, None]
    band = (columns * bands // width).astype(np.uint8)
    mask = np.repeat(band[None, :], height, axis=0)
    return Image.fromarray(pixels), Image.fromarray(mask, mode="L"), bands


def seg_dataset(images, masks):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    return Dataset.from_dict(
        {"image": images, "mask": masks}, features=Features({"image": ImageFeature(), "mask": ImageFeature()})
    )


def test_segmentation_is_registered_and_knows_its_models():
    segmentation = get_task_type(SEGMENTATION)
    assert segmentation.metric_names == ("mean_iou", "pixel_accuracy")
    assert task_type_of(tiny_segformer()).name == SEGMENTATION
    from conftest import tiny_dinov2

    assert task_type_of(tiny_dinov2()).name == "image-classification"  # classification is unchanged


@pytest.mark.parametrize("seed", range(6))
def test_ramp_image_mask_and_both_renderings_stay_aligned_after_crop_and_flip(seed):
    image, mask, bands = ramp_pair()
    views = PairedViews(
        teacher=ViewSpec(size=(56, 56), mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear"),
        student=ViewSpec(size=(24, 40), mean=(0, 0, 0), std=(1, 1, 1), interpolation="bicubic"),
        augmentation=ViewAugmentation(scale=(0.2, 0.8), hflip=0.5),
    )
    dataset = views.apply(
        seg_dataset([image] * 4, [mask] * 4),
        train=True,
        image_column="image",
        label_column="mask",
        num_labels=bands,
        seed=seed,
        task_type=get_task_type(SEGMENTATION),
    )
    flipped = 0
    for row in range(4):
        item = dataset[row]
        view = _view_of(dataset, row, image.size)
        flipped += view.flip
        target = item["labels"]
        assert target.shape == (24, 40) and target.dtype == torch.long
        assert set(target.unique().tolist()) <= set(range(bands))  # never interpolated: only input values
        band_width = image.size[0] / bands  # source columns per band
        for name in ("pixel_values", "teacher_pixel_values"):
            red = item[name][0]  # in [0, 1]: the source column is red * (width - 1)
            column = red * (image.size[0] - 1)
            if name == "teacher_pixel_values":  # the mask is at the student's grid: sample the teacher's
                column = torch.nn.functional.interpolate(column[None, None], size=(24, 40), mode="bilinear")[
                    0, 0
                ]
            inner = slice(1, -1)  # resampling clamps at the crop's edges; the ramp is linear inside
            low = target[:, inner] * band_width - 0.5  # the band's source columns, pixel centres
            high = (target[:, inner] + 1) * band_width - 0.5
            slack = 0.25  # the ramp's uint8 rounding (0.19 column); one pixel off would be >= 0.75
            outside = (column[:, inner] < low - slack) | (column[:, inner] > high + slack)
            assert not bool(outside.any()), (
                f"{name}: {int(outside.sum())} pixels whose image column is outside their mask band"
            )
            # the flip is the same for image and mask: the ramp's direction follows the mask's
            image_rises = bool(column[:, -1].mean() > column[:, 0].mean())
            mask_rises = bool(target[:, -1].float().mean() > target[:, 0].float().mean())
            assert image_rises == mask_rises == (not view.flip)
    assert 0 < flipped or seed % 2  # some seeds flip; the assertion above checks both directions


def _view_of(dataset, row, image_size):
    from hf_task_distill.data.views import sample_view

    return sample_view(image_size, dataset.augmentation, dataset.view_generator(row))


def test_render_mask_is_nearest_neighbour_and_keeps_ignored_pixels():
    rng = np.random.default_rng(0)
    ids = rng.choice([0, 1, 2, 255], size=(30, 50)).astype(np.uint8)
    out = render_mask(Image.fromarray(ids, mode="L"), ViewParams(5, 10, 20, 30, flip=False), (40, 60))
    assert set(out.unique().tolist()) <= {0, 1, 2, 255}
    # an exact 2x upsampling of the crop repeats every pixel twice in each direction
    expected = (
        torch.from_numpy(ids[5:25, 10:40].astype(np.int64)).repeat_interleave(2, 0).repeat_interleave(2, 1)
    )
    assert torch.equal(out, expected)
    flipped = render_mask(Image.fromarray(ids, mode="L"), ViewParams(5, 10, 20, 30, flip=True), (40, 60))
    assert torch.equal(flipped, expected.flip(-1))
    assert torch.equal(render_mask(None, ViewParams(0, 0, 30, 50), (8, 8)), torch.full((8, 8), 255))


def test_palette_and_greyscale_rgb_masks():
    ids = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    palette_image = Image.fromarray(ids, mode="P")
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    assert torch.equal(
        render_mask(palette_image, ViewParams(0, 0, 2, 2), (2, 2)), torch.from_numpy(ids).long()
    )
    grey_rgb = Image.fromarray(np.repeat(ids[..., None], 3, axis=2), mode="RGB")  # ids saved as RGB
    assert torch.equal(render_mask(grey_rgb, ViewParams(0, 0, 2, 2), (2, 2)), torch.from_numpy(ids).long())
    colours = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2}
    coloured = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [255, 0, 0]]], dtype=np.uint8)
    converted = masks_from_palette(
        seg_dataset([Image.new("RGB", (2, 2))], [Image.fromarray(coloured)]), "mask", colours
    )
    assert np.array_equal(np.asarray(converted[0]["mask"]), [[0, 1], [2, 1]])
    with pytest.raises(MaskError, match=r"row 0, column 'mask': colour \(255, 0, 0\) is not in the palette"):
        masks_from_palette(
            seg_dataset([Image.new("RGB", (2, 2))], [Image.fromarray(coloured)]), "mask", {(0, 0, 0): 0}
        )
    assert reduce_labels_map()[:3] == [255, 0, 1] and reduce_labels_map()[255] == 255


def _good_rows(n=4, size=(16, 12)):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    masks = [
        Image.fromarray(rng.integers(0, 3, (size[1], size[0]), dtype=np.uint8), mode="L") for _ in range(n)
    ]
    return images, masks


def _apply(dataset, **kwargs):
    spec = ViewSpec(size=(16, 16))
    return PairedViews(spec, spec).apply(
        dataset,
        train=True,
        image_column="image",
        label_column="mask",
        num_labels=3,
        task_type=get_task_type(SEGMENTATION),
        **kwargs,
    )


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda i, m: m.__setitem__(2, m[2].resize((15, 12))),
            r"row 2, column 'mask'.*15x12 .*image is 16x12",
        ),
        (
            lambda i, m: m.__setitem__(1, Image.fromarray(np.full((12, 16), 7, dtype=np.uint8), mode="L")),
            r"row 1, column 'mask'.*class id\(s\) \[7\] outside the 3 classes \(0..2\) and not the ignore index 255",
        ),
        (
            lambda i, m: m.__setitem__(
                3,
                Image.fromarray(
                    np.dstack(
                        [
                            np.zeros((12, 16), np.uint8),
                            np.ones((12, 16), np.uint8) * 200,
                            np.zeros((12, 16), np.uint8),
                        ]
                    )
                ),
            ),
            r"row 3, column 'mask'.*colour \(RGB\) image: a palette-coloured mask has no class ids.*masks_from_palette",
        ),
        (
            lambda i, m: m.__setitem__(0, {"bytes": b"not a png", "path": None}),
            r"row 0, column 'mask'.*cannot decode",
        ),
    ],
    ids=["size", "class-id", "rgb-palette", "undecodable"],
)
def test_bad_masks_are_refused_naming_the_row(corrupt, message):
    images, masks = _good_rows()
    corrupt(images, masks)
    with pytest.raises(ValueError, match=message):
        _apply(seg_dataset(images, masks))


def test_a_segmentation_dataset_without_its_mask_column_is_refused():
    images, _ = _good_rows()
    from datasets import Dataset

    spec = ViewSpec(size=(16, 16))
    with pytest.raises(ValueError, match=r"no label column 'mask'"):
        PairedViews(spec, spec).apply(
            Dataset.from_dict({"image": images}),
            train=True,
            label_column="mask",
            num_labels=3,
            task_type=get_task_type(SEGMENTATION),
        )


def test_a_classification_teacher_for_a_segmentation_student_is_refused():
    from conftest import tiny_dinov2

    segmentation = get_task_type(SEGMENTATION)
    with pytest.raises(
        ValueError, match=r"teacher \(Dinov2ForImageClassification\) is a image-classification model"
    ):
        segmentation.check_label_spaces(tiny_dinov2(num_labels=3), tiny_segformer())
    with pytest.raises(ValueError, match=r"the teacher must be a image-classification model"):
        get_task_type().check_label_spaces(tiny_segformer(), tiny_dinov2(num_labels=3))


def saved_segformer(folder, size: int = 32):
    """A tiny SegFormer saved with its image processor and loaded back (as a user's student is)."""
    from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor

    tiny_segformer().save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}, do_reduce_labels=False).save_pretrained(
        folder
    )
    return AutoModelForSemanticSegmentation.from_pretrained(folder).eval()


def test_evaluation_matches_a_direct_iou_computation(tmp_path):
    images, masks = _good_rows(6, size=(32, 32))
    masks[0] = Image.fromarray(np.full((32, 32), 255, dtype=np.uint8), mode="L")  # an all-ignored mask
    dataset = seg_dataset(images, masks)
    model = saved_segformer(tmp_path)
    from types import SimpleNamespace

    task = SimpleNamespace(image_column="image", label_column="mask")
    segmentation = get_task_type(SEGMENTATION)
    metrics, per_class = segmentation.evaluate(model, dataset, task=task, batch_size=4, where="test split")
    # the same predictions, scored by hand
    from hf_task_distill.tasks.segmentation import predict_masks

    predictions, truth = map(torch.cat, zip(*predict_masks(model, dataset, task=task), strict=True))
    valid = truth != 255
    p, t = predictions[valid].numpy(), truth[valid].numpy()
    ious = []
    for c in range(3):
        union = np.sum((p == c) | (t == c))
        ious.append(np.sum((p == c) & (t == c)) / union if union else np.nan)
    assert metrics["mean_iou"] == pytest.approx(np.nanmean(ious), abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(p == t), abs=1e-6)
    assert list(per_class) == CLASSES
    assert [v is None for v in per_class.values()] == [bool(np.isnan(v)) for v in ious]


def test_a_dataset_with_a_mask_column_loads_as_a_segmentation_task():
    from datasets import DatasetDict

    from hf_task_distill.data import load_target_task

    images, masks = _good_rows(4)
    task = load_target_task(
        DatasetDict({"train": seg_dataset(images, masks)}), label_names=CLASSES, name="toy"
    )
    assert (task.task_type, task.image_column, task.label_column) == (SEGMENTATION, "image", "mask")
    named_by_ids = load_target_task(DatasetDict({"train": seg_dataset(images, masks)}), name="toy")
    assert named_by_ids.label_names == ["0", "1", "2"]  # the masks' ids 0..2
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"segmentation task but split 'train' has no mask column 'mask'"):
        load_target_task(Dataset.from_dict({"image": images}), task_type=SEGMENTATION, label_column="mask")
    with pytest.raises(
        ValueError, match=r"segmentation task but split 'train' has no mask column \(columns: image\)"
    ):
        load_target_task(Dataset.from_dict({"image": images}), task_type=SEGMENTATION)


def test_a_reduce_labels_preset_maps_raw_zero_to_ignored(monkeypatch):
    from datasets import DatasetDict

    from hf_task_distill.data.registry import get_task_spec
    from hf_task_distill.data.segmentation_task import segmentation_task

    raw = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)
    split = seg_dataset([Image.new("RGB", (3, 2))], [Image.fromarray(raw, mode="L")])
    spec = get_task_spec("ade20k")
    task = segmentation_task(
        DatasetDict({"train": split}),
        "ade",
        "image",
        "mask",
        ["a", "b", "c"],
        spec,
    )
    assert np.array_equal(np.asarray(task["train"][0]["mask"]), [[255, 0, 1], [2, 255, 0]])


def test_a_model_listing_the_tasks_classes_in_another_order_is_scored_by_name(tmp_path):
    """Masks hold the task's ids; a model whose outputs are the same classes in another order
    (a teacher used as it is) must be scored by class name, not by output index."""
    from transformers import AutoModelForSemanticSegmentation

    images, masks = _good_rows(6, size=(32, 32))
    dataset = seg_dataset(images, masks)
    from types import SimpleNamespace

    task = SimpleNamespace(image_column="image", label_column="mask", label_names=CLASSES)
    model = saved_segformer(tmp_path / "same")
    order = [2, 0, 1]  # output i of the permuted model is the task's class order[i]
    permuted = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "same").eval()
    classifier = permuted.decode_head.classifier
    with torch.no_grad():
        classifier.weight.copy_(model.decode_head.classifier.weight[order])
        classifier.bias.copy_(model.decode_head.classifier.bias[order])
    names = [CLASSES[i] for i in order]
    permuted.config.id2label, permuted.config.label2id = (
        dict(enumerate(names)),
        {n: i for i, n in enumerate(names)},
    )
    segmentation = get_task_type(SEGMENTATION)
    metrics, per_class = segmentation.evaluate(model, dataset, task=task, batch_size=4, where="test split")
    again, per_class_again = segmentation.evaluate(
        permuted, dataset, task=task, batch_size=4, where="test split"
    )
    assert again == pytest.approx(metrics, abs=1e-6)
    assert {k: per_class_again[k] for k in per_class} == per_class
    other = SimpleNamespace(image_column="image", label_column="mask", label_names=["sky", "left", "right"])
    with pytest.raises(ValueError, match=r"class\(es\) \[sky\] are not among the model's classes"):
        segmentation.evaluate(model, dataset, task=other, batch_size=4, where="test split")


def test_masks_stored_as_arrays_load_and_follow_their_images_view():
    """An ``Array2D`` mask column (ids as nested lists once ``datasets`` formats them) is a mask like
    a PNG: ``mask_array`` read it as an image and raised a bare TypeError naming no row."""
    from datasets import Array2D, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    from hf_task_distill.data import load_target_task

    images, masks = _good_rows(3)
    ids = [np.asarray(m, dtype=np.int32) for m in masks]
    features = Features({"image": ImageFeature(), "mask": Array2D((12, 16), "int32")})
    split = Dataset.from_dict({"image": images, "mask": ids}, features=features)
    task = load_target_task(
        DatasetDict({"train": split}), label_names=CLASSES, task_type=SEGMENTATION, label_column="mask"
    )
    assert task.label_column == "mask"
    spec = ViewSpec(size=(12, 16), eval_mode="squash")
    rows = PairedViews(spec, spec).apply(
        task["train"], train=False, label_column="mask", num_labels=3, task_type=get_task_type(SEGMENTATION)
    )
    assert all(torch.equal(rows[i]["labels"], torch.from_numpy(ids[i]).long()) for i in range(3))
    bad = Dataset.from_dict({"image": images[:1], "mask": [7]})
    with pytest.raises(
        MaskError, match=r"row 0, column 'mask'.*cannot read an image from a value of type int"
    ):
        _apply(bad)
