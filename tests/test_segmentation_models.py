"""Segmentation models: UperNet teachers on a VFM's backbone, and SegFormer/MobileViTv2 students.

Teachers are built from a tiny DINOv2 saved in ``tmp_path`` and from the shipped mini-VFM (a timm
model); their backbone must hold the VFM's weights bit for bit, and their saved folder must reload
with plain transformers. Students are tiny configurations of the two built-in architectures, saved
and run through ``pipeline("image-segmentation")``. All offline, at <= 64 px.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_dinov2, tiny_processor, tiny_vit_kwargs
from PIL import Image

from hf_task_distill.data.views import ViewSpec
from hf_task_distill.models import create_student
from hf_task_distill.models.families.transformers_segmentation import segmentation_image_processor
from hf_task_distill.models.segmentation import (
    backbone_parameter_names,
    head_parameter_names,
    segmentation_teacher,
    segmentation_teacher_processor,
)
from hf_task_distill.sources import resolve_model_source

CLASSES = ["background", "road", "car"]
TINY_SEGFORMER = {"hidden_sizes": [16, 32, 40, 64], "decoder_hidden_size": 32}
TINY_MOBILEVIT = {"width_multiplier": 0.25, "aspp_out_channels": 16}
SEG = "image-segmentation"


def _logits(model, pixels):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    """A 4-layer DINOv2 saved as a bare backbone (Dinov2Model), with its processor."""
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**{**tiny_vit_kwargs(32), "num_hidden_layers": 4})).save_pretrained(folder)
    tiny_processor(32).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def mini_vfm():
    from transformers import TimmWrapperForImageClassification

    return TimmWrapperForImageClassification.from_pretrained(resolve_model_source("mini-vfm"))


def test_dinov2_teacher_backbone_is_the_vfm(dinov2_folder):
    from transformers import Dinov2Model, UperNetForSemanticSegmentation

    teacher = segmentation_teacher(dinov2_folder, CLASSES, head_channels=16)
    assert isinstance(teacher, UperNetForSemanticSegmentation)
    assert teacher.config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert teacher.config.backbone_config.reshape_hidden_states is True
    assert teacher.auxiliary_head is not None  # 4 stages: the auxiliary head reads the third
    vfm = Dinov2Model.from_pretrained(dinov2_folder).state_dict()
    backbone = teacher.backbone.state_dict()
    assert set(backbone) == set(vfm)
    assert all(torch.equal(backbone[k], vfm[k]) for k in vfm)
    assert teacher.config.id2label == dict(enumerate(CLASSES))
    assert teacher.config.loss_ignore_index == 255
    pixels = torch.randn(2, 3, 32, 32)
    assert _logits(teacher, pixels).shape == (2, 3, 32, 32)


def test_teacher_from_a_classifier_checkpoint_drops_its_head(tmp_path):
    """A DINOv2 saved with a classification head (keys prefixed ``dinov2.``): its backbone tensors load,
    its head is dropped; 2 layers give 2 stages, so no auxiliary head."""
    vfm = tiny_dinov2()
    vfm.save_pretrained(tmp_path)
    teacher = segmentation_teacher(str(tmp_path), 2, head_channels=16)
    assert teacher.auxiliary_head is None
    backbone = teacher.backbone.state_dict()
    assert all(
        torch.equal(t, backbone[k.removeprefix("dinov2.")])
        for k, t in vfm.state_dict().items()
        if k.startswith("dinov2.")
    )
    with pytest.raises(ValueError, match="auxiliary head reads the third"):
        segmentation_teacher(str(tmp_path), 2, auxiliary_head=True)


def test_teacher_saved_folder_reloads_with_identical_logits(dinov2_folder, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    teacher = segmentation_teacher(dinov2_folder, CLASSES, head_channels=16)
    teacher.save_pretrained(tmp_path)
    segmentation_teacher_processor(dinov2_folder).save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    saved, loaded = teacher.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    pixels = torch.randn(1, 3, 32, 32)
    # the same weights; the logits agree to float rounding only: the reloaded tensors sit at other
    # memory alignments (safetensors), which on some CPUs changes the SIMD summation order (7e-10 seen)
    torch.testing.assert_close(_logits(reloaded, pixels), _logits(teacher, pixels), rtol=0, atol=1e-6)
    # the VFM's size and normalisation, but the whole image: no classification centre crop
    assert type(AutoImageProcessor.from_pretrained(tmp_path)).__name__ == "SegformerImageProcessor"
    vfm = ViewSpec.from_image_processor(tiny_processor(32))
    spec = ViewSpec.from_model(reloaded)
    assert (spec.size, spec.mean, spec.std, spec.interpolation) == (
        vfm.size,
        vfm.mean,
        vfm.std,
        vfm.interpolation,
    )
    assert (spec.eval_mode, spec.crop_pct) == ("squash", 1.0)


def test_a_transformers_vfm_teachers_evaluation_view_is_the_whole_image(dinov2_folder, tmp_path):
    """DINOv2's processor resizes the shorter side and centre-crops: as a segmentation teacher's
    processor it would score only the central square of a wide image, and the Hub pipeline could
    not run the saved teacher (BitImageProcessor has no post_process_semantic_segmentation)."""
    import numpy as np
    from transformers import pipeline

    from hf_task_distill.data.views import eval_view

    spec = ViewSpec.from_image_processor(segmentation_teacher_processor(dinov2_folder))
    view = eval_view((96, 48), spec)
    assert (view.top, view.left, view.height, view.width) == (0, 0, 48, 96)
    teacher = segmentation_teacher(dinov2_folder, CLASSES, head_channels=16)
    teacher.save_pretrained(tmp_path)
    segmentation_teacher_processor(dinov2_folder).save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8))
    masks = pipeline("image-segmentation", model=str(tmp_path))(image)
    assert masks and all(m["mask"].size == (96, 48) and m["label"] in CLASSES for m in masks)


def test_mini_vfm_teacher_is_a_timm_backbone_with_its_weights(mini_vfm, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    teacher = segmentation_teacher("mini-vfm", CLASSES, head_channels=16)
    assert type(teacher.backbone).__name__ == "TimmBackbone"
    assert teacher.backbone.channels == [32, 64, 128, 256]  # the mini-VFM's own narrow channels
    vfm = mini_vfm.timm_model.state_dict()
    backbone = teacher.backbone._backbone.state_dict()
    assert backbone and all(torch.equal(backbone[k], vfm[k]) for k in backbone)
    assert set(vfm) - set(backbone) == {"fc.weight", "fc.bias"}  # only the VFM's classifier is left out
    pixels = torch.randn(2, 3, 64, 64)
    logits = _logits(teacher, pixels)
    assert logits.shape == (2, 3, 64, 64)
    teacher.save_pretrained(tmp_path)
    processor = segmentation_teacher_processor("mini-vfm")
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(reloaded, pixels), logits, rtol=0, atol=1e-6)  # see above
    spec = ViewSpec.from_model(reloaded)
    assert spec.size == (32, 32) and spec.mean == (0.485, 0.456, 0.406) and spec.interpolation == "bicubic"


def test_backbone_and_head_parameters_split_the_teacher(mini_vfm, dinov2_folder):
    from hf_task_distill.teacher_finetuning import lora_target_modules

    teacher = segmentation_teacher("mini-vfm", CLASSES, head_channels=16)
    backbone, head = backbone_parameter_names(teacher), head_parameter_names(teacher)
    everything = [n for n, _ in teacher.named_parameters()]
    assert sorted(backbone + head) == sorted(everything) and not set(backbone) & set(head)
    vfm = mini_vfm.timm_model
    without_classifier = (
        sum(p.numel() for p in vfm.parameters()) - vfm.fc.weight.numel() - vfm.fc.bias.numel()
    )
    assert sum(teacher.get_parameter(n).numel() for n in backbone) == without_classifier
    assert {n.split(".")[0] for n in head} == {"decode_head", "auxiliary_head"}
    with pytest.raises(ValueError, match="no attention projections"):
        lora_target_modules(teacher)  # a CNN backbone: LoRA does not apply
    vit_teacher = segmentation_teacher(dinov2_folder, CLASSES, head_channels=16)
    targets = lora_target_modules(vit_teacher)
    assert targets and all(t.startswith("backbone.encoder.layer.") for t in targets)
    with pytest.raises(ValueError, match="no backbone module"):
        backbone_parameter_names(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("name", "model_args", "class_name", "stride"),
    [
        ("segformer-b0", TINY_SEGFORMER, "SegformerForSemanticSegmentation", 4),
        ("mobilevitv2-deeplabv3", TINY_MOBILEVIT, "MobileViTV2ForSemanticSegmentation", 32),
    ],
)
def test_student_saves_and_runs_in_the_segmentation_pipeline(name, model_args, class_name, stride, tmp_path):
    from transformers import AutoModelForSemanticSegmentation, pipeline

    student = create_student(name, CLASSES, task_type=SEG, image_size=64, model_args=model_args)
    assert type(student).__name__ == class_name
    assert student.config.semantic_loss_ignore_index == 255
    pixels = torch.randn(2, 3, 64, 64)
    logits = _logits(student, pixels)
    assert logits.shape == (2, 3, 64 // stride, 64 // stride)
    spec = ViewSpec.from_model(student)
    assert spec.size == (64, 64) and spec.eval_mode == "squash" and spec.mean == (0.485, 0.456, 0.406)
    student.save_pretrained(tmp_path)
    segmentation_image_processor(student).save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(reloaded, pixels), logits, rtol=0, atol=1e-6)  # see above
    assert ViewSpec.from_model(reloaded) == spec
    segments = pipeline("image-segmentation", model=str(tmp_path))(Image.new("RGB", (48, 40), (20, 180, 40)))
    assert segments and {s["label"] for s in segments} <= set(CLASSES)
    assert all(s["mask"].size == (48, 40) for s in segments)


def test_default_students_are_the_published_architectures():
    segformer = create_student("segformer-b0", 5, task_type=SEG)
    assert (
        list(segformer.config.hidden_sizes) == [32, 64, 160, 256]
        and segformer.config.decoder_hidden_size == 256
    )
    assert 3.5e6 < sum(p.numel() for p in segformer.parameters()) < 4.0e6  # SegFormer-B0: 3.7M
    assert segformer.config.image_size == 512


def test_student_from_a_folder_with_its_weights(tmp_path):
    source = create_student(
        "segformer-b0", ["a", "b"], task_type=SEG, image_size=32, model_args=TINY_SEGFORMER
    )
    source.save_pretrained(tmp_path)
    student = create_student(str(tmp_path), CLASSES, task_type=SEG, pretrained=True)
    assert student.config.id2label == dict(enumerate(CLASSES))
    encoder, mine = source.segformer.state_dict(), student.segformer.state_dict()
    assert all(torch.equal(encoder[k], mine[k]) for k in encoder)  # the body is kept
    assert student.decode_head.classifier.out_channels == 3  # a new head for the new classes
    fresh = create_student(str(tmp_path), CLASSES, task_type=SEG, image_size=48)
    assert fresh.config.image_size == 48
    assert not torch.equal(fresh.segformer.state_dict()[next(iter(encoder))], next(iter(encoder.values())))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: segmentation_teacher(p["vit"], 3), r"vit model, and transformers has no backbone class"),
        (lambda p: segmentation_teacher(p["vit"], 300), r"300 classes; a segmentation task has at most 255"),
        (
            lambda p: create_student("segformer-b9", 3, task_type=SEG),
            r"unknown segmentation student 'segformer-b9'; did you mean segformer-b0",
        ),
        (
            lambda p: create_student("segformer-b0", 3),
            r"'segformer-b0' is a semantic-segmentation student: pass task_type",
        ),
        (lambda p: create_student("resnet18", 3, task_type=SEG), r"unknown segmentation student 'resnet18'"),
        (
            lambda p: create_student(p["vit"], 3, task_type=SEG),
            r"vit model, which transformers has no semantic-segmentation",
        ),
        (
            lambda p: create_student("segformer-b0", 3, task_type=SEG, model_args={"widths": [1]}),
            r"widths are not fields of SegformerConfig",
        ),
        (
            lambda p: create_student("segformer-b0", 3, task_type=SEG, pretrained=True),
            r"built from its configuration",
        ),
        (
            lambda p: create_student("segformer-b0", 3, task_type="object-detection"),
            r"builds image-classification, image-segmentation students, not object-detection",
        ),
    ],
    ids=[
        "vit-no-backbone",
        "too-many-labels",
        "unknown-short-name",
        "missing-task-type",
        "timm-name",
        "vit-student",
        "bad-model-args",
        "pretrained-short-name",
        "unknown-task-type",
    ],
)
def test_bad_segmentation_models_are_refused_by_name(call, error, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    vit = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(**tiny_vit_kwargs(32), num_labels=3)).save_pretrained(vit)
    with pytest.raises(ValueError, match=error):
        call({"vit": str(vit)})


def test_a_backbone_tensor_missing_from_the_checkpoint_is_named(dinov2_folder, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    weights = load_file(f"{dinov2_folder}/model.safetensors")
    del weights["encoder.layer.1.mlp.fc1.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    AutoConfig.from_pretrained(dinov2_folder).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"1 backbone tensor\(s\) are not in its checkpoint: encoder.layer.1.mlp.fc1.weight"
    ):
        segmentation_teacher(str(tmp_path), CLASSES)
