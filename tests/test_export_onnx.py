"""The ``onnx`` / ``onnx-int8`` export formats: parity against PyTorch measured with ONNX Runtime on
200+ images, a dynamic batch axis, int8 agreement, atomic replacement and refusal of another model's
export, and clear errors for a student the exporter cannot trace or a parity that fails."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import LABELS, make_colour_dataset, tiny_segformer

pytest.importorskip("onnxruntime")
import onnxruntime  # noqa: E402

from hf_task_distill.export import OnnxExportError, OnnxParityError, export_student  # noqa: E402
from hf_task_distill.export import onnx as onnx_format  # noqa: E402
from hf_task_distill.models.student import create_student  # noqa: E402


def _tiny_resnet(folder, seed: int = 0):
    torch.manual_seed(seed)
    create_student(
        "resnet10t", LABELS, model_args={"channels": (8, 16, 32, 64)}, image_size=32
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    """A tiny timm student exported once with int8, its parity measured on 220 labelled images."""
    folder = _tiny_resnet(tmp_path_factory.mktemp("resnet10t"))
    written = export_student(folder, ["onnx", "onnx-int8"], images=make_colour_dataset(220, 0))
    return folder, written


def _record(folder) -> dict:
    with open(os.path.join(folder, "onnx", "export.json"), encoding="utf-8") as f:
        return json.load(f)


def _torch_logits(folder, pixels):
    model, _ = onnx_format.load_student(folder)
    with torch.inference_mode():
        return model(pixel_values=pixels).logits.numpy()


def test_a_timm_student_exports_with_parity_on_200_images_and_a_dynamic_batch(resnet_export):
    folder, written = resnet_export
    names = ["model.onnx", "model_quantized.onnx", "export.json"]
    transformers_js = os.path.join(folder, "preprocessor_config.json")  # beside onnx/, for Transformers.js
    assert (
        written["onnx"]
        == written["onnx-int8"]
        == [os.path.join(folder, "onnx", n) for n in names] + [transformers_js]
    )
    record = _record(folder)
    fp32 = record["parity"]["fp32"]
    assert record["parity"]["sample"] == {"source": "dataset", "images": 220}
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    assert record["input"]["shape"] == ["batch", 3, 32, 32] and record["output"]["shape"] == ["batch", 4]
    session = onnxruntime.InferenceSession(written["onnx"][0], providers=["CPUExecutionProvider"])
    (axis, *_), (out_axis, _) = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    assert isinstance(axis, str) and isinstance(out_axis, str)  # symbolic batch axes
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 7):  # checked here, independently of the exporter's own measurement
        pixels = torch.randn(batch, 3, 32, 32, generator=generator)
        onnx_logits = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
        reference = _torch_logits(folder, pixels)
        assert onnx_logits.shape == (batch, 4)
        assert np.abs(onnx_logits - reference).max() <= 1e-4
        assert (onnx_logits.argmax(1) == reference.argmax(1)).all()


def test_the_int8_model_loads_and_its_agreement_and_accuracy_change_are_reported(resnet_export):
    folder, written = resnet_export
    record = _record(folder)
    int8 = record["parity"]["int8"]
    assert 0.0 <= int8["argmax_agreement"] <= 1.0 and int8["max_abs_diff"] > 0  # really quantized
    assert record["quantization"]["method"] == "dynamic"  # a bare dataset: nothing to calibrate on
    assert int8["accuracy_change_points"] == pytest.approx(
        100 * (int8["accuracy"] - record["parity"]["fp32"]["accuracy"]), abs=1e-3
    )
    quantized = onnxruntime.InferenceSession(written["onnx"][1], providers=["CPUExecutionProvider"])
    assert quantized.run(["logits"], {"pixel_values": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (
        3,
        4,
    )
    sizes = record["files"]
    assert sizes["model_quantized.onnx"] < sizes["model.onnx"] == os.path.getsize(written["onnx"][0])


def _logits(session, pixels: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"pixel_values": pixels})[0]


def test_static_int8_is_calibrated_on_the_images_given_and_answers_an_image_alone_as_in_a_batch(tmp_path):
    """With calibration images, int8 is static QDQ: its activation ranges are fixed at export, so an
    image's logits do not depend on the batch it is sent in (dynamic int8 rescales per batch)."""
    import onnx

    from hf_task_distill.export.int8 import quantize_int8

    folder = _tiny_resnet(tmp_path / "student")
    calibration = make_colour_dataset(40, 1, labelled=False)
    export_student(folder, "onnx-int8", images=make_colour_dataset(60, 0), calibration=calibration)
    record = _record(folder)
    assert record["quantization"]["method"] == "static" and record["quantization"]["format"] == "QDQ"
    assert record["quantization"]["calibration_sample"] == {"source": "dataset", "images": 40}
    assert record["parity"]["int8"]["max_abs_diff"] > 0
    quantized = os.path.join(folder, "onnx", "model_quantized.onnx")
    ops = {node.op_type for node in onnx.load(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvInteger" not in ops
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)).numpy()
    pixels[1:] *= 4  # other images with wider activations in the batch
    dynamic = str(tmp_path / "dynamic.onnx")
    assert quantize_int8(os.path.join(folder, "onnx", "model.onnx"), dynamic)["method"] == "dynamic"
    for path, batch_independent in ((quantized, True), (dynamic, False)):
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        alone, in_batch = _logits(session, pixels[:1])[0], _logits(session, pixels)[0]
        assert np.allclose(alone, in_batch, atol=1e-6) == batch_independent, path


