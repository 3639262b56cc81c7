"""Student families and export formats are registries: a new kind of student or of exported file is
registered from outside the package (here, from this file alone) and used by ``create_student``,
``ViewSpec.from_model``, the heads the feature losses read, ``DistillationTrainer`` and
``export_student``; the built-in families keep deciding what they decided before."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import LABELS, distill_args, make_colour_dataset, tiny_dinov2, tiny_processor
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from hf_task_distill import DistillationTrainer, PairedViews, ViewSpec, create_student
from hf_task_distill.export import (
    ExportFormat,
    available_export_formats,
    export_student,
    register_export_format,
    unregister_export_format,
)
from hf_task_distill.models import label_config_kwargs
from hf_task_distill.models.families import (
    StudentFamily,
    available_student_families,
    register_student_family,
    student_families_of,
    student_family_for,
    unregister_student_family,
)
from hf_task_distill.models.heads import capture_head_inputs, find_classification_head
from hf_task_distill.sources import check_model_source

# --- a toy student family: a tiny CNN, named "tiny-cnn:<width>" ----------------------------------


class TinyCNNConfig(PretrainedConfig):
    model_type = "tiny_cnn_registry_test"

    def __init__(self, width: int = 8, image_size: int = 24, **kwargs):
        super().__init__(**kwargs)
        self.width, self.image_size = width, image_size


class TinyCNN(PreTrainedModel):
    """Features -> ``scores`` (the classifier) -> ``calibration`` (a square layer on the logits):
    the generic head search would pick ``calibration``, the last layer with one output per class."""

    config_class = TinyCNNConfig
    main_input_name = "pixel_values"

    def __init__(self, config: TinyCNNConfig):
        super().__init__(config)
        self.body = nn.Sequential(
            nn.Conv2d(3, config.width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.scores = nn.Linear(config.width, config.num_labels)
        self.calibration = nn.Linear(config.num_labels, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values, labels=None, **_):
        return ImageClassifierOutput(logits=self.calibration(self.scores(self.body(pixel_values))))


TINY_VIEW_MEAN, TINY_VIEW_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class TinyCNNFamily(StudentFamily):
    name = "tiny-cnn-test"

    def matches(self, name_or_path: str) -> bool:
        return name_or_path.startswith("tiny-cnn:")

    def check(self, name_or_path: str, what: str) -> None:
        if not name_or_path.partition(":")[2].isdigit():
            raise ValueError(f"{what}: '{name_or_path}' needs a width, e.g. tiny-cnn:8")

    def create(self, name_or_path, labels, *, pretrained=False, image_size=None, model_args=None, **_):
        if pretrained:
            raise ValueError("tiny-cnn has no pretrained weights")
        width = int(name_or_path.partition(":")[2])
        config = TinyCNNConfig(width=width, image_size=image_size or 24, **label_config_kwargs(labels))
        return TinyCNN(config)

    def owns(self, model) -> bool:
        return isinstance(model, TinyCNN)

    def view_spec(self, model):
        size = model.config.image_size
        return ViewSpec(size=(size, size), mean=TINY_VIEW_MEAN, std=TINY_VIEW_STD, interpolation="bilinear")

    def head(self, model):
        return model.scores


@pytest.fixture
def tiny_family():
    family = TinyCNNFamily()
    register_student_family(family)
    try:
        yield family
    finally:
        unregister_student_family(family.name)


# --- the built-in families ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, family",
    [
        ("resnet18", "timm"),
        ("test_resnet", "timm"),
        ("mobilevitv2_100.cvnets_in1k", "timm"),
        ("timm/mobilevitv2_100.cvnets_in1k", "transformers"),  # a Hub repo, even of a timm model
        ("facebook/dinov2-small", "transformers"),
        ("mini-vfm", "transformers"),
        ("./students/start", "transformers"),
        ("resnet18x", "transformers"),  # not timm's: check_model_source refuses it before any family
    ],
)
def test_the_built_in_families_take_the_names_they_took_before(name, family):
    assert available_student_families() == ["timm", "transformers"]
    assert student_family_for(name).name == family


def test_the_built_in_families_read_the_models_they_build(tmp_path):
    student = create_student("test_resnet", LABELS, image_size=32)
    assert type(student).__name__ == "TimmWrapperForImageClassification"
    assert [f.name for f in student_families_of(student)] == ["timm", "transformers"]
    assert ViewSpec.from_model(student).size == (32, 32)  # timm's pretrained_cfg, as set
    assert find_classification_head(student)[0] == "timm_model.fc"
    assert [f.name for f in student_families_of(tiny_dinov2())] == ["transformers"]


# --- a registered family, end to end -------------------------------------------------------------


def test_a_registered_family_is_built_by_create_student_and_read_through_its_own_view_and_head(tiny_family):
    student = create_student("tiny-cnn:6", LABELS, image_size=20)
    assert isinstance(student, TinyCNN) and student.scores.in_features == 6
    assert student.config.id2label == dict(enumerate(LABELS))
    assert student_family_for("tiny-cnn:6") is tiny_family
    assert student_family_for("resnet18").name == "timm"  # the others are still asked after it
    check_model_source("tiny-cnn:6", "--student", timm_architectures=True)  # what the CLI's settings run

    spec = ViewSpec.from_model(student)
    assert (spec.size, spec.mean, spec.std) == ((20, 20), TINY_VIEW_MEAN, TINY_VIEW_STD)
    assert find_classification_head(student) == ("scores", student.scores)  # not "calibration"
    with capture_head_inputs(student) as captured:
        student(pixel_values=torch.zeros(2, 3, 20, 20))
    assert captured[-1].shape == (2, 6)  # the features, the head's input


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("tiny-cnn:wide", r"student: 'tiny-cnn:wide' needs a width"),  # the family's own check
        ("resnet18x", r"student: unknown timm model 'resnet18x'; did you mean resnet18"),  # as before
    ],
)
def test_a_registered_family_checks_its_names_and_leaves_the_others_to_the_built_in_checks(
    tiny_family, name, pattern
):
    with pytest.raises(ValueError, match=pattern):
        create_student(name, LABELS)


def test_a_student_of_a_registered_family_distils_with_a_feature_loss(tiny_family, tmp_path):
    torch.manual_seed(0)
    student = create_student("tiny-cnn:8", LABELS, image_size=24)
    teacher = tiny_dinov2()
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    views = PairedViews(ViewSpec.from_image_processor(tiny_processor()), ViewSpec.from_model(student))
    args = distill_args(tmp_path, loss_name="feature_cosine", per_device_train_batch_size=8, logging_steps=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=make_colour_dataset(16, seed=5, labelled=False),
        views=views,
    )
    # the projection maps the family's head input (width 8, not calibration's 4) to the teacher's features
    assert tuple(student.feature_projection.weight.shape) == (teacher.classifier.in_features, 8)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = student.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert "body.0.weight" in changed and "scores.weight" not in changed  # features trained, not the head


def test_an_unregistered_family_is_gone(tmp_path):
    register_student_family(TinyCNNFamily())
    unregister_student_family(TinyCNNFamily.name)
    assert available_student_families() == ["timm", "transformers"]
    with pytest.raises(ValueError, match="neither a folder here nor a Hub model id"):
        create_student("tiny-cnn:6", LABELS)


class _Nameless(StudentFamily):
    pass


class _MatchesNothing(StudentFamily):
    """Found by the newcomer try: a family without matches() made every create_student raise."""

    name = "half-done"

    def create(self, name_or_path, labels, **kwargs):
        raise AssertionError("never called")


class _NoExport(ExportFormat):
    """Found by the newcomer try: a format without export() failed after others had written files."""

    name = "no-export"


@pytest.mark.parametrize(
    "act, error, pattern",
    [
        (lambda: register_student_family(TinyCNNFamily), ValueError, r"named 'tiny-cnn-test' is already"),
        (lambda: register_student_family(_Nameless), ValueError, r"_Nameless has no name"),
        (lambda: register_student_family(object()), TypeError, r"subclasses StudentFamily; got object"),
        (
            lambda: register_student_family(_MatchesNothing),
            TypeError,
            r"_MatchesNothing does not implement matches\(\)",
        ),
        (lambda: register_export_format(_NoExport), TypeError, r"_NoExport does not implement export\(\)"),
        (lambda: unregister_student_family("timm"), ValueError, r"'timm' is a built-in student family"),
        (
            lambda: unregister_student_family("nope"),
            ValueError,
            r"unknown student family 'nope'; registered: ",
        ),
    ],
)
def test_bad_family_registrations_are_refused_by_name(tiny_family, act, error, pattern):
    with pytest.raises(error, match=pattern):
        act()
    assert available_student_families() == ["tiny-cnn-test", "timm", "transformers"]


# --- export formats --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registries") / "student"
    create_student("test_resnet", LABELS, image_size=32).save_pretrained(folder)
    return str(folder)


class ParameterSummary(ExportFormat):
    """A toy format: the weights' shapes and total size, as JSON."""

    name = "summary-test"

    def export(self, model_folder, output_dir):
        from safetensors import safe_open

        with safe_open(os.path.join(model_folder, "model.safetensors"), "pt") as weights:
            shapes = {key: list(weights.get_slice(key).get_shape()) for key in weights.keys()}
        path = os.path.join(output_dir, "summary.json")
        total = sum(int(torch.tensor(shape).prod()) for shape in shapes.values())
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"parameters": total, "shapes": shapes}, f)
        return [path]


