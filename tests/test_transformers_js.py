"""Exported students run in Transformers.js under node, offline, with PyTorch's predictions.

Each family below is built tiny from its config, exported to ``onnx/model.onnx`` and run by
``hf_task_distill/export/node/classify.mjs`` through Transformers.js's own image processor. On images
already at the processor's resize size, preprocessing is the same in both (max |Δpixel| ~ 2e-7
measured) and the logits agree to 1e-4. Other sizes are resized by sharp in node and by PIL in
Python, which interpolate differently: there only top-1 is compared. Without node the tests skip and
say so; with node, a failed ``npm ci`` of the pinned package fails them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from hf_task_distill.export import export_student
from hf_task_distill.export.transformers_js import (
    TransformersJsUnavailable,
    install_transformers_js,
    run_in_transformers_js,
    transformers_js_preprocessor_config,
    write_transformers_js_files,
)

LABELS = ["red", "green", "blue", "yellow"]
LOGIT_TOLERANCE = 1e-4  # measured: at most 6.3e-6 (MobileViT-V2), 2e-6 or less for the others
#: int8 (``dtype: "q8"``) against PyTorch fp32: the share of images with the same top-1 (see the test).
Q8_MIN_TOP1_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def install_dir():
    """The pinned Transformers.js, installed once into the user cache (``npm ci``)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH: the Transformers.js tests need Node.js (>= 18) with npm")
    return install_transformers_js()  # a failed install fails the tests


def _randomise(model):
    """torch's default initialisation and a 10x head: transformers' own leaves tiny or zero logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "reset_parameters") and not list(module.children()):
                module.reset_parameters()
        head = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        head.weight.mul_(10)
    return model.eval()


def _save_and_export(model, folder, processor=None, formats=("onnx",)):
    """Save the student as the pipeline does and export it with the project's own exporter."""
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    calibration = None
    if "onnx-int8" in formats:  # static int8, as a run's export calibrates it (on its transfer set)
        rng, size = (
            np.random.default_rng(9),
            model.config.image_size if hasattr(model.config, "image_size") else 32,
        )
        calibration = [
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
                (size, size), Image.BICUBIC
            )
            for _ in range(16)
        ]
    export_student(folder, list(formats), calibration=calibration)
    return folder


def _timm_resnet(folder):
    from hf_task_distill.models import create_student

    model = create_student("resnet10t", LABELS, model_args={"channels": (8, 16, 32, 64)}, image_size=32)
    return _save_and_export(_randomise(model), folder, formats=("onnx-int8",))


def _hf_resnet(folder):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    config.id2label, config.label2id = dict(enumerate(LABELS)), {n: i for i, n in enumerate(LABELS)}
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    return _save_and_export(_randomise(ResNetForImageClassification(config)), folder, processor)


def _mobilevitv2(folder):
    from transformers import MobileViTImageProcessor, MobileViTV2Config, MobileViTV2ForImageClassification

    config = MobileViTV2Config(width_multiplier=0.25, image_size=64, num_labels=len(LABELS))
    processor = MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    model = _randomise(MobileViTV2ForImageClassification(config))
    return _save_and_export(model, folder, processor, formats=("onnx-int8",))


def _segformer(folder):
    from conftest import tiny_segformer

    from hf_task_distill.models.families.transformers_segmentation import segmentation_image_processor

    model = tiny_segformer(len(LABELS), label_names=LABELS)
    model.config.image_size = 32
    return _save_and_export(_randomise(model), folder, segmentation_image_processor(32))


# family: (builder, task, the size the processor resizes to (resizing is then the identity),
#          how Transformers.js loads it)
FAMILIES = {
    "timm-resnet": (_timm_resnet, "image-classification", 36, "AutoModel+AutoImageProcessor"),
    "transformers-resnet": (_hf_resnet, "image-classification", 36, "pipeline"),
    "mobilevitv2": (_mobilevitv2, "image-classification", 72, "pipeline"),
    "segformer": (_segformer, "image-segmentation", 32, "pipeline"),
}


