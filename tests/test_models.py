"""Teachers and students: loading rules, and a saved student that works in transformers, pipeline and timm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import LABELS, colour_image, distill_args, tiny_dinov2, tiny_processor
from transformers import AutoModelForImageClassification, pipeline

from hf_task_distill import DistillationTrainer, create_student, load_teacher
from hf_task_distill.models import check_label_spaces_match, is_timm_architecture


@pytest.fixture(scope="module")
def distilled_student_dir(tmp_path_factory, trained_teacher_dir, colour_splits):
    """A student saved by the Trainer itself (trainer.save_model), after a short distillation."""
    folder = tmp_path_factory.mktemp("student")
    teacher = load_teacher(str(trained_teacher_dir))
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    args = distill_args(folder, max_steps=3, per_device_train_batch_size=16)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=colour_splits["transfer"]
    )
    trainer.train()
    trainer.save_model(str(folder / "model"))
    return folder / "model", student


def test_saved_student_reloads_everywhere_with_the_same_logits(distilled_student_dir):
    folder, student = distilled_student_dir
    student.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = student(pixel_values=x).logits

        reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
        torch.testing.assert_close(reloaded(pixel_values=x).logits, reference)
        assert reloaded.config.id2label == dict(enumerate(LABELS))

        in_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        torch.testing.assert_close(in_timm(x), reference)
        assert in_timm.pretrained_cfg["label_names"] == LABELS

    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    image = colour_image(0, np.random.default_rng(0), (40, 40))
    predictions = classifier(image, top_k=4)
    assert sorted(p["label"] for p in predictions) == sorted(LABELS)
    # the pipeline preprocesses exactly as the student's own eval transform: same top class and scores
    from hf_task_distill.data import PairedViews, ViewSpec

    spec = ViewSpec.from_model(reloaded)
    pixels = PairedViews(spec, spec).transform(train=False)({"image": [image]})["pixel_values"][0]
    with torch.no_grad():
        probs = reloaded(pixel_values=pixels[None]).logits.softmax(-1)[0]
    assert predictions[0]["label"] == LABELS[int(probs.argmax())]
    assert predictions[0]["score"] == pytest.approx(float(probs.max()), abs=0.02)


def test_student_starts_from_timms_own_initialisation():
    torch.manual_seed(3)
    wrapped = create_student("test_resnet", LABELS, image_size=32)
    torch.manual_seed(3)
    native = timm.create_model("test_resnet", num_classes=4)
    for key, value in native.state_dict().items():
        torch.testing.assert_close(wrapped.timm_model.state_dict()[key], value)


def test_a_from_scratch_student_does_not_name_timms_weights_as_its_source(tmp_path):
    """timm's registry names the ImageNet weights of ``test_resnet``; a student built without them
    must not carry that Hub id or URL into its config.json (the card and timm would read it)."""
    create_student("test_resnet", LABELS, image_size=32).save_pretrained(tmp_path / "s")
    saved = (tmp_path / "s" / "config.json").read_text()
    assert timm.models.get_pretrained_cfg("test_resnet").hf_hub_id  # what the old code copied in
    assert '"url"' not in saved and '"hf_hub_id"' not in saved
    in_timm = timm.create_model(f"local-dir:{tmp_path / 's'}", pretrained=True)
    assert list(in_timm.pretrained_cfg["input_size"]) == [3, 32, 32]


def test_crop_pct_sets_a_timm_students_evaluation_crop_and_other_students_refuse_it(tmp_path):
    """crop_pct 1.0 on a student whose input size is the images' size: its evaluation view, its saved
    processor (PIL) and timm's loader keep the image as it is; timm's own 0.95 (resnet18) would not."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from hf_task_distill.data import ViewSpec

    assert timm.models.get_pretrained_cfg("resnet18").crop_pct == 0.95  # what the crop replaces
    student = create_student("resnet18", LABELS, image_size=32, crop_pct=1.0)
    assert ViewSpec.from_model(student).crop_pct == 1.0
    student.save_pretrained(tmp_path / "s")
    assert timm.create_model(f"local-dir:{tmp_path / 's'}").pretrained_cfg["crop_pct"] == 1.0
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    spec = ViewSpec.from_model(student)
    mean, std = np.asarray(spec.mean)[:, None, None], np.asarray(spec.std)[:, None, None]
    expected = (pixels.transpose(2, 0, 1) / 255.0 - mean) / std
    for crop, most in ((1.0, 1e-5), (0.95, None)):
        folder = tmp_path / f"crop{crop}"
        create_student("resnet18", LABELS, image_size=32, crop_pct=crop).save_pretrained(folder)
        processed = AutoImageProcessor.from_pretrained(folder)(Image.fromarray(pixels), return_tensors="pt")
        difference = np.abs(processed["pixel_values"][0].numpy() - expected).max()
        assert difference <= most if most else difference > 0.1, (crop, difference)
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\], got 1\.2"):
        create_student("resnet18", LABELS, crop_pct=1.2)
    tiny_dinov2().save_pretrained(tmp_path / "dinov2")
    tiny_processor().save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ValueError, match=r"crop_pct applies to timm students; '.*dinov2' is a dinov2 model"):
        create_student(str(tmp_path / "dinov2"), LABELS, crop_pct=1.0)


