"""Distillation speed: online teacher vs teacher-output cache, as ratios measured in one run.

A ViT-S/14-shaped DINOv2 teacher at 224 px (random init: speed does not depend on what it learned)
and a timm MobileViT-V2 0.5 student at 128 px, on JPEG "transfer" images of 256x256. Measured:

1. online distillation step / (teacher forward alone + plain-Trainer student step alone), same batch;
2. cached distillation step / plain-Trainer supervised student step, same batch;
3. cache-building throughput (decode, render K views, teacher, write shards) / raw teacher forward
   throughput on pre-rendered tensors, same views per batch;
4. a real 10-epoch ``Trainer.train()`` of online vs cached (K views, the build included): measured
   speed-up and epochs-to-break-even, next to what the FLOP counts predict;
5. images/s the training data loader delivers (online paired views, and cached views) / images/s the
   student trains at, with the Trainer's default worker count.

Steps include the optimizer update. Each timing is the median of interleaved repeats.

    python benchmarks/distillation_speed.py [--images 96] [--epochs 10] [--views 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset, Features  # noqa: E402
from datasets import Image as ImageFeature  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Dinov2Config, Dinov2ForImageClassification, Trainer, TrainingArguments  # noqa: E402

from hf_task_distill import (  # noqa: E402
    DistillationArguments,
    DistillationTrainer,
    PairedViews,
    TeacherCacheConfig,
    ViewAugmentation,
    ViewSpec,
    build_teacher_cache,
    create_student,
)
from hf_task_distill.ledger import count_flops_per_image  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LABELS = [f"class_{i}" for i in range(10)]
TEACHER_SIZE, STUDENT_SIZE, BATCH = 224, 128, 32
TEACHER_VIEW = ViewSpec(size=(TEACHER_SIZE, TEACHER_SIZE), crop_pct=0.875)


def make_teacher() -> Dinov2ForImageClassification:
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        patch_size=14,
        image_size=TEACHER_SIZE,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    return Dinov2ForImageClassification(config).eval()


def make_student():
    torch.manual_seed(1)
    return create_student("mobilevitv2_050", LABELS, image_size=STUDENT_SIZE)


def make_transfer_set(n: int, seed: int = 0) -> Dataset:
    """Smooth random colour fields with noise, JPEG-encoded like web images."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((256, 256), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        cells.append({"bytes": buffer.getvalue(), "path": None})
    return Dataset.from_dict({"image": cells}, features=Features({"image": ImageFeature()}))


def _args(cls, output_dir: str, **kwargs):
    base = dict(
        output_dir=output_dir,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
        logging_strategy="no",
    )
    base.update(kwargs)
    return cls(**base)


def _step(trainer, batch) -> None:
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def step_ratios(teacher, transfer, cache_dir: str, work: str, repeats: int) -> dict:
    """Items 1 and 2: per-step overheads of the distillation trainer over its irreducible parts."""
    views = PairedViews(TEACHER_VIEW, ViewSpec.from_model(make_student()), ViewAugmentation())
    online = DistillationTrainer(
        model=make_student(),
        teacher_model=teacher,
        args=_args(DistillationArguments, f"{work}/online"),
        train_dataset=transfer,
        views=views,
    )
    cache = build_teacher_cache(
        teacher,
        transfer,
        cache_dir,
        config=TeacherCacheConfig(num_views=1),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    cached = DistillationTrainer(
        model=make_student(),
        teacher_cache=cache,
        args=_args(DistillationArguments, f"{work}/cached"),
        train_dataset=transfer,
        views=views,
    )
    plain = Trainer(model=make_student(), args=_args(TrainingArguments, f"{work}/plain"))
    for trainer in (online, cached, plain):
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not run here
    online_batch, cached_batch = _first_batch(online), _first_batch(cached)
    labels = torch.randint(0, len(LABELS), (BATCH,), device=online_batch["pixel_values"].device)
    plain_batch = {"pixel_values": online_batch["pixel_values"], "labels": labels}
    plain_cached_batch = {"pixel_values": cached_batch["pixel_values"], "labels": labels}
    timings = {name: [] for name in ("online", "teacher", "student", "cached", "student_cached_batch")}
    for rep in range(repeats + 1):  # the first round warms up and is dropped
        sample = {
            "online": _timed(lambda: _step(online, online_batch)),
            "teacher": _timed(lambda: online.teacher_logits(online_batch)),
            "student": _timed(lambda: _step(plain, plain_batch)),
            "cached": _timed(lambda: _step(cached, cached_batch)),
            "student_cached_batch": _timed(lambda: _step(plain, plain_cached_batch)),
        }
        if rep:
            for name, value in sample.items():
                timings[name].append(value)
    med = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "median_s": {k: round(v, 5) for k, v in med.items()},
        "online_over_teacher_plus_student": round(med["online"] / (med["teacher"] + med["student"]), 4),
        "cached_over_plain_student": round(med["cached"] / med["student_cached_batch"], 4),
        "student_images_per_s": round(BATCH / med["student"], 2),
        "teacher_share_of_online_step": round(med["teacher"] / med["online"], 4),
        "repeats": repeats,
    }


