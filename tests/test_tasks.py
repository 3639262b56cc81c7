"""The task-type seam (hf_task_distill.tasks): what is specific to image classification lives in
one registered object, and a second task type plugs in from one file."""

from __future__ import annotations

import pytest
from conftest import LABELS, make_colour_dataset, tiny_dinov2

from hf_task_distill.tasks import (
    TaskType,
    available_task_types,
    get_task_type,
    register_task_type,
    task_type_of,
    unregister_task_type,
)


def test_classification_is_the_registered_default_and_knows_its_models():
    from transformers import Dinov2Config, Dinov2Model

    from hf_task_distill.models import create_student

    assert available_task_types() == ("image-classification", "image-segmentation")
    classification = get_task_type()
    assert classification.name == "image-classification"
    assert classification.metric_names == ("accuracy", "balanced_accuracy", "macro_f1")
    student = create_student("resnet18", list(LABELS))
    assert classification.matches_model(student) and classification.matches_model(tiny_dinov2())
    backbone = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    assert not classification.matches_model(backbone)  # a backbone without a head is no classifier
    with pytest.raises(ValueError, match=r"unknown task type 'depth'; registered: image-classification"):
        get_task_type("depth")


def test_classification_renders_labels_as_the_models_ids():
    classification = get_task_type()
    assert classification.render_target(2, None, None) == 2
    assert classification.render_target(2, None, [5, 6, 7]) == 7  # the dataset's class 2 is the model's 7
    assert classification.render_target(None, None, [5, 6, 7]) == -100  # unlabelled stays unlabelled


def test_classification_checks_label_spaces_by_name():
    classification = get_task_type()
    teacher, student = tiny_dinov2(), tiny_dinov2()
    classification.check_label_spaces(teacher, student)
    student.config.id2label = {i: name for i, name in enumerate(reversed(LABELS))}
    with pytest.raises(ValueError, match="teacher"):
        classification.check_label_spaces(teacher, student)


class DoubledLabels(TaskType):
    """A toy task type: the target is twice the label (stands in for a dense target)."""

    name = "toy-doubled"
    metric_names = ("error",)
    metric_titles = ("error",)

    def model_class(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def render_target(self, value, view, label_map, *, size=None):
        return -100 if value is None else 2 * int(value)

    def evaluate(self, model, dataset, *, task, batch_size, where):
        return {"error": 0.0}, None


@pytest.fixture
def doubled():
    register_task_type(DoubledLabels)
    yield get_task_type("toy-doubled")
    unregister_task_type("toy-doubled")


def test_a_task_type_added_from_one_file_renders_the_targets_of_views(doubled):
    from hf_task_distill.data import ViewAugmentation, ViewSpec
    from hf_task_distill.data.views import ViewDataset

    dataset = make_colour_dataset(4, seed=0)
    spec = ViewSpec(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    rows = ViewDataset(
        dataset,
        {"pixel_values": spec},
        augmentation=ViewAugmentation(),
        image_column="image",
        label_column="label",
        render_target=doubled.render_target,
    )
    assert [rows[i]["labels"] for i in range(4)] == [2 * label for label in dataset["label"]]
    assert rows[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="a task type named 'toy-doubled' is already registered"):
        register_task_type(DoubledLabels)


def test_a_model_of_no_registered_type_falls_back_to_classification(doubled):
    from transformers import Dinov2Config, Dinov2Model

    backbone = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    assert task_type_of(backbone).name == "image-classification"  # no type claims a bare backbone
    assert task_type_of(tiny_dinov2()).name == "toy-doubled"  # the latest registered type is asked first


class _NoTarget(TaskType):
    name = "toy-no-target"

    def model_class(self):
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("act", "error", "match"),
    [
        (
            lambda: register_task_type(object()),
            TypeError,
            "a task type subclasses TaskType; got object",
        ),
        (
            lambda: register_task_type(type("Nameless", (DoubledLabels,), {"name": ""})),
            ValueError,
            "Nameless has no name",
        ),
        (
            lambda: register_task_type(_NoTarget),
            TypeError,
            r"_NoTarget does not implement render_target\(\) and evaluate\(\)",
        ),
        (
            lambda: unregister_task_type("image-classification"),
            ValueError,
            "is a built-in task type and stays",
        ),
        (
            lambda: unregister_task_type("nope"),
            ValueError,
            "unknown task type 'nope'; registered: image-class",
        ),
    ],
)
def test_malformed_task_types_are_refused_with_the_reason(act, error, match):
    with pytest.raises(error, match=match):
        act()
    assert available_task_types() == ("image-classification", "image-segmentation")


def test_the_distillation_data_renders_targets_through_the_students_task_type(doubled, monkeypatch):
    """The trainer's datasets ask the student's task type for each row's target: a task type that
    claims the student (here by a marker) changes the targets without touching the trainer."""
    from hf_task_distill.data import PairedViews, ViewSpec
    from hf_task_distill.distillation_data import prepare_dataset
    from hf_task_distill.models import create_student

    student = create_student("test_resnet", list(LABELS), image_size=32)
    monkeypatch.setattr(
        DoubledLabels, "matches_model", lambda self, model: getattr(model, "toy_marker", False)
    )
    spec = ViewSpec(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = make_colour_dataset(4, seed=0)

    def labels():
        rows = prepare_dataset(
            dataset,
            views=lambda: PairedViews(spec, spec),
            student=student,
            has_teacher=True,
            train=True,
            num_labels=len(LABELS),
            where="train_dataset",
        )
        return [rows[i]["labels"] for i in range(len(dataset))]

    assert labels() == dataset["label"]  # classification: the class id
    student.toy_marker = True
    assert task_type_of(student).name == "toy-doubled"
    assert labels() == [2 * label for label in dataset["label"]]


def test_a_students_card_takes_its_results_columns_and_pipeline_tag_from_its_task_type(doubled):
    from hf_task_distill.hub.cards import StudentCardData, render_student_card

    data = StudentCardData(
        model_name="m",
        architecture="resnet18",
        label_names=["a", "b"],
        task_type="toy-doubled",
        results={"student, distilled + finetuned": {"error": 0.25}},
        eval_split="test",
        eval_images=8,
        task_name="toy",
    )
    card = render_student_card(data)
    assert "| model | error |\n|---|---:|\n| student, distilled + finetuned | 0.2500 |" in card.text
    assert card.data.pipeline_tag == "toy-doubled" and "toy-doubled" in card.data.tags
    assert card.data.eval_results[0].metric_type == "error"
    data.results = {"student, distilled + finetuned": {"accuracy": 0.5}}
    with pytest.raises(ValueError, match=r"results lack the toy-doubled metrics .*'error'"):
        render_student_card(data)