def test_student_from_an_hf_folder_gets_a_new_head(tmp_path):
    folder = tmp_path / "s"
    create_student("test_resnet", LABELS, image_size=32).save_pretrained(folder)
    three = create_student(str(folder), ["x", "y", "z"], pretrained=True)
    assert three.config.num_labels == 3 and three.config.id2label[2] == "z"
    assert is_timm_architecture("mobilevitv2_100") and is_timm_architecture("fastvit_t8.apple_in1k")
    assert not is_timm_architecture("facebook/dinov2-large")


def test_teacher_loading_rules(tmp_path):
    classifier_dir, backbone_dir = tmp_path / "clf", tmp_path / "backbone"
    tiny_dinov2().save_pretrained(classifier_dir)
    tiny_processor().save_pretrained(classifier_dir)
    from transformers import Dinov2Model

    Dinov2Model(tiny_dinov2().config).save_pretrained(backbone_dir)

    teacher = load_teacher(str(classifier_dir))
    assert teacher.config.id2label == dict(enumerate(LABELS))
    same = load_teacher(str(classifier_dir), labels=LABELS)  # head already predicts these labels: kept
    torch.testing.assert_close(same.classifier.weight, teacher.classifier.weight)

    with pytest.raises(ValueError, match="backbone without a classification head"):
        load_teacher(str(backbone_dir))
    fresh = load_teacher(str(backbone_dir), labels=["a", "b", "c"])
    assert fresh.config.num_labels == 3 and fresh.classifier.out_features == 3


def test_label_space_checks():
    teacher = tiny_dinov2()
    check_label_spaces_match(teacher, create_student("test_resnet", LABELS, image_size=32))
    check_label_spaces_match(
        teacher, create_student("test_resnet", 4, image_size=32)
    )  # unnamed labels: count only
    with pytest.raises(ValueError, match="label names must be unique"):
        create_student("test_resnet", ["a", "a"])


def test_the_shipped_model_name_works_in_every_entry_point(colour_splits):
    """Issue 15.8: `demo --help` showed the teacher 'mini-vfm', but `run --teacher mini-vfm` failed (the
    name went to the Hub). Every entry point that loads a model takes it now."""
    from hf_task_distill import TeacherFinetuner, TeacherFinetuningArguments
    from hf_task_distill.config import PipelineConfig
    from hf_task_distill.retrieval import ImageEncoder

    assert (
        PipelineConfig.from_dict({"dataset": "digits", "teacher": "mini-vfm"}).teacher.teacher == "mini-vfm"
    )
    assert load_teacher("mini-vfm", labels=LABELS).config.num_labels == len(LABELS)
    encoder = ImageEncoder.from_pretrained("mini-vfm")
    assert encoder.name == "mini-vfm" and encoder.spec.size == (32, 32)
    args = TeacherFinetuningArguments(output_dir="unused", report_to="none")
    task = {"train": colour_splits["train"], "test": colour_splits["test"]}
    from datasets import DatasetDict

    assert TeacherFinetuner("mini-vfm", DatasetDict(task), args).spec.size == (32, 32)
    student = create_student("mini-vfm", LABELS)  # its architecture, from scratch
    assert student.config.architecture == "resnet10t" and student.config.num_labels == len(LABELS)


def test_a_student_started_afresh_from_a_timm_folder_saves_what_timm_loads(tmp_path):
    """Before: create_student(folder) (not pretrained) went through from_config, and every stage saved
    `timm_model.`-prefixed keys, which the card's own `timm.create_model("local-dir:.")` cannot load."""
    from safetensors import safe_open

    create_student("test_resnet", LABELS, image_size=40, model_args={"drop_rate": 0.1}).save_pretrained(
        tmp_path / "start"
    )
    student = create_student(str(tmp_path / "start"), ["w", "x", "y", "z"])
    student.save_pretrained(tmp_path / "student")
    with safe_open(str(tmp_path / "student" / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if k.startswith("timm_model.")]
    in_timm = timm.create_model(f"local-dir:{tmp_path / 'student'}", pretrained=True)
    assert in_timm.pretrained_cfg["label_names"] == ["w", "x", "y", "z"]
    assert list(student.config.pretrained_cfg["input_size"]) == [3, 40, 40]  # the folder's, not timm's
    assert student.config.model_args == {"drop_rate": 0.1}