def _images(folder, sizes, seed):
    """PNG files of smooth random colour fields (4x4 colours, bicubic-upscaled) at ``sizes``."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for i in range(20):
        width, height = sizes[i % len(sizes)]
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        paths.append(str(folder / f"{i:02d}.png"))
        small.resize((width, height), Image.BICUBIC).save(paths[-1])
    return paths


def _pytorch_logits(folder, task, paths):
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
    )

    auto = (
        AutoModelForImageClassification
        if task == "image-classification"
        else AutoModelForSemanticSegmentation
    )
    model, processor = auto.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        return [
            model(**processor(Image.open(p).convert("RGB"), return_tensors="pt")).logits[0].numpy()
            for p in paths
        ]


def _require_onnx_export():
    for package in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(
            package, reason=f"{package} is not installed: pip install 'hf-task-distill[onnx]'"
        )


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    """The family's student saved and exported by ``export_student`` (nothing else added)."""
    _require_onnx_export()
    builder, task, size, route = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = builder(root / "student")
    with open(folder / "onnx" / "export.json", encoding="utf-8") as f:
        written = json.load(f)["transformers_js"]["written"]
    timm = request.param == "timm-resnet"
    assert written == (["preprocessor_config.json"] if timm else [])  # only timm students need a file
    return folder, task, size, route, root


def test_student_runs_in_transformers_js_with_pytorchs_logits(install_dir, exported):
    folder, task, size, route, root = exported
    paths = _images(root / "at_size", [(size, size)], seed=0)
    results = run_in_transformers_js(str(folder), paths, task=task, install_dir=install_dir)
    assert {r["loaded_with"] for r in results} == {route}
    for path, result, logits in zip(paths, results, _pytorch_logits(folder, task, paths), strict=True):
        assert result["shape"] == list(logits.shape), path
        js = np.asarray(result["logits"], dtype=np.float32).reshape(logits.shape)
        assert np.abs(js - logits).max() <= LOGIT_TOLERANCE, (path, np.abs(js - logits).max())
        assert np.array_equal(np.asarray(result["top1"]).reshape(-1), logits.argmax(0).reshape(-1)), path


def test_student_in_transformers_js_keeps_top1_when_images_are_resized(install_dir, exported):
    """sharp (node) and PIL (Python) resize differently, so logits move (measured up to 0.02 at a
    logit scale of 0.2-2); the top-1 class held on all 20 images, and for 97.7% of SegFormer's pixels."""
    folder, task, _, _, root = exported
    paths = _images(root / "resized", [(40, 36), (48, 40), (36, 44), (96, 80)], seed=1)
    results = run_in_transformers_js(str(folder), paths, task=task, install_dir=install_dir)
    top1 = [np.asarray(r["top1"]).reshape(-1) for r in results]
    expected = [logits.argmax(0).reshape(-1) for logits in _pytorch_logits(folder, task, paths)]
    agreement = np.mean(np.concatenate(top1) == np.concatenate(expected))
    assert agreement >= (0.95 if task == "image-segmentation" else 1.0), agreement


@pytest.mark.parametrize("exported", ["timm-resnet", "mobilevitv2"], indirect=True)
def test_int8_student_runs_in_transformers_js_as_in_onnxruntime_python(install_dir, exported):
    """``dtype: "q8"`` runs ``onnx/model_quantized.onnx``, static QDQ int8 (calibrated at export): node
    runs one image at a time and gives ONNX Runtime's logits in Python on node's pixel values, whether
    Python runs them one at a time or all in one batch (static activation ranges do not depend on the
    batch; the dynamic int8 this exporter wrote before moved by up to 0.36 logit between batches)."""
    import onnxruntime

    folder, task, size, _, root = exported
    paths = _images(root / "q8", [(size, size)], seed=4)
    results = run_in_transformers_js(str(folder), paths, dtype="q8", install_dir=install_dir, pixels=True)
    session = onnxruntime.InferenceSession(
        str(folder / "onnx" / "model_quantized.onnx"), providers=["CPUExecutionProvider"]
    )
    with open(folder / "onnx" / "export.json", encoding="utf-8") as f:
        assert json.load(f)["quantization"]["method"] == "static"
    q8 = np.asarray([r["logits"] for r in results], dtype=np.float32)
    batch = np.stack(
        [np.asarray(r["pixel_values"], dtype=np.float32).reshape(r["pixel_shape"]) for r in results]
    )
    batched = session.run(["logits"], {"pixel_values": batch})[0]
    for path, result, logits, in_batch in zip(paths, results, q8, batched, strict=True):
        pixels = np.asarray(result["pixel_values"], dtype=np.float32).reshape(1, *result["pixel_shape"])
        python = session.run(["logits"], {"pixel_values": pixels})[0][0]
        assert np.abs(python - logits).max() <= 1e-5 and python.argmax() == result["top1"], path
        assert np.abs(in_batch - logits).max() <= 1e-5, path
    fp32 = np.stack(_pytorch_logits(folder, task, paths))
    assert np.abs(q8 - fp32).max() > 1e-4  # the quantized file ran, not model.onnx
    agreement = np.mean(q8.argmax(1) == fp32.argmax(1))
    assert agreement >= Q8_MIN_TOP1_AGREEMENT, (agreement, np.abs(q8 - fp32).max())