def test_an_empty_calibration_sample_is_refused_before_anything_is_written(tmp_path):
    folder = _tiny_resnet(tmp_path / "student")
    with pytest.raises(ValueError, match="calibration sample is empty"):
        export_student(folder, "onnx-int8", calibration=[])
    assert not os.path.exists(os.path.join(folder, "onnx"))


def test_the_export_record_has_latency_flops_and_no_absolute_path(resnet_export, tmp_path):
    folder, _ = resnet_export
    record = _record(folder)
    for key in ("batch_1", "batch_32"):
        rows = record["latency"][key]
        assert set(rows) == {"pytorch", "onnxruntime", "onnxruntime_int8"}
        assert all(row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] for row in rows.values())
        assert rows["onnxruntime"]["speedup_vs_pytorch"] == pytest.approx(
            rows["pytorch"]["median_ms"] / rows["onnxruntime"]["median_ms"], rel=1e-2
        )
    assert record["parameters"] > 0 and record["flops_per_image"] > 0
    assert record["source"]["sha256"] == onnx_format.weights_fingerprint(folder)
    text = json.dumps(record)
    assert folder not in text and str(tmp_path.parent) not in text and os.path.expanduser("~") not in text
    assert not any(isinstance(v, str) and v.startswith("/") for v in _strings(record))


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    else:
        yield value


def test_a_timm_student_export_carries_the_transformers_js_preprocessor_file(resnet_export, tmp_path):
    """timm's evaluation transform, from config.json, in the fields Transformers.js reads; written into
    output_dir beside onnx/; a transform it cannot reproduce is recorded and the export goes ahead."""
    folder, _ = resnet_export
    with open(os.path.join(folder, "preprocessor_config.json"), encoding="utf-8") as f:
        processor = json.load(f)
    assert processor["size"] == {"shortest_edge": 36} and processor["crop_size"] == {
        "height": 32,
        "width": 32,
    }
    assert _record(folder)["transformers_js"] == {"written": ["preprocessor_config.json"]}
    out = tmp_path / "out"
    written = export_student(folder, "onnx", output_dir=out)["onnx"]
    assert written[-1] == str(out / "preprocessor_config.json") and sorted(os.listdir(out)) == [
        "onnx",
        "preprocessor_config.json",
    ]
    model, _ = onnx_format.load_student(folder)
    model.config.pretrained_cfg["input_size"] = [3, 32, 48]  # centre crop of a non-square input
    model.save_pretrained(tmp_path / "wide")
    written = export_student(tmp_path / "wide", "onnx")["onnx"]
    assert [os.path.basename(p) for p in written] == ["model.onnx", "export.json"]
    assert not (tmp_path / "wide" / "preprocessor_config.json").exists()
    assert (
        "crop_mode 'center' at input size 32x48" in _record(tmp_path / "wide")["transformers_js"]["problem"]
    )