@pytest.fixture
def summary_format():
    register_export_format(ParameterSummary)
    try:
        yield
    finally:
        unregister_export_format(ParameterSummary.name)


def test_the_safetensors_format_is_the_model_folder_and_what_a_run_publishes(student_folder, tmp_path):
    from transformers import AutoModelForImageClassification

    # what a run publishes is this format's export: tests/test_publishing.py compares a published
    # student with export_student's files
    files = export_student(student_folder, output_dir=tmp_path / "out")["safetensors"]
    assert sorted(os.path.basename(f) for f in files) == [
        "config.json",
        "model.safetensors",
    ]  # no processor saved
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == dict(enumerate(LABELS))
    in_place = export_student(student_folder)["safetensors"]  # into the folder itself: nothing copied
    assert in_place == [os.path.join(student_folder, n) for n in ("config.json", "model.safetensors")]


def test_a_registered_export_format_runs_beside_the_built_in_one(student_folder, summary_format, tmp_path):
    assert available_export_formats() == ["onnx", "onnx-int8", "safetensors", "summary-test"]
    written = export_student(student_folder, ["safetensors", "summary-test"], tmp_path / "out")
    assert list(written) == ["safetensors", "summary-test"]
    with open(written["summary-test"][0], encoding="utf-8") as f:
        summary = json.load(f)
    student = create_student("test_resnet", LABELS, image_size=32)
    assert summary["parameters"] == sum(v.numel() for v in student.timm_model.state_dict().values())