def build_ratio(teacher, transfer, work: str, views: int, repeats: int) -> dict:
    """Item 3: the cache build, end to end, against the teacher's raw forward on the same views.

    Raw forward and build alternate ``repeats`` times (each build into a fresh folder) and the ratio
    of the medians is reported: single timings on this shared machine vary by 20%.
    """
    from hf_task_distill.data.images import load_rgb_image
    from hf_task_distill.teacher_cache import _TeacherViews

    config = TeacherCacheConfig(num_views=views, batch_size=BATCH, shard_size=64)
    rendered = _TeacherViews(TEACHER_VIEW, ViewAugmentation(), views, 0)  # what the build renders per row
    device = next(teacher.parameters()).device
    images = [load_rgb_image(transfer[i]["image"]) for i in range(len(transfer))]
    pixels = torch.cat([rendered(i, image)["pixels"] for i, image in enumerate(images)]).to(device)
    total_views = pixels.shape[0]

    def raw_forward():
        with torch.inference_mode():
            for start in range(0, total_views, BATCH):
                teacher(pixel_values=pixels[start : start + BATCH])

    raw_forward()  # warm-up
    raw_times, build_times = [], []
    for rep in range(repeats):
        raw_times.append(_timed(raw_forward))
        build_times.append(
            _timed(
                lambda rep=rep: build_teacher_cache(
                    teacher,
                    transfer,
                    f"{work}/build-{rep}",
                    config=config,
                    teacher_view=TEACHER_VIEW,
                    progress=False,
                )
            )
        )
    raw_s, build_s = statistics.median(raw_times), statistics.median(build_times)
    return {
        "views": total_views,
        "raw_teacher_views_per_s": round(total_views / raw_s, 2),
        "cache_build_views_per_s": round(total_views / build_s, 2),
        "build_over_raw_throughput": round(raw_s / build_s, 4),
        "pairs_raw_s": [round(t, 2) for t in raw_times],
        "pairs_build_s": [round(t, 2) for t in build_times],
    }


def ten_epoch_runs(teacher, transfer, work: str, epochs: int, views: int, flops: dict) -> dict:
    """Item 4: whole Trainer runs, online against cached (the build counted in the cached run)."""
    augmentation = ViewAugmentation()
    paired = PairedViews(TEACHER_VIEW, ViewSpec.from_model(make_student()), augmentation)
    online = DistillationTrainer(
        model=make_student(),
        teacher_model=teacher,
        args=_args(DistillationArguments, f"{work}/online10", num_train_epochs=epochs),
        train_dataset=transfer,
        views=paired,
    )
    online_s = _timed(online.train)
    config = TeacherCacheConfig(num_views=views, batch_size=BATCH, shard_size=64)
    build_s = _timed(
        lambda: build_teacher_cache(
            teacher,
            transfer,
            f"{work}/cache10",
            config=config,
            teacher_view=TEACHER_VIEW,
            augmentation=augmentation,
            progress=False,
        )
    )
    cached = DistillationTrainer(
        model=make_student(),
        teacher_cache=f"{work}/cache10",
        args=_args(DistillationArguments, f"{work}/cached10", num_train_epochs=epochs),
        train_dataset=transfer,
        views=paired,
    )
    train_s = _timed(cached.train)
    cached_s = build_s + train_s
    per_epoch_online, per_epoch_cached = online_s / epochs, train_s / epochs
    f_t, f_s = flops["teacher_forward"], flops["student_training"]
    return {
        "epochs": epochs,
        "views": views,
        "images": len(transfer),
        "online_s": round(online_s, 2),
        "cache_build_s": round(build_s, 2),
        "cached_train_s": round(train_s, 2),
        "speedup_measured": round(online_s / cached_s, 3),
        "speedup_predicted_by_flops": round(epochs * (f_t + f_s) / (views * f_t + epochs * f_s), 3),
        "break_even_epochs_measured": round(build_s / (per_epoch_online - per_epoch_cached), 2),
        "break_even_epochs_predicted_by_flops": round(views * f_t / f_t, 2),
    }