def test_a_mobilevitv2_from_a_config_exports_with_random_pixels_when_no_images_are_given(tmp_path):
    from transformers import MobileViTImageProcessor, MobileViTV2Config, MobileViTV2ForImageClassification

    torch.manual_seed(0)
    model = MobileViTV2ForImageClassification(
        MobileViTV2Config(width_multiplier=0.25, image_size=64, num_labels=4)
    )
    for module in model.modules():  # its own init shrinks activations to 0 by the last stage: all logits 0
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
    torch.nn.init.normal_(model.classifier.weight, std=300.0)  # logits of order 1, so 1e-4 means something
    model.save_pretrained(tmp_path)
    processor = MobileViTImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    written = export_student(tmp_path, "onnx")["onnx"]
    assert [os.path.basename(p) for p in written] == ["model.onnx", "export.json"]
    record = _record(tmp_path)
    assert record["transformers_js"] == {"written": []}  # a transformers student carries its processor
    assert record["parity"]["sample"]["source"].startswith("random pixels")
    assert (
        record["parity"]["fp32"]["max_abs_diff"] <= 1e-4 and record["parity"]["fp32"]["argmax_agreement"] == 1
    )
    pixels = torch.randn(5, 3, 64, 64)
    session = onnxruntime.InferenceSession(written[0], providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    reference = _torch_logits(str(tmp_path), pixels)
    assert np.ptp(reference) > 0.1 and np.abs(logits - reference).max() <= 1e-4


def test_a_segformer_exports_with_per_pixel_parity(tmp_path):
    from hf_task_distill.models.families.transformers_segmentation import segmentation_image_processor

    student = tiny_segformer(3)
    student.config.image_size = 64
    student.save_pretrained(tmp_path)
    segmentation_image_processor(student).save_pretrained(tmp_path)
    images = [image for image in make_colour_dataset(12, 1, labelled=False)["image"]]
    export_student(tmp_path, "onnx", images=images)
    record = _record(tmp_path)
    assert record["task_type"] == "image-segmentation"
    assert record["output"]["shape"] == ["batch", 3, 16, 16]  # logits at a quarter of the input size
    assert record["parity"]["sample"] == {"source": "images given", "images": 12}
    assert (
        record["parity"]["fp32"]["argmax_agreement"] == 1.0
        and record["parity"]["fp32"]["max_abs_diff"] <= 1e-4
    )


def test_a_segformer_exports_with_per_pixel_parity_on_a_segmentation_tasks_evaluation_split(tmp_path):
    """``images=task`` (as the export stage passes it): the parity sample is the test split's images
    at the student's evaluation view, its masks unused; every pixel's class agrees with PyTorch's."""
    from hf_task_distill.data import ViewSpec, load_target_task
    from hf_task_distill.data.views import eval_view, render_view
    from hf_task_distill.demo.segmentation import segmentation_world_task
    from hf_task_distill.models.families.transformers_segmentation import segmentation_image_processor

    splits, names = segmentation_world_task(label_budget=4, validation_images=3, test_images=10)
    task = load_target_task(splits, label_names=names, name="world")
    student = tiny_segformer(len(names), label_names=names)
    student.config.image_size = 32
    student.save_pretrained(tmp_path)
    segmentation_image_processor(student).save_pretrained(tmp_path)
    written = export_student(tmp_path, "onnx", images=task)["onnx"]
    record = _record(tmp_path)
    assert record["task_type"] == "image-segmentation"
    assert record["parity"]["sample"] == {"source": "dataset (test split)", "images": 10}
    assert record["output"]["shape"] == ["batch", len(names), 8, 8]
    fp32 = record["parity"]["fp32"]
    assert fp32["passed"] and fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4
    assert "accuracy" not in fp32  # masks are not scored at export
    # checked here on the same test images, rendered independently of the exporter
    spec = ViewSpec.from_model(student)
    images = [
        torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous() for image in task["test"]["image"]
    ]
    pixels = torch.stack([render_view(image, eval_view(image.shape[:0:-1], spec), spec) for image in images])
    session = onnxruntime.InferenceSession(written[0], providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    reference = _torch_logits(str(tmp_path), pixels)
    assert logits.shape == (10, len(names), 8, 8) and np.ptp(reference.argmax(1)) > 0  # not one class
    assert np.abs(logits - reference).max() <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).all()


def test_an_export_of_other_weights_is_refused_and_the_same_weights_replace_it(
    resnet_export, tmp_path, capsys
):
    from hf_task_distill.cli import main

    exported, _ = resnet_export
    first = shutil.copytree(exported, tmp_path / "a")  # with its onnx-int8 export
    second = _tiny_resnet(tmp_path / "b", seed=1)
    before = _record(first)["source"]["sha256"]
    with pytest.raises(ValueError, match=r"already holds an export of other weights.*overwrite=True"):
        export_student(second, ["safetensors", "onnx"], output_dir=first)
    assert _record(first)["source"]["sha256"] == before
    assert onnx_format.weights_fingerprint(first) == before  # refused before safetensors copied anything
    assert main(["export", second, "--output_dir", str(first), "--formats", "onnx"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    export_student(first, "onnx")  # the same weights: replaced, so the int8 file is gone, not mixed in
    assert sorted(os.listdir(first / "onnx")) == ["export.json", "model.onnx"]
    assert main(["export", second, "--output_dir", str(first / "out"), "--formats", "safetensors"]) == 0
    assert main(["export", second, "--output_dir", str(first), "--formats", "onnx", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "parity on 64 images (random pixels" in out and "x PyTorch eager" in out
    assert _record(first)["source"]["sha256"] == onnx_format.weights_fingerprint(second) != before
    assert not [n for n in os.listdir(first) if ".tmp-" in n]  # no temporary folder left beside it
    (first / "onnx" / "export.json").unlink()
    with pytest.raises(ValueError, match="files without an export.json"):
        export_student(second, "onnx", output_dir=first)


def test_a_parity_failure_raises_with_the_numbers_and_writes_no_folder(tmp_path, monkeypatch):
    import onnx

    folder = _tiny_resnet(tmp_path / "student")
    real_export = onnx_format.export_graph

    def tampered(model, path, size):  # a wrong graph: one weight of the first layer changed
        real_export(model, path, size)
        graph = onnx.load(path)
        weight = next(t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims)
        values = onnx.numpy_helper.to_array(weight).copy()
        values.flat[0] += 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(graph, path)

    monkeypatch.setattr(onnx_format, "export_graph", tampered)
    with pytest.raises(
        OnnxParityError, match=r"ONNX parity failed on 64 images .*max \|Δlogit\| [0-9.e-]+ > 0\.0001"
    ):
        export_student(folder, "onnx")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]  # no onnx/, no temp folder


class _DataDependentBranch(torch.nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # a Python branch on a tensor's value: torch.export cannot trace it
            return x * 2
        return x


class _Eigenvalues(torch.nn.Module):
    def forward(self, x):
        return x + torch.linalg.eigvals(x[..., :4, :4]).real.mean()  # aten.linalg_eig: no ONNX function


@pytest.mark.parametrize(
    ("module", "named"),
    [
        (
            _DataDependentBranch,
            r"module 'timm_model.act1' \(_DataDependentBranch\) at test_export_onnx.py:\d+ "
            r"`if x.mean\(\) > 0:`.*GuardOnDataDependentSymNode",
        ),
        (
            _Eigenvalues,
            r"module 'timm_model.act1' \(_Eigenvalues\), operator aten.linalg_eig.default\): DispatchError",
        ),
    ],
)
def test_a_student_the_exporter_cannot_trace_is_an_error_naming_the_module(
    module, named, tmp_path, monkeypatch
):
    folder = _tiny_resnet(tmp_path / "student")
    real_load = onnx_format.load_student

    def load_with_untraceable_layer(path):
        model, task_type = real_load(path)
        model.timm_model.act1 = module()
        return model, task_type

    monkeypatch.setattr(onnx_format, "load_student", load_with_untraceable_layer)
    with pytest.raises(OnnxExportError, match=named):
        export_student(folder, "onnx")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]


def _halving_graph(path) -> str:
    """An ONNX graph ``logits = pixel_values * 0.5`` (a denormal input gives a denormal output unless
    the runtime flushes denormals)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Mul", ["pixel_values", "half"], ["logits"])],
        "halve",
        [value("pixel_values", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [value("logits", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _denormal_product() -> float:
    return (torch.full((1,), 2e-39) * 0.5).item()  # 1e-39 (a denormal), or 0.0 when flushed


def test_latency_is_timed_with_denormals_flushed_in_both_runtimes_and_the_state_put_back(
    tmp_path, monkeypatch
):
    """Random-init students can carry ~1e-35 activations, on which x86 arithmetic is slow (PyTorch
    eager measured 1.45x slower on transformers' MobileViT-V2 with its own init): both runtimes are
    timed with denormals flushed, and the caller's state is restored after."""
    seen = {"pytorch": [], "onnxruntime": [], "option": []}

    class Halve(torch.nn.Module):
        def forward(self, pixels):
            seen["pytorch"].append(_denormal_product())
            return pixels * 0.5

    opened = onnx_format.open_session

    class SpySession:
        def __init__(self, path, threads, **kwargs):
            self.session = opened(path, threads, **kwargs)
            options = self.session.get_session_options()
            seen["option"].append(options.get_session_config_entry(onnx_format.DENORMAL_CONFIG_KEY))

        def run(self, names, feeds):
            tiny = np.full((1, 3, 2, 2), 2e-39, dtype=np.float32)
            seen["onnxruntime"].append(float(self.session.run(names, {"pixel_values": tiny})[0].max()))
            return self.session.run(names, feeds)

    monkeypatch.setattr(onnx_format, "open_session", SpySession)
    assert _denormal_product() > 0 and not onnx_format.denormals_flushed()
    table, conditions = onnx_format.measure_latency(
        Halve(), {"onnxruntime": _halving_graph(tmp_path / "half.onnx")}, (2, 2), threads=1
    )
    assert set(table) == {"batch_1", "batch_32"} and table["batch_1"]["onnxruntime"]["median_ms"] > 0
    assert seen["pytorch"] and set(seen["pytorch"]) == {0.0}
    assert seen["onnxruntime"] and set(seen["onnxruntime"]) == {0.0}
    assert seen["option"] == ["1"]  # ORT's own threads flush too
    assert _denormal_product() > 0 and not onnx_format.denormals_flushed()  # put back
    assert conditions["denormals"].startswith("flushed to zero") and "before" in conditions["load_average_1m"]
    with onnx_format.flush_denormals():
        with onnx_format.flush_denormals():
            pass
        assert onnx_format.denormals_flushed()  # a caller that flushed keeps flushing
    assert not onnx_format.denormals_flushed()


def test_missing_onnx_packages_name_the_extra(tmp_path, monkeypatch):
    import sys

    folder = _tiny_resnet(tmp_path / "student")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"need onnxruntime: pip install 'hf-task-distill\[onnx\]'"):
        export_student(folder, ["safetensors", "onnx"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any format wrote


def test_the_export_command_refuses_an_unknown_format(resnet_export, capsys):
    from hf_task_distill.cli import main

    assert main(["export", resnet_export[0], "--formats", "onnx-fp16"]) == 2
    assert (
        "unknown export format 'onnx-fp16'; registered: onnx, onnx-int8, safetensors"
        in capsys.readouterr().err
    )


def test_the_export_command_calibrates_int8_on_an_image_folder(tmp_path, capsys):
    from hf_task_distill.cli import main

    folder = _tiny_resnet(tmp_path / "student")
    photos = tmp_path / "transfer"
    photos.mkdir()
    for i, image in enumerate(make_colour_dataset(12, 3, labelled=False)["image"]):
        image.save(photos / f"{i}.png")
    assert main(["export", folder, "--formats", "onnx-int8", "--calibration", str(photos)]) == 0
    assert "int8 (static): argmax agreement with fp32" in capsys.readouterr().out
    assert _record(folder)["quantization"]["calibration_sample"] == {"source": "dataset", "images": 12}


def test_an_export_beside_another_students_weights_is_refused_not_mixed(resnet_export, tmp_path):
    exported, _ = resnet_export
    other = shutil.copytree(exported, tmp_path / "other")
    shutil.rmtree(other / "onnx")  # another student's folder with no export yet
    second = _tiny_resnet(tmp_path / "second", seed=1)
    with pytest.raises(ValueError, match=r"'.*other' holds another student's weights .*--overwrite"):
        export_student(second, "onnx", output_dir=other)
    assert not (other / "onnx").exists()
    assert onnx_format.weights_fingerprint(other) == onnx_format.weights_fingerprint(exported)
    copy = shutil.copytree(exported, tmp_path / "copy")  # the same weights elsewhere: accepted
    onnx_format.OnnxFormat().check(exported, output_dir=str(copy))


def test_an_output_dir_that_is_a_file_is_refused_naming_it(resnet_export, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ValueError, match=r"output_dir '.*afile' is a file, not a folder"):
        export_student(resnet_export[0], "onnx", output_dir=tmp_path / "afile")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "onnx").write_text("a file where onnx/ goes")
    with pytest.raises(ValueError, match=r"'.*onnx' is a file, not an export folder"):
        export_student(resnet_export[0], "onnx", output_dir=tmp_path / "out", overwrite=True)


def test_an_empty_parity_sample_is_refused_before_anything_is_written(tmp_path):
    from datasets import Dataset

    folder = _tiny_resnet(tmp_path / "student")
    with pytest.raises(ValueError, match="parity sample is empty"):
        export_student(folder, "onnx", images=[])
    empty = make_colour_dataset(4, 0).select([])
    assert isinstance(empty, Dataset) and len(empty) == 0
    with pytest.raises(ValueError, match="image sample is empty: the dataset has no rows"):
        export_student(folder, "onnx", images=empty)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]


def test_the_export_command_names_a_calibration_folder_without_images(resnet_export, tmp_path, capsys):
    from hf_task_distill.cli import main

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (notes, empty):
        assert main(["export", resnet_export[0], "--formats", "onnx-int8", "--calibration", str(folder)]) == 2
        assert f"--calibration '{folder}' holds no images" in capsys.readouterr().err


def test_the_onnx_files_carry_no_source_path_of_the_exporting_machine(resnet_export):
    import hf_task_distill

    folder, written = resnet_export
    machine_paths = {  # where this checkout and the installed packages live
        os.path.dirname(os.path.abspath(hf_task_distill.__file__)),
        os.path.dirname(os.path.abspath(torch.__file__)),
    }
    for name in ("model.onnx", "model_quantized.onnx"):
        with open(os.path.join(folder, "onnx", name), "rb") as f:
            data = f.read()
        assert onnx_format.STACK_TRACE_KEY.encode() not in data, name
        assert not [p for p in machine_paths if p.encode() in data], name


def test_a_student_with_truncated_weights_is_refused_naming_the_file(tmp_path):
    folder = _tiny_resnet(tmp_path / "student")
    weights = os.path.join(folder, "model.safetensors")
    os.truncate(weights, os.path.getsize(weights) - 500)
    with pytest.raises(
        ValueError, match=r"model.safetensors' is not a readable safetensors file .*not fully"
    ):
        export_student(folder, ["safetensors", "onnx"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any format wrote
