"""Label spaces: wherever a model meets labelled data its outputs are matched to the data's classes by
name, and a new head means new class names in every record of them (issue 15, items 2 and 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import COLOURS, LABELS, distill_args, tiny_dinov2
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image
from transformers import PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from hf_task_distill import DistillationTrainer, ViewSpec, create_student, load_target_task, load_teacher
from hf_task_distill.data import PairedViews, single_view_dataset
from hf_task_distill.evaluation import evaluate_classifier

RGB = ["red", "green", "blue"]  # the colour model's output order: its channels
SPEC = ViewSpec(size=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class ColourModel(torch.nn.Module):
    """Predicts the dominant channel of an image: output i is ``RGB[i]``, right on every colour image."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(
            id2label=dict(enumerate(RGB)), label2id={n: i for i, n in enumerate(RGB)}
        )
        self.scale = torch.nn.Parameter(torch.ones(()))  # something for a Trainer to hold

    def forward(self, pixel_values, labels=None, **_):
        return ImageClassifierOutput(logits=pixel_values.mean((2, 3)) * 10 * self.scale)


def _colour_photos(names: list[str], per_class: int = 4) -> Dataset:
    """Pure-ish colour images of RGB's classes, labelled with a ClassLabel listing ``names`` in that order."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for colour in RGB:
        for _ in range(per_class):
            pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 10, (12, 12, 3)), 0, 255)
            images.append(Image.fromarray(pixels.astype(np.uint8)))
            labels.append(names.index(colour))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


ALPHABETICAL = sorted(RGB)  # ['blue', 'green', 'red']: what an image folder or a sorted export gives


def test_evaluation_matches_labels_to_the_models_classes_by_name():
    """Before: accuracy 0.333 (only green has the same id in both orders), with no warning."""
    data = _colour_photos(ALPHABETICAL)
    assert evaluate_classifier(ColourModel(), data, spec=SPEC)["accuracy"] == 1.0
    assert evaluate_classifier(ColourModel(), _colour_photos(RGB), spec=SPEC)["accuracy"] == 1.0


def test_distillation_evaluation_reports_the_teachers_true_accuracy(tmp_path):
    """Before: eval_accuracy and eval_teacher_accuracy were both 0.333."""
    trainer = DistillationTrainer(
        model=ColourModel(),
        teacher_model=ColourModel(),
        args=distill_args(tmp_path),
        train_dataset=_colour_photos(ALPHABETICAL).remove_columns("label"),
        eval_dataset=_colour_photos(ALPHABETICAL),
        views=PairedViews(SPEC, SPEC),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_teacher_accuracy"] == 1.0 and metrics["eval_accuracy"] == 1.0


def test_training_labels_follow_the_models_class_order():
    """Student finetuning and teacher validation go through these views: a red image must carry the
    model's id of red (0), whatever id the dataset gave it (2). Before: 2."""
    data = _colour_photos(ALPHABETICAL, per_class=1)  # rows: red, green, blue
    for train in (True, False):
        rows = single_view_dataset(data, SPEC, train=train, label_names=RGB, num_labels=3)
        assert [rows[i]["labels"] for i in range(3)] == [0, 1, 2]


def test_classes_the_model_does_not_have_are_refused_with_both_lists(tmp_path):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["red", "green", "teal"])})
    data = Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 3, "label": [0, 1, 2]}, features=features)
    with pytest.raises(ValueError, match=r"class\(es\) \[teal\] are not among the model's classes.*"
                       r"the model's: \[red, green, blue\]"):  # fmt: skip
        evaluate_classifier(ColourModel(), data, spec=SPEC)
    rendered = _colour_photos(ALPHABETICAL).map(lambda r: {"pixel_values": np.zeros((3, 16, 16))})
    with pytest.raises(ValueError, match=r"already holds pixel values.*align_labels_with_mapping"):
        DistillationTrainer(
            model=ColourModel(),
            teacher_model=ColourModel(),
            args=distill_args(tmp_path),
            train_dataset=rendered,
            views=PairedViews(SPEC, SPEC),
        )


def test_a_tasks_splits_share_one_class_order():
    """A test split whose ClassLabel lists the classes in another order than train's: its ids are
    remapped by name. Before: they were read with train's names (a red test image was 'blue')."""
    train, test = _colour_photos(RGB, per_class=2), _colour_photos(ALPHABETICAL, per_class=2)
    task = load_target_task(DatasetDict({"train": train, "test": test}))
    assert task["test"].features["label"].names == RGB
    assert task["test"]["label"] == task["train"]["label"]  # the same colours, row for row
    assert task["test"].column_names == ["image", "label"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cat", "cat "], r"'cat' and 'cat ' differ only by surrounding whitespace"),
        (["cat", ""], r"label name at index 1 is empty"),
    ],
)
def test_label_names_that_would_split_a_class_are_refused(names, message):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    data = Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "label": [0, 1]}, features=features)
    with pytest.raises(ValueError, match=message):
        load_target_task(data)
    with pytest.raises(ValueError, match=message):
        create_student("test_resnet", names)


