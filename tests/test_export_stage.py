"""The ``export`` stage: off unless ``--export_formats`` names a format; on, the finetuned student as
ONNX in ``export/model/`` with parity on the evaluation split, a compute-ledger entry per runtime, one
line in the run's summary, ``onnx/`` published with the student and an export section in its card."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import LABELS, write_run_inputs

pytest.importorskip("onnxruntime")

from hf_task_distill.config import PipelineConfig  # noqa: E402
from hf_task_distill.pipeline import Pipeline  # noqa: E402


def _settings(root, **values) -> dict:
    return {
        "dataset": str(root / "task"),
        "per_class": 4,
        "teacher": str(root / "vfm"),
        "teacher_strategy": "linear",
        "teacher_probe_epochs": 5,
        "student": str(root / "student-start"),
        "pretrained_student": True,
        "distill_epochs": 1.0,
        "finetune_epochs": 1.0,
        "baseline": False,
        "batch_size": 8,
        "logging_steps": 1,
        "hub_model_id": "me/colour-student",
        "output_dir": str(root / "run"),
        **values,
    }


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, vfm_dirs):
    """One run of every stage with ``--export_formats onnx onnx-int8`` on the colour task (a
    test_resnet student at 32 px; 24 test images are the parity sample)."""
    root = tmp_path_factory.mktemp("export-stage")
    write_run_inputs(
        root, task="task", pool="pool", sizes=(32, 24, 4), teacher_from=vfm_dirs["dinov2"], teacher="vfm"
    )
    config = PipelineConfig.from_dict(_settings(root, export_formats=["onnx", "onnx-int8"]))
    pipeline = Pipeline(config)
    pipeline.run()
    return {"root": root, "run": root / "run", "pipeline": pipeline}


def _record(folder) -> dict:
    return json.loads((folder / "onnx" / "export.json").read_text())


def test_the_stage_is_off_unless_a_format_is_named(tmp_path):
    from hf_task_distill.stages import get_stage, stages_for_command

    config = PipelineConfig.from_dict({"dataset": "digits", "output_dir": str(tmp_path / "run")})
    assert config.run.export_formats == [] and not get_stage("export").enabled(config)
    assert "export" not in stages_for_command(config, None) + stages_for_command(config, "publish")
    assert "export" not in get_stage("publish").upstream(config)
    given = PipelineConfig.from_dict(
        {"dataset": "digits", "export_formats": "onnx"}
    )  # a config file's one name
    assert given.run.export_formats == ["onnx"] and get_stage("export").enabled(given)
    assert get_stage("publish").upstream(given)[-1] == "export"


@pytest.mark.parametrize(
    ("formats", "error", "match"),
    [
        (
            ["onxx"],
            ValueError,
            r"--export_formats: unknown format\(s\) \['onxx'\]; registered: onnx, onnx-int8",
        ),
        (["onnx", "tflite"], ValueError, r"unknown format\(s\) \['tflite'\]"),
    ],
)
def test_an_unknown_export_format_is_refused_before_anything_runs(tmp_path, formats, error, match):
    with pytest.raises(error, match=match):
        PipelineConfig.from_dict({"dataset": "digits", "export_formats": formats})


def test_a_missing_onnx_package_is_named_when_the_settings_are_read(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r"need onnxruntime: pip install 'hf-task-distill\[onnx\]'"):
        PipelineConfig.from_dict({"dataset": "digits", "export_formats": ["onnx-int8"]})


def test_the_stage_writes_a_deployable_folder_with_parity_on_the_evaluation_split(exported_run):
    run = exported_run["run"]
    model = run / "export" / "model"
    assert sorted(p.name for p in (model / "onnx").iterdir()) == [
        "export.json",
        "model.onnx",
        "model_quantized.onnx",
    ]
    assert (model / "config.json").is_file() and not (model / "model.safetensors").exists()  # no weights
    processor = json.loads((model / "preprocessor_config.json").read_text())  # Transformers.js's, for timm
    assert processor["do_center_crop"] and processor["crop_size"] == {"height": 32, "width": 32}
    record = _record(model)
    assert record["parity"]["sample"] == {"source": "dataset (test split)", "images": 24}
    fp32 = record["parity"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    int8 = record["parity"]["int8"]
    assert int8["accuracy_change_points"] == pytest.approx(
        100 * (int8["accuracy"] - fp32["accuracy"]), abs=1e-3
    )
    transfer = json.loads((run / "transfer" / "manifest.json").read_text())["outputs"]
    assert record["quantization"]["method"] == "static"  # calibrated on the transfer set, not the test split
    assert record["quantization"]["calibration_sample"] == {
        "source": "dataset",
        "images": min(128, transfer["rows"]),
    }
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["outputs"]["model"] == "model" and manifest["outputs"]["formats"] == ["onnx", "onnx-int8"]
    assert manifest["inputs"]["export_formats"] == ["onnx", "onnx-int8"] and "finetune" in manifest["inputs"]


def test_the_ledger_charges_each_runtimes_parity_and_latency_passes(exported_run):
    from hf_task_distill.export.onnx import LATENCY_RUNS, THROUGHPUT_BATCH, THROUGHPUT_RUNS, WARMUP_RUNS

    run = exported_run["run"]
    record = _record(run / "export" / "model")
    ledger = json.loads((run / "export" / "manifest.json").read_text())["ledger"]
    entries = {e["work"]: e for e in ledger["entries"]}
    runtimes = ["PyTorch eager", "ONNX Runtime fp32", "ONNX Runtime int8"]
    assert sorted(entries) == sorted(f"student forward, {r} (export parity + latency)" for r in runtimes)
    images = 24 + (WARMUP_RUNS + LATENCY_RUNS) + THROUGHPUT_BATCH * (WARMUP_RUNS + THROUGHPUT_RUNS)
    for entry in entries.values():
        assert entry["stage"] == "export" and entry["images"] == images
        assert entry["flops_per_image"] == record["flops_per_image"] > 0
        assert entry["device"].startswith("CPU (") and entry["model"] == "student-start (local), finetuned"
    assert ledger["wall_s"]["export"] > 0
    assert "| export | student forward, ONNX Runtime int8" in exported_run["pipeline"].ledger().markdown()


def test_the_summary_has_the_export_line_after_the_results(exported_run):
    summary = exported_run["pipeline"].summary()
    line = next(line for line in summary.splitlines() if line.startswith("Export (onnx-int8): "))
    record = _record(exported_run["run"] / "export" / "model")
    batch_1 = record["latency"]["batch_1"]
    assert "parity on 24 images max |Δlogit|" in line and "top-1 100.0%" in line
    assert "int8 (static) top-1 agreement" in line and "points" in line
    assert f"ONNX Runtime {batch_1['onnxruntime']['median_ms']:.3g} ms" in line
    assert f"PyTorch {batch_1['pytorch']['median_ms']:.3g} ms" in line
    assert summary.index("| student, distilled + finetuned |") < summary.index(line)


def test_the_published_student_carries_onnx_and_its_card_the_export_section(exported_run):
    from huggingface_hub import ModelCard

    run = exported_run["run"]
    student = run / "publish" / "student"
    exported = run / "export" / "model" / "onnx"
    for name in ("model.onnx", "model_quantized.onnx", "export.json"):
        assert (student / "onnx" / name).read_bytes() == (exported / name).read_bytes(), name
    assert (student / "preprocessor_config.json").read_bytes() == (
        run / "export" / "model" / "preprocessor_config.json"
    ).read_bytes()
    assert str(run) not in (student / "onnx" / "export.json").read_text()  # relative names only
    record = _record(student)
    card = ModelCard.load(student / "README.md").text
    section = card.split("## ONNX export", 1)[1]
    size_mb = record["files"]["model_quantized.onnx"] / 1e6
    assert f"| `onnx/model_quantized.onnx` | int8 (ONNX Runtime quantization) | {size_mb:.1f} MB |" in section
    assert "float32 `[batch, 3, 32, 32]`" in section and "**Output** `logits`: `[batch, 4]`" in section
    assert f"mean {[round(m, 4) for m in record['input']['view']['mean']]}" in section
    assert (
        "24 images, dataset (test split)): max \\|Δlogit\\|" in section
        and "top-1 agreement 100.0%" in section
    )
    assert f"{record['parity']['int8']['accuracy_change_points']:+.2f} points" in section
    calibrated = record["quantization"]["calibration_images"]
    assert (
        f"**int8** (static: per-channel int8 weights, uint8 activations with ranges calibrated on {calibrated} transfer-set images (QDQ))"
        in section
    )
    pytorch = record["latency"]["batch_1"]["pytorch"]
    assert f"| PyTorch eager | {pytorch['median_ms']:.3g} ms | {pytorch['p90_ms']:.3g} ms |" in section
    assert "| ONNX Runtime, int8 |" in section and record["machine"]["cpu"] in section
    assert 'const id = "me/colour-student";' in section and "AutoModel.from_pretrained(id" in section


def test_without_the_export_publish_leaves_onnx_out(exported_run, tmp_path):
    """The same run with the export turned off: publish is redone, without onnx/ or a card section."""
    run = tmp_path / "run"
    shutil.copytree(exported_run["run"], run)
    settings = {**_settings(exported_run["root"]), "output_dir": str(run)}
    pipeline = Pipeline(PipelineConfig.from_dict(settings))
    pipeline.run()
    student = run / "publish" / "student"
    assert not (student / "onnx").exists() and not (student / "preprocessor_config.json").exists()
    assert "## ONNX export" not in (student / "README.md").read_text()


def test_the_exported_folder_runs_in_transformers_js_with_pytorchs_top1(exported_run, tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_task_distill.export.transformers_js import install_transformers_js, run_in_transformers_js

    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH: the Transformers.js check needs Node.js (>= 18) with npm")
    install_dir = install_transformers_js()
    model = exported_run["run"] / "export" / "model"
    edge = json.loads((model / "preprocessor_config.json").read_text())["size"]["shortest_edge"]
    rng, paths = np.random.default_rng(0), []
    for i in range(8):  # at the resize size: node's and PIL's resizing give the same pixels
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((edge, edge)).save(paths[-1])
    results = run_in_transformers_js(str(model), paths, install_dir=install_dir)
    finetuned = str(exported_run["run"] / "finetune" / "model")
    torch_model = AutoModelForImageClassification.from_pretrained(finetuned).eval()
    processor = AutoImageProcessor.from_pretrained(finetuned)
    import torch

    with torch.no_grad():
        expected = [
            int(torch_model(**processor(Image.open(p).convert("RGB"), return_tensors="pt")).logits.argmax())
            for p in paths
        ]
    assert [r["top1"] for r in results] == expected
    assert {r["label"] for r in results} <= set(LABELS)


def _hand_record(**changes) -> dict:
    """An ``export.json`` record as OnnxFormat writes it, with chosen numbers (fp32 only)."""
    timing = {"batch": 1, "median_ms": 2.5, "p90_ms": 3.25, "images_per_s": 400.0}
    record = {
        "format": "onnx",
        "input": {
            "name": "pixel_values",
            "shape": ["batch", 3, 64, 64],
            "view": {
                "size": [64, 64],
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "interpolation": "bilinear",
                "crop_pct": 0.9,
                "eval_mode": "squash",
            },
        },  # fmt: skip
        "output": {"name": "logits", "shape": ["batch", 3, 16, 16]},
        "files": {"model.onnx": 2_500_000},
        "parity": {
            "sample": {"source": "random pixels (uniform 0..255, seed 0)", "images": 64},
            "fp32": {
                "max_abs_diff": 2.5e-6,
                "argmax_agreement": 0.999,
                "tolerance": 1e-4,
                "min_agreement": 0.99,
            },
        },
        "latency": {
            "batch_1": {
                "pytorch": timing,
                "onnxruntime": {**timing, "median_ms": 1.25, "speedup_vs_pytorch": 2.0},
            },
            "batch_32": {
                "pytorch": {**timing, "batch": 32, "images_per_s": 800.0},
                "onnxruntime": {**timing, "batch": 32, "images_per_s": 1200.0, "speedup_vs_pytorch": 1.5},
            },
        },
        "machine": {
            "cpu": "Test CPU 9000",
            "cpu_count": 8,
            "threads": 4,
            "system": "Linux",
            "machine": "x86_64",
            "onnxruntime": "1.0",
            "torch": "2.0",
        },  # fmt: skip
    }
    record.update(changes)
    return record


def test_the_card_section_says_what_the_record_says_and_is_absent_without_one():
    from hf_task_distill.hub.cards import StudentCardData, render_student_card

    names = ["sky", "road", "tree"]
    data = StudentCardData(model_name="seg", architecture="segformer", label_names=names, library_name="transformers",
                           task_type="image-segmentation")  # fmt: skip
    assert "ONNX export" not in render_student_card(data).content
    data.export = _hand_record()
    section = render_student_card(data).content.split("## ONNX export", 1)[1]
    assert (
        "| `onnx/model.onnx` | fp32 | 2.5 MB |" in section
        and "model_quantized" not in section.split("```")[0]
    )
    assert "float32 `[batch, 3, 64, 64]`" in section and "`logits`: `[batch, 3, 16, 16]`" in section
    assert "the central 90.0% of each side resized (bilinear) to that size" in section  # timm's squash
    assert (
        "64 images, random pixels (uniform 0..255, seed 0)): max \\|Δlogit\\| 2.5e-06, per-pixel agreement 99.9%"
        in section
    )
    assert "**int8**" not in section and "| ONNX Runtime, int8 |" not in section
    assert "| ONNX Runtime, fp32 | 1.25 ms | 3.25 ms | 1200 images/s | 2.00x / 1.50x |" in section
    assert "| PyTorch eager | 2.5 ms | 3.25 ms | 800 images/s | 1.00x / 1.00x |" in section
    assert "on Test CPU 9000 (8 cores, 4 threads, Linux x86_64)" in section
    assert (
        'pipeline("image-segmentation", "/path/to/this/folder"' in section
        and "allowRemoteModels = false" in section
    )
