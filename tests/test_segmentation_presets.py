"""Segmentation presets: the ADE20K registry entry, task types in the registry, and budgets in images."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_colour_dataset

from hf_task_distill.data import TaskSpec, get_task_spec, list_tasks, load_target_task
from hf_task_distill.data.budget import image_budget_indices

# ---- the registry ---------------------------------------------------------------------------


def test_ade20k_entry_is_a_segmentation_task_with_the_papers_budgets():
    spec = get_task_spec("ADE20K")
    assert spec.task_type == "image-segmentation"
    assert spec.num_classes == 150 and len(spec.label_names) == 150 and len(set(spec.label_names)) == 150
    assert spec.label_names[:4] == ["wall", "building", "sky", "floor"] and spec.label_names[-1] == "flag"
    assert all(name == name.strip() for name in spec.label_names)
    assert spec.paper_label_budgets == {"images": [1200, 2401, 4802, 9605, 19210]}
    assert spec.reduce_labels and spec.ignore_index == 255
    assert spec.splits["train"] == "train" and "test" in spec.splits and "validation" not in spec.splits
    assert spec.verified and "NOT verified" in spec.notes  # says what could not be checked offline


def test_the_classification_presets_keep_their_task_type():
    classification = [name for name in list_tasks() if name != "ade20k"]
    assert {"cub", "eurosat", "ham10000", "places365", "imagenet"} <= set(classification)
    for name in classification:
        spec = get_task_spec(name)
        assert spec.task_type == "image-classification" and not spec.reduce_labels, name


def test_task_spec_defaults_and_refusals():
    spec = TaskSpec.from_dict("mine", {"hub_id": "me/mine"})
    assert (spec.task_type, spec.reduce_labels, spec.ignore_index) == ("image-classification", False, 255)
    with pytest.raises(ValueError, match="task 'mine': reduce_labels .* task_type is 'image-classification'"):
        TaskSpec(name="mine", hub_id="me/mine", reduce_labels=True)
    with pytest.raises(ValueError, match="unknown fields \\['mask_column'\\]"):
        TaskSpec.from_dict("mine", {"hub_id": "me/mine", "mask_column": "annotation"})


def test_a_task_loaded_from_a_preset_takes_its_task_type(tmp_path, monkeypatch):
    """The registry path sets ``TargetTask.task_type`` from the spec; other sources stay classification."""
    from hf_task_distill.data import register_task, registry

    monkeypatch.setattr(registry, "_USER_TASKS", {})  # the registration ends with the test
    data = tmp_path / "data"
    data.mkdir()
    make_colour_dataset(24, seed=0).to_parquet(str(data / "train-00000.parquet"))
    register_task(TaskSpec(name="colours-typed", hub_id=str(tmp_path), task_type="image-classification"))
    task = load_target_task("colours-typed")
    assert task.task_type == "image-classification" and task.spec.task_type == "image-classification"
    # a preset naming a task type no loader reads is refused, listing the registered ones
    register_task(TaskSpec(name="colours-odd", hub_id=str(tmp_path), task_type="image-typed-test"))
    with pytest.raises(
        ValueError, match=r"unknown task type 'image-typed-test'; registered: image-classification"
    ):
        load_target_task("colours-odd")
    # a segmentation preset whose data has no mask column says so
    register_task(TaskSpec(name="colours-masks", hub_id=str(tmp_path), task_type="image-segmentation"))
    with pytest.raises(
        ValueError, match=r"segmentation task but its column 'label' holds ClassLabel.*not masks"
    ):
        load_target_task("colours-masks")
    assert load_target_task(make_colour_dataset(24, seed=0)).task_type == "image-classification"


# ---- label budgets in images ----------------------------------------------------------------


def test_image_budget_is_exact_seeded_and_nested():
    ten = image_budget_indices(100, 10, seed=0)
    assert len(ten) == 10 == len(set(ten.tolist())) and np.all(np.diff(ten) > 0) and ten.max() < 100
    assert np.array_equal(ten, image_budget_indices(100, 10, seed=0))
    assert not np.array_equal(ten, image_budget_indices(100, 10, seed=1))
    assert set(ten.tolist()) <= set(image_budget_indices(100, 40, seed=0).tolist())  # smaller within larger
    assert np.array_equal(image_budget_indices(7, 7, seed=3), np.arange(7))


def test_task_image_budget_records_what_it_kept(colour_splits):
    task = load_target_task(colour_splits["train"], name="colours")
    cut = task.with_label_budget(images=25, seed=4)
    assert len(cut["train"]) == 25 and len(task["train"]) == 160
    assert cut.label_budget == {"split": "train", "images": 25, "seed": 4, "size": 25}
    again = task.with_label_budget(images=25, seed=4)
    assert cut["train"]["label"] == again["train"]["label"]
    rows = image_budget_indices(160, 25, seed=4).tolist()
    assert cut["train"]["label"] == [task["train"]["label"][i] for i in rows]


BAD_IMAGE_BUDGETS = [
    ({"images": 0}, ValueError, "images must be at least 1, got 0"),
    ({"images": -3}, ValueError, "images must be at least 1"),
    ({"images": 161}, ValueError, "images=161 is more than split 'train' has \\(160 images\\)"),
    ({"images": 2.5}, TypeError, "images must be an integer"),
    (
        {"images": 10, "per_class": 2},
        ValueError,
        "images= .* cannot be combined with per_class= or fraction=",
    ),
    ({"images": 10, "fraction": 0.5}, ValueError, "cannot be combined with per_class= or fraction="),
    ({}, ValueError, "give exactly one label budget: per_class=, fraction= or images="),
]


@pytest.mark.parametrize(
    "kwargs,error,message", BAD_IMAGE_BUDGETS, ids=[str(b[0]) for b in BAD_IMAGE_BUDGETS]
)
def test_bad_image_budgets_are_refused_naming_the_option(colour_splits, kwargs, error, message):
    task = load_target_task(colour_splits["train"], name="colours")
    with pytest.raises(error, match=message):
        task.with_label_budget(seed=0, **kwargs)


def test_a_segmentation_task_takes_only_a_budget_in_images(colour_splits):
    from dataclasses import replace

    task = replace(load_target_task(colour_splits["train"], name="scenes"), task_type="image-segmentation")
    with pytest.raises(ValueError, match="task 'scenes' is image-segmentation: .* give images="):
        task.with_label_budget(per_class=3)
    assert len(task.with_label_budget(images=12, seed=0)["train"]) == 12