@pytest.mark.parametrize("exported", ["timm-resnet"], indirect=True)
def test_timm_student_folder_still_loads_in_python_with_the_transformers_js_file(exported):
    """Python reads a local timm folder's preprocessing from config.json, never the extra file."""
    from transformers import AutoImageProcessor, pipeline

    folder, task, _, _, root = exported
    assert type(AutoImageProcessor.from_pretrained(folder)).__name__ == "TimmWrapperImageProcessor"
    path = _images(root / "python", [(50, 40)], seed=2)[0]
    assert {p["label"] for p in pipeline(task, model=str(folder))(path)} == set(LABELS)


@pytest.mark.parametrize("exported", ["timm-resnet"], indirect=True)
def test_timm_student_without_its_preprocessor_file_is_refused_naming_the_file(
    install_dir, exported, tmp_path
):
    folder = shutil.copytree(exported[0], tmp_path / "student")
    (folder / "preprocessor_config.json").unlink()
    paths = _images(tmp_path / "images", [(36, 36)], seed=3)[:1]
    with pytest.raises(RuntimeError, match=r"preprocessor_config\.json.*write_transformers_js_files"):
        run_in_transformers_js(str(folder), paths, install_dir=install_dir)
    assert write_transformers_js_files(str(folder)) == [str(folder / "preprocessor_config.json")]
    assert len(run_in_transformers_js(str(folder), paths, install_dir=install_dir)) == 1


@pytest.mark.parametrize(
    "pretrained_cfg, expected",
    [
        ({"input_size": (3, 32, 32), "crop_pct": 0.875}, {"shortest_edge": 36}),
        (
            {"input_size": (3, 224, 224), "crop_pct": 0.95, "crop_mode": "squash"},
            {"height": 235, "width": 235},
        ),
    ],
)
def test_timm_preprocessing_becomes_transformers_js_fields(pretrained_cfg, expected):
    config = transformers_js_preprocessor_config(
        {**pretrained_cfg, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    )
    assert config["size"] == expected and config["resample"] == 2
    assert config["crop_size"] == {
        "height": pretrained_cfg["input_size"][1],
        "width": pretrained_cfg["input_size"][2],
    }
    assert config["image_mean"] == [0.5] * 3 and config["image_std"] == [0.25] * 3
    assert config["image_processor_type"] == "TimmWrapperImageProcessor"  # what Python keeps using
    json.dumps(config)


@pytest.mark.parametrize(
    "pretrained_cfg, problem",
    [
        ({"input_size": (3, 32, 32), "crop_mode": "border"}, "crop_mode 'border'"),
        ({"input_size": (3, 32, 48)}, "crop_mode 'center' at input size 32x48"),
        ({"input_size": (3, 32, 32), "interpolation": "lanczos"}, "interpolation 'lanczos'"),
    ],
)
def test_timm_preprocessing_transformers_js_cannot_reproduce_is_refused(pretrained_cfg, problem):
    with pytest.raises(ValueError, match=problem):
        transformers_js_preprocessor_config(pretrained_cfg)


def test_missing_node_or_package_names_the_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TransformersJsUnavailable, match="node is not on PATH"):
        run_in_transformers_js(str(tmp_path), ["x.png"], install_dir=str(tmp_path))
    monkeypatch.undo()
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: the not-installed message needs node")
    with pytest.raises(TransformersJsUnavailable, match="install_transformers_js"):
        run_in_transformers_js(str(tmp_path), ["x.png"], install_dir=str(tmp_path / "empty"))


