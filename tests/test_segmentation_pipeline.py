"""`hf-task-distill run` on a semantic-segmentation task, end to end, and its refusals.

The synthetic segmentation world (``hf_task_distill.demo.segmentation``) saved with
``DatasetDict.save_to_disk`` is the task (found to be segmentation from its mask column), a tiny
pool saved the same way is the transfer pool, the shipped mini-VFM is the teacher and SegFormer-B0
at 32 px the student: every stage runs as for classification, evaluation reports mIoU, and the
published student loads with transformers' own segmentation classes and pipeline.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import check_card_metadata

from hf_task_distill.cli import main, parse_config
from hf_task_distill.config import stage_settings

#: A run as fast as the CPU allows: one epoch everywhere, a 32-px student, 6 of the 8 labelled images.
FAST = [
    *("--teacher", "mini-vfm", "--teacher_strategy", "full", "--teacher_epochs", "1"),
    *("--student", "segformer-b0", "--student_image_size", "32"),
    *("--distill_epochs", "1", "--finetune_epochs", "1", "--batch_size", "8", "--images", "6"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``{"task": folder, "pool": folder, "classifier": folder}``: the world's task and a 40-image pool
    (half in-domain) saved with ``save_to_disk``, and an image classifier (mini-VFM with a head)."""
    from hf_task_distill.demo.segmentation import segmentation_world_pool, segmentation_world_task
    from hf_task_distill.models import load_teacher

    root = tmp_path_factory.mktemp("segmentation_world")
    splits, _ = segmentation_world_task(label_budget=8, validation_images=4, test_images=8)
    splits.save_to_disk(str(root / "world"))
    segmentation_world_pool(size=40, in_domain_share=0.5).save_to_disk(str(root / "pool"))
    load_teacher("mini-vfm", ["a", "b"], warn_new_head=False).save_pretrained(str(root / "classifier"))
    return {"task": str(root / "world"), "pool": str(root / "pool"), "classifier": str(root / "classifier")}


def _run(world, output_dir, *flags) -> int:
    return main(["run", "--dataset", world["task"], "--output_dir", str(output_dir), *FAST, *flags])


@pytest.fixture(scope="module")
def random_run(world, tmp_path_factory):
    """A finished run with ``--transfer random`` (16 pool images), the baseline included."""
    run = tmp_path_factory.mktemp("segmentation_run") / "run"
    flags = ("--transfer", "random", "--pool", world["pool"], "--transfer_budget", "16")
    assert _run(world, run, *flags) == 0
    return {"run": run, "flags": flags}