def loader_ratios(teacher, transfer, cache_dir: str, student_images_per_s: float, batches: int) -> dict:
    """Item 5: what the training data loader delivers with the default worker count."""
    paired = PairedViews(TEACHER_VIEW, ViewSpec.from_model(make_student()), ViewAugmentation())
    work = tempfile.mkdtemp()
    online = DistillationTrainer(
        model=make_student(),
        teacher_model=teacher,
        args=_args(DistillationArguments, work),
        train_dataset=transfer,
        views=paired,
    )
    cached = DistillationTrainer(
        model=make_student(),
        teacher_cache=cache_dir,
        args=_args(DistillationArguments, work),
        train_dataset=transfer,
        views=paired,
    )
    out = {"dataloader_num_workers": online.args.dataloader_num_workers}
    for name, trainer in (("online_paired_views", online), ("cached_views", cached)):
        loader = trainer.get_train_dataloader()
        images, start = 0, time.perf_counter()
        while images < batches * BATCH:
            for batch in loader:
                images += batch["pixel_values"].shape[0]
                if images >= batches * BATCH:
                    break
        rate = images / (time.perf_counter() - start)
        out[f"{name}_images_per_s"] = round(rate, 2)
        out[f"{name}_over_student"] = round(rate / student_images_per_s, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="transfer images in the 10-epoch runs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--views", type=int, default=4, help="cached views per image (K)")
    parser.add_argument("--repeats", type=int, default=8)
    cli = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = make_teacher().to(device)
    student = make_student()
    flops = {
        "teacher_forward": count_flops_per_image(teacher, TEACHER_SIZE),
        "student_training": count_flops_per_image(student, STUDENT_SIZE, training=True),
    }
    transfer = make_transfer_set(max(cli.images, 4 * BATCH))
    work = tempfile.mkdtemp(prefix="distill_speed_")
    report = {
        "benchmark": "distillation_speed",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "teacher": f"DINOv2 ViT-S/14 shape, {TEACHER_SIZE}px (random init)",
        "student": f"mobilevitv2_050, {STUDENT_SIZE}px",
        "batch": BATCH,
        "gflops_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
    }
    started = time.perf_counter()
    report["steps"] = step_ratios(teacher, transfer.select(range(BATCH)), f"{work}/cache1", work, cli.repeats)
    print(json.dumps(report["steps"], indent=1), file=sys.stderr)
    report["cache_build"] = build_ratio(teacher, transfer.select(range(BATCH)), work, cli.views, 3)
    print(json.dumps(report["cache_build"], indent=1), file=sys.stderr)
    report["loader"] = loader_ratios(
        teacher,
        transfer.select(range(BATCH)),
        f"{work}/build-0",
        report["steps"]["student_images_per_s"],
        4,
    )
    print(json.dumps(report["loader"], indent=1), file=sys.stderr)
    report["ten_epochs"] = ten_epoch_runs(
        teacher, transfer.select(range(cli.images)), work, cli.epochs, cli.views, flops
    )
    print(json.dumps(report["ten_epochs"], indent=1), file=sys.stderr)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "distillation_speed.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