def _train_briefly(model, task, epochs: int = 2):
    """Supervised AdamW on the task's training split at the student's evaluation view (seeded), so
    the logits are a trained classifier's (test accuracy ~80%), not a random one's near-ties."""
    from hf_task_distill.data import ViewSpec
    from hf_task_distill.data.views import eval_view, render_view

    spec = ViewSpec.from_model(model)
    pixels = torch.stack(
        [
            render_view(
                torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(),
                eval_view(image.size, spec),
                spec,
            )
            for image in task["train"]["image"]
        ]
    )
    labels = torch.tensor(task["train"]["label"])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(64):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels[batch]).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def demo_student(tmp_path_factory):
    """The demo's student (``demo_defaults()``: its architecture at its image size and evaluation crop,
    on the digits task at that size), trained briefly, saved, exported by ``export_student`` with the
    demo's test split as the parity sample; the test split's images written as PNG files."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: the digits task needs it")
    _require_onnx_export()
    from hf_task_distill.demo import demo_defaults
    from hf_task_distill.demo.digits import load_digits_task
    from hf_task_distill.models import create_student

    defaults = demo_defaults()
    task = load_digits_task(defaults["student_image_size"])
    torch.manual_seed(0)
    model = create_student(
        defaults["student"],
        task.label_names,
        image_size=defaults["student_image_size"],
        crop_pct=defaults["student_crop_pct"],
    )
    root = tmp_path_factory.mktemp("demo")
    _train_briefly(model, task).save_pretrained(root / "student")
    export_student(root / "student", "onnx", images=task)
    (root / "test").mkdir()
    paths = [str(root / "test" / f"{i:03d}.png") for i in range(len(task["test"]))]
    for path, image in zip(paths, task["test"]["image"], strict=True):
        image.save(path)
    return root / "student", paths, np.asarray(task["test"]["label"])


def _normalised(path, processor_config) -> np.ndarray:
    """The PNG's own pixels, scaled and normalised as the student's processor says: no resampling."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean, std = (
        np.asarray(processor_config[k], dtype=np.float32)[:, None, None] for k in ("image_mean", "image_std")
    )
    return (pixels - mean) / std


def test_the_demo_student_predicts_in_transformers_js_what_pytorch_predicts_on_the_test_digits(
    install_dir, demo_student
):
    """All 539 test digits, each runtime with its own preprocessing. The digits are 32 px, the
    student's input size, and the demo evaluates its student with ``crop_pct`` 1.0: the resize to a
    shorter side of 32 and the 32-px centre crop leave them as they are in both runtimes (sharp's
    ``RawImage.resize`` and ``center_crop`` return an image already at the size unchanged, and so do
    PIL's ``resize`` and timm's crop), so both see the PNG's own pixels and every top-1 is PyTorch's.
    (With ResNet-18's own ``crop_pct`` 0.95 the digits were upscaled to 33 px first, by sharp in node
    and by PIL in Python, and 1-2 of 539 changed class.)"""
    from transformers import AutoImageProcessor

    folder, paths, labels = demo_student
    results = run_in_transformers_js(str(folder), paths, install_dir=install_dir, pixels=True)
    js = np.asarray([r["logits"] for r in results], dtype=np.float32)
    assert [r["top1"] for r in results] == js.argmax(1).tolist()
    config = json.loads((folder / "preprocessor_config.json").read_text())
    processor = AutoImageProcessor.from_pretrained(folder)
    expected = np.stack([_normalised(p, config) for p in paths])
    node_pixels = np.asarray([r["pixel_values"] for r in results], dtype=np.float32).reshape(expected.shape)
    python_pixels = np.concatenate(
        [processor(Image.open(p).convert("RGB"), return_tensors="pt")["pixel_values"].numpy() for p in paths]
    )
    untouched = {
        "node": np.abs(node_pixels - expected).max(),
        "python": np.abs(python_pixels - expected).max(),
    }
    assert max(untouched.values()) <= 1e-5, untouched  # float32 rounding, no resampling
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        own = model(**processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")).logits
    own = own.numpy()
    difference = np.abs(js - own).max()
    accuracy = {
        "transformers.js": np.mean(js.argmax(1) == labels),
        "pytorch": np.mean(own.argmax(1) == labels),
    }
    print(
        f"demo student: pixels vs the PNG's own, max |Δ| {untouched}; with each runtime's own "
        f"preprocessing max |Δlogit| {difference:.2g}, top-1 agreement "
        f"{int(np.sum(js.argmax(1) == own.argmax(1)))} of {len(paths)}; accuracy {accuracy}"
    )
    assert difference <= LOGIT_TOLERANCE, difference
    assert np.array_equal(js.argmax(1), own.argmax(1)), np.flatnonzero(js.argmax(1) != own.argmax(1))