def _manifest(run, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


@pytest.mark.slow
def test_a_segmentation_run_evaluates_every_model_by_miou_and_per_class_iou(random_run):
    run = random_run["run"]
    evaluation = _manifest(run, "evaluate")["outputs"]
    assert evaluation["task_type"] == "image-segmentation" and evaluation["split"] == "test"
    assert evaluation["images"] == 8
    models = {"teacher", "student, labels only", "student, distilled", "student, distilled + finetuned"}
    assert set(evaluation["results"]) == models
    for metrics in evaluation["results"].values():
        assert set(metrics) == {"mean_iou", "pixel_accuracy"} and 0 <= metrics["mean_iou"] <= 1
    details = json.loads((run / "evaluate" / "per_class_iou.json").read_text())
    assert details["labels"] == ["0", "1", "2", "3", "4", "5"]  # a saved world names its classes by id
    assert set(details["per_class_iou"]) == models
    assert set(details["per_class_iou"]["teacher"]) == set(details["labels"])
    # the label budget in images: 6 of the 8 training images, recorded in the teacher's settings
    assert _manifest(run, "teacher")["inputs"]["images"] == 6
    assert _manifest(run, "transfer")["outputs"] == {**_manifest(run, "transfer")["outputs"], "rows": 16}
    assert json.loads((run / "config.json").read_text())["images"] == 6


@pytest.mark.slow
def test_the_published_segmentation_student_loads_in_transformers_pipeline(random_run):
    from PIL import Image
    from transformers import AutoModelForSemanticSegmentation, pipeline

    student_dir = random_run["run"] / "publish" / "student"
    model = AutoModelForSemanticSegmentation.from_pretrained(student_dir)
    assert type(model).__name__ == "SegformerForSemanticSegmentation" and model.config.num_labels == 6
    segmenter = pipeline("image-segmentation", model=str(student_dir))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    segments = segmenter(image)
    assert segments and all(s["mask"].size == image.size for s in segments)
    assert {s["label"] for s in segments} <= set(model.config.id2label.values())
    processor = json.loads((student_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}

    metadata = check_card_metadata(student_dir / "README.md", pipeline_tag="image-segmentation")
    assert {"image-segmentation", "semantic-segmentation"} <= set(metadata["tags"])
    assert metadata["library_name"] == "transformers"
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    results = json.loads((student_dir / "results.json").read_text())["results"]
    mean_iou = next(m["value"] for m in metrics if m["type"] == "mean_iou")
    assert mean_iou == pytest.approx(results["student, distilled + finetuned"]["mean_iou"])
    text = (student_dir / "README.md").read_text()
    assert "semantic-segmentation model" in text and 'pipeline("image-segmentation"' in text
    assert "16 images drawn at random" in text and "images=6" in text


@pytest.fixture(scope="module")
def exported_run(world, random_run, tmp_path_factory):
    """``random_run`` copied and run again with ``--export_formats onnx``: only the export stage (and
    publish, which carries its files) runs, with the test split as the parity sample."""
    pytest.importorskip("onnxruntime")
    from hf_task_distill.pipeline import Pipeline

    run = tmp_path_factory.mktemp("segmentation_export") / "run"
    shutil.copytree(random_run["run"], run)
    argv = ["--dataset", world["task"], "--output_dir", str(run), *FAST, *random_run["flags"]]
    pipeline = Pipeline(parse_config("run", [*argv, "--export_formats", "onnx"]))
    pipeline.run()
    return {"run": run, "summary": pipeline.summary()}


@pytest.mark.slow
def test_a_segmentation_run_exports_its_student_with_per_pixel_parity_on_the_test_split(
    random_run, exported_run
):
    run = exported_run["run"]
    for stage in ("teacher", "distill", "finetune"):  # finished stages stay as they were
        assert _manifest(run, stage)["run_id"] == _manifest(random_run["run"], stage)["run_id"], stage
    model = run / "export" / "model"
    assert sorted(p.name for p in (model / "onnx").iterdir()) == ["export.json", "model.onnx"]
    assert (model / "config.json").is_file() and not (model / "model.safetensors").exists()
    processor = json.loads((model / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "SegformerImageProcessor"
    assert processor["size"] == {"height": 32, "width": 32}
    record = json.loads((model / "onnx" / "export.json").read_text())
    assert (
        record["task_type"] == "image-segmentation"
        and record["model_class"] == "SegformerForSemanticSegmentation"
    )
    assert record["parity"]["sample"] == {"source": "dataset (test split)", "images": 8}
    fp32 = record["parity"]["fp32"]
    assert fp32["passed"] and fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4
    assert "accuracy" not in fp32 and "int8" not in record["parity"]  # masks are not scored at export
    assert record["output"]["shape"] == ["batch", 6, 8, 8]  # a SegFormer's logits: a quarter of 32 px
    assert record["input"]["view"]["eval_mode"] == "squash" and record["input"]["view"]["crop_pct"] == 1.0
    line = next(row for row in exported_run["summary"].splitlines() if row.startswith("Export (onnx): "))
    assert "parity on 8 images max |Δlogit|" in line and "per-pixel agreement 100.0%" in line
    assert "top-1" not in line and "batch 1: ONNX Runtime" in line
    assert exported_run["summary"].index("| student, distilled + finetuned |") < exported_run[
        "summary"
    ].index(line)


@pytest.mark.slow
def test_the_published_segmentation_students_card_describes_its_onnx_export(exported_run):
    from huggingface_hub import ModelCard

    student = exported_run["run"] / "publish" / "student"
    exported = exported_run["run"] / "export" / "model" / "onnx"
    for name in ("model.onnx", "export.json"):
        assert (student / "onnx" / name).read_bytes() == (exported / name).read_bytes(), name
    section = ModelCard.load(student / "README.md").text.split("## ONNX export", 1)[1]
    assert (
        "`[batch, 3, 32, 32]`, RGB at 32 x 32 px: resized (bilinear) to that size whatever its aspect"
        in section
    )
    assert "centre-cropped" not in section and "central" not in section
    assert (
        "**Output** `logits`: `[batch, 6, 8, 8]`, class scores at 8 x 8 over the input, to be upsampled"
        in section
    )
    assert "8 images, dataset (test split)): max \\|Δlogit\\|" in section
    assert "per-pixel agreement 100.0%" in section and "top-1" not in section
    assert 'pipeline("image-segmentation", "/path/to/this/folder"' in section
    assert "AutoImageProcessor" not in section  # the timm route is for timm classifiers only


@pytest.mark.slow
def test_the_same_command_again_redoes_nothing(world, random_run):
    """The task's fingerprint covers its masks and is the same on a second read."""
    run = random_run["run"]
    before = {s: _manifest(run, s)["run_id"] for s in ("teacher", "distill", "finetune")}
    assert _run(world, run, *random_run["flags"]) == 0
    assert {s: _manifest(run, s)["run_id"] for s in before} == before


@pytest.mark.slow
def test_a_segmentation_teacher_used_as_it_is_passes_the_teacher_stage(world, random_run, tmp_path):
    teacher = str(random_run["run"] / "teacher" / "model")
    argv = ["--dataset", world["task"], "--teacher", teacher, "--teacher_strategy", "none"]
    argv += ["--student", "segformer-b0"]
    assert main(["finetune-teacher", *argv, "--output_dir", str(tmp_path / "run")]) == 0
    assert _manifest(tmp_path / "run", "teacher")["outputs"]["strategy"] == "none"


@pytest.mark.slow
def test_a_segmentation_run_on_a_retrieved_transfer_set_with_a_teacher_cache(world, tmp_path):
    pytest.importorskip("faiss")
    flags = ("--transfer", "retrieval", "--pool", world["pool"], "--per_query_k", "2", "--no_baseline")
    assert _run(world, tmp_path / "run", *flags, "--teacher_cache_views", "2") == 0
    transfer = _manifest(tmp_path / "run", "transfer")["outputs"]
    assert transfer["kind"] == "retrieval" and 0 < transfer["rows"] <= 12
    cache = json.loads((tmp_path / "run" / "distill" / "teacher_cache" / "cache.json").read_text())
    assert cache["fingerprint"]["task_type"] == "image-segmentation" and cache["grid"]
    results = _manifest(tmp_path / "run", "evaluate")["outputs"]["results"]
    assert "mean_iou" in results["student, distilled + finetuned"]


# -- refusals, before any stage trains ---------------------------------------------------------------
BAD = [
    (["--per_class", "2"], "--per_class: the task 'world' is image-segmentation"),
    (["--fraction", "0.5"], "--fraction: the task 'world' is image-segmentation"),
    (["--images", "9"], "--images 9: the training split of 'world' has 8 images"),
    (["--images", "3", "--per_class", "2"], "--per_class and --images are two label budgets: give one"),
    (["--task_type", "image-segmentaton"], "--task_type must be one of"),
    (["--task_type", "image-segmentation", "--per_class", "2"], "give --images N"),
    (["--student", "resnet18"], "is image-segmentation (a mask column): --student: unknown segmentation"),
    (["--student", "segformr-b0"], "did you mean segformer-b0 (a semantic-segmentation student)?"),
    (["--pretrained_student"], "--pretrained_student: 'segformer-b0' is built from its configuration"),
]


@pytest.mark.parametrize(("flags", "message"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_segmentation_flags_are_one_line_errors_naming_the_flag(world, tmp_path, capsys, flags, message):
    argv = ["run", "--dataset", world["task"], "--teacher", "mini-vfm", "--output_dir", str(tmp_path / "r")]
    argv += ["--student", "segformer-b0", *flags]  # a later --student in flags wins
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "teacher").exists()  # refused before the first stage


def test_a_segmentation_student_for_a_classification_task_is_refused(tmp_path, capsys):
    argv = ["run", "--dataset", "digits", "--student", "segformer-b0", "--output_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--student segformer-b0 is a semantic-segmentation student, but the task 'digits'" in err
    assert not (tmp_path / "r" / "teacher").exists()


def test_a_classifier_used_as_it_is_cannot_teach_a_segmentation_task(world, tmp_path, capsys):
    argv = ["--dataset", world["task"], "--teacher", world["classifier"], "--teacher_strategy", "none"]
    assert main(["finetune-teacher", *argv, "--student", "segformer-b0", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--teacher_strategy none: the teacher" in err and "ForImageClassification model" in err
    assert "not one for image-segmentation" in err and "Traceback" not in err


def test_the_new_task_settings_enter_a_stages_fingerprint_only_when_given(tmp_path):
    """A run recorded before --images and --task_type existed keeps its fingerprints."""
    plain = parse_config("run", ["--dataset", "digits", "--output_dir", str(tmp_path)])
    assert not {"images", "task_type"} & set(stage_settings(plain, "teacher"))
    argv = ["--dataset", "digits", "--output_dir", str(tmp_path), "--images", "5"]
    given = parse_config("run", [*argv, "--task_type", "image-classification"])
    settings = stage_settings(given, "teacher")
    assert {"images": 5, "task_type": "image-classification"}.items() <= settings.items()


def test_a_segmentation_task_without_a_test_split_holds_out_random_images(world):
    """``--test_fraction`` on a segmentation task: a seeded random share of the images (no class to
    stratify by), disjoint from what stays in train."""
    from datasets import DatasetDict, load_from_disk

    from hf_task_distill.data import load_target_task

    task = load_target_task(DatasetDict({"train": load_from_disk(world["task"])["train"]}))
    split = task.with_test_split(0.25, seed=3)
    assert (len(split["train"]), len(split["test"])) == (6, 2)
    tested = {bytes(r["image"].tobytes()) for r in split["test"]}
    assert not tested & {bytes(r["image"].tobytes()) for r in split["train"]}
    again = task.with_test_split(0.25, seed=3)["test"]
    assert {bytes(r["image"].tobytes()) for r in again} == tested


def test_a_segmentation_teacher_listing_the_classes_in_another_order_is_refused(world, tmp_path, capsys):
    """Masks hold ids, not names: a student given the teacher's order would be finetuned and scored
    on masks numbered in the task's order, silently wrong, so such a teacher is refused."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from hf_task_distill.data import load_target_task

    classes = load_target_task(world["task"]).label_names
    order = [classes[1], classes[0], *classes[2:]]
    config = SegformerConfig(hidden_sizes=[8, 8, 8, 8], decoder_hidden_size=8, num_attention_heads=[1] * 4)
    config.id2label, config.label2id = dict(enumerate(order)), {n: i for i, n in enumerate(order)}
    config.num_labels = len(order)
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "teacher")
    argv = ["--dataset", world["task"], "--teacher", str(tmp_path / "teacher"), "--teacher_strategy", "none"]
    assert (
        main(["finetune-teacher", *argv, "--student", "segformer-b0", "--output_dir", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert "predicts the task's classes in another order" in err and "Traceback" not in err
