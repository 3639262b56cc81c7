"""Teacher finetuning for segmentation: UperNet over a VFM backbone under the four strategies."""

from __future__ import annotations

import pytest
import torch

SEGMENTATION = "image-segmentation"


@pytest.fixture(scope="module")
def world_task():
    from hf_task_distill.data import load_target_task
    from hf_task_distill.demo.segmentation import SegmentationWorldConfig, segmentation_world_task

    splits, names = segmentation_world_task(
        seed=0,
        label_budget=8,
        validation_images=4,
        test_images=4,
        config=SegmentationWorldConfig(image_size=32),
    )
    return load_target_task(splits, label_names=names, name="world")


def _finetune(task, tmp_path, strategy, **overrides):
    from hf_task_distill.teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments

    args = TeacherFinetuningArguments(
        output_dir=str(tmp_path / strategy),
        teacher_strategy=strategy,
        num_train_epochs=1,
        teacher_probe_epochs=1,
        per_device_train_batch_size=4,
        report_to="none",
        disable_tqdm=True,
        **overrides,
    )
    finetuner = TeacherFinetuner(
        "mini-vfm", task, args, model_kwargs={"head_channels": 16, "auxiliary_head": False}
    )
    return finetuner, finetuner.train()


def test_linear_strategy_trains_the_head_and_leaves_the_backbone_bit_identical(world_task, tmp_path):
    from hf_task_distill.models.segmentation import segmentation_teacher

    torch.manual_seed(0)
    untrained = segmentation_teacher(
        "mini-vfm", world_task.label_names, head_channels=16, auxiliary_head=False
    )
    finetuner, result = _finetune(world_task, tmp_path, "linear")
    trained = result.model.state_dict()
    backbone = [k for k in trained if k.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[k], untrained.state_dict()[k]) for k in backbone), (
        "the frozen backbone changed (weights or BatchNorm statistics)"
    )
    head = [k for k in trained if k.startswith("decode_head.") and trained[k].is_floating_point()]
    assert any(not torch.equal(trained[k], untrained.state_dict()[k]) for k in head)
    assert set(result.metrics) >= {"mean_iou", "pixel_accuracy"} and 0 <= result.metrics["mean_iou"] <= 1


def test_full_strategy_saves_a_teacher_the_task_type_loads(world_task, tmp_path):
    from hf_task_distill.tasks import get_task_type, task_type_of

    finetuner, result = _finetune(world_task, tmp_path, "full")
    folder = finetuner.save(tmp_path / "teacher")
    segmentation = get_task_type(SEGMENTATION)
    teacher = segmentation.load_model(folder)
    assert task_type_of(teacher).name == SEGMENTATION
    assert teacher.config.id2label == dict(enumerate(world_task.label_names))
    metrics, per_class = segmentation.evaluate(
        teacher, world_task["test"], task=world_task, batch_size=4, where="t"
    )
    assert list(per_class) == world_task.label_names and 0 <= metrics["mean_iou"] <= 1


def test_lora_on_a_backbone_without_attention_is_refused_by_name(world_task, tmp_path):
    with pytest.raises(ValueError, match=r"(?i)attention|lora"):
        _finetune(world_task, tmp_path, "lora")