# -- a new head means new class names everywhere ---------------------------------------------------------
SHAPES = ["circle", "cross", "square", "star", "triangle"]


def test_a_teacher_finetuned_from_the_mini_vfm_names_the_tasks_classes(tmp_path):
    """Before: config.json kept the 269 glyph names next to num_classes 5, pipeline() said LABEL_0..4,
    and a student made from teacher.config.id2label predicted LABEL_* too."""
    from transformers import pipeline

    teacher = load_teacher("mini-vfm", labels=SHAPES)  # the shipped mini-VFM, by the name the CLI takes
    teacher.save_pretrained(tmp_path / "teacher")
    saved = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert saved["label_names"] == SHAPES and saved["num_classes"] == 5
    classify = pipeline("image-classification", model=str(tmp_path / "teacher"), image_processor=None)
    assert {p["label"] for p in classify(Image.new("RGB", (32, 32)), top_k=5)} == set(SHAPES)
    student = create_student("resnet10t", load_teacher(str(tmp_path / "teacher")).config.id2label)
    assert list(student.config.id2label.values()) == SHAPES


def test_a_timm_checkpoint_as_student_takes_the_new_classes_in_every_field(tmp_path):
    """A student started from a checkpoint with classes of its own (pretrained or not). Before: timm's
    label_names kept the checkpoint's classes, and the saved student reloaded with them."""
    from transformers import AutoModelForImageClassification

    create_student("test_resnet", LABELS, image_size=32).save_pretrained(tmp_path / "start")
    for pretrained in (False, True):
        student = create_student(str(tmp_path / "start"), ALPHABETICAL, pretrained=pretrained)
        student.save_pretrained(tmp_path / f"student-{pretrained}")
        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / f"student-{pretrained}")
        assert list(reloaded.config.id2label.values()) == ALPHABETICAL, pretrained


def test_a_checkpoint_with_the_tasks_classes_in_another_order_keeps_its_head_reordered(tmp_path):
    """DINOv2 family: the same classes in another order move the head's rows (the teacher stays
    trained); other classes of the same count get a new head, not the old one renamed."""
    base = tiny_dinov2(seed=3)  # LABELS order: red, green, blue, yellow
    base.save_pretrained(tmp_path / "base")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = base(pixel_values=pixels).logits
    reordered = load_teacher(str(tmp_path / "base"), labels=sorted(LABELS)).eval()
    assert list(reordered.config.id2label.values()) == sorted(LABELS)
    with torch.no_grad():
        got = reordered(pixel_values=pixels).logits
    order = [LABELS.index(n) for n in sorted(LABELS)]
    torch.testing.assert_close(got, expected[:, order])
    other = load_teacher(str(tmp_path / "base"), labels=["a", "b", "c", "d"])
    assert list(other.config.id2label.values()) == ["a", "b", "c", "d"]
    assert not torch.equal(other.classifier.weight, base.classifier.weight)  # a new head


def test_a_pretrained_student_with_the_tasks_classes_in_another_order_keeps_its_head_reordered(
    tmp_path, caplog
):
    """timm family, as a pretrained student: before, the head came back in the checkpoint's order
    under the task's names (same shape, so nothing was re-initialised), and outputs were misnamed."""
    start = create_student("test_resnet", LABELS, image_size=32).eval()
    start.save_pretrained(tmp_path / "start")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = start(pixel_values=pixels).logits
    with caplog.at_level("WARNING"):
        student = create_student(str(tmp_path / "start"), sorted(LABELS), pretrained=True).eval()
    assert "new, untrained" not in caplog.text  # the classes are the task's: its head is kept
    with torch.no_grad():
        got = student(pixel_values=pixels).logits
    torch.testing.assert_close(got, expected[:, [LABELS.index(n) for n in sorted(LABELS)]])
    caplog.clear()
    with caplog.at_level("WARNING"):
        other = create_student(str(tmp_path / "start"), ["a", "b", "c", "d"], pretrained=True)
    assert "predicts 4 other classes: a new, untrained 4-class head" in caplog.text
    assert not torch.equal(other.timm_model.get_classifier().weight, start.timm_model.get_classifier().weight)
