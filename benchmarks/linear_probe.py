"""Linear probe on cached features vs pushing the frozen backbone through every epoch.

The ratio (uncached time / cached time) over E epochs should be close to E: the cached probe pays
for one backbone pass, the uncached one for E. Both are measured in the same run on the same model
(this machine is shared and noisy, so only ratios are reported).

    python benchmarks/linear_probe.py [--epochs 10] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features  # noqa: E402
from datasets import Image as ImageFeature  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model  # noqa: E402

from hf_task_distill.data import load_target_task  # noqa: E402
from hf_task_distill.models import load_teacher  # noqa: E402
from hf_task_distill.teacher_finetuning import (  # noqa: E402
    TeacherFinetuner,
    TeacherFinetuningArguments,
    find_classification_head,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _images(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = [Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)) for _ in labels]
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    cli = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    folder = tempfile.mkdtemp(prefix="lp_bench_")
    config = Dinov2Config(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=112,
        patch_size=16,
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 112, "width": 112}).save_pretrained(
        folder
    )
    task = load_target_task(
        DatasetDict({"train": _images(cli.images, 0), "validation": _images(cli.images // 4, 1)})
    )
    args = TeacherFinetuningArguments(
        output_dir=folder,
        teacher_strategy="linear",
        teacher_probe_epochs=cli.epochs,
        report_to="none",
        use_cpu=True,
        per_device_eval_batch_size=64,
        probe_batch_size=64,
    )
    finetuner = TeacherFinetuner(folder, task, args)
    model = load_teacher(folder, labels=task.label_names)
    spec = finetuner.spec
    _, head = find_classification_head(model)
    finetuner.embed(model, finetuner.validation_split, spec)  # warm-up

    start = time.perf_counter()
    x, y = finetuner.embed(model, finetuner.train_split, spec)
    xv, yv = finetuner.embed(model, finetuner.validation_split, spec)
    embed_once = time.perf_counter() - start
    finetuner.train_head(head, x, y, xv, yv)
    cached = time.perf_counter() - start

    args.teacher_probe_epochs = 1
    start = time.perf_counter()
    for _ in range(cli.epochs):  # what a probe without a cache does: the backbone runs every epoch
        x, y = finetuner.embed(model, finetuner.train_split, spec)
        xv, yv = finetuner.embed(model, finetuner.validation_split, spec)
        finetuner.train_head(head, x, y, xv, yv)
    uncached = time.perf_counter() - start

    ratio = uncached / cached
    result = {
        "benchmark": "linear_probe_cache",
        "epochs": cli.epochs,
        "train_images": cli.images,
        "backbone": "DINOv2 192-d, 6 layers, 112px (random init)",
        "speedup_uncached_over_cached": round(ratio, 3),
        "speedup_over_epochs": round(ratio / cli.epochs, 3),
        "backbone_share_of_cached_time": round(embed_once / cached, 3),
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "linear_probe.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(
        f"\n| epochs E | speed-up (uncached / cached) | speed-up / E |\n|---|---|---|\n| {cli.epochs} | {ratio:.2f} | {ratio / cli.epochs:.2f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