def _folder_without(tmp_path, student_folder, *removed, add=()):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(student_folder, folder)
    for name in removed:
        os.remove(folder / name)
    for name in add:
        (folder / name).write_bytes(b"")
    return str(folder)


@pytest.mark.parametrize(
    "make, formats, pattern",
    [
        (
            lambda t, s: s,
            ["torchscript"],
            r"unknown export format 'torchscript'; registered: onnx, onnx-int8, safetensors$",
        ),
        (lambda t, s: s, [], r"no export format given; registered: onnx, onnx-int8, safetensors$"),
        (
            lambda t, s: str(t / "nowhere"),
            "safetensors",
            r"'.*nowhere' is not a student folder: no such folder",
        ),
        (
            lambda t, s: os.path.join(s, "config.json"),
            "safetensors",
            r"'.*config.json' is not a student folder: a file",
        ),
        (
            lambda t, s: _folder_without(t, s, "model.safetensors"),
            "safetensors",
            r"'.*bad' is not a student folder: it has no model.safetensors$",
        ),
        (
            lambda t, s: _folder_without(t, s, "model.safetensors", "config.json", add=["pytorch_model.bin"]),
            "safetensors",
            r"it has no config.json and no model.safetensors \(it has pickle weights, pytorch_model.bin",
        ),
    ],
    ids=["unknown-format", "no-format", "no-folder", "a-file", "no-weights", "pickle-weights"],
)
def test_bad_exports_are_refused_by_name_before_anything_is_written(
    student_folder, tmp_path, make, formats, pattern
):
    with pytest.raises(ValueError, match=pattern):
        export_student(make(tmp_path, student_folder), formats, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_formats_own_check_stops_the_export_before_any_format_writes(student_folder, tmp_path):
    class NeedsAPackage(ExportFormat):
        name = "needs-a-package-test"

        def check(self, model_folder):
            raise ImportError("needs-a-package-test needs `pip install something`")

        def export(self, model_folder, output_dir):  # pragma: no cover - never reached
            raise AssertionError("exported despite a failed check")

    register_export_format(NeedsAPackage())
    try:
        with pytest.raises(ImportError, match="pip install something"):
            export_student(student_folder, ["safetensors", "needs-a-package-test"], tmp_path / "out")
    finally:
        unregister_export_format("needs-a-package-test")
    assert not (tmp_path / "out").exists()
    assert available_export_formats() == ["onnx", "onnx-int8", "safetensors"]
