"""Does task-oriented transfer work for segmentation? The miniature, offline, on a CPU.

The synthetic segmentation world (``hf_task_distill.demo.segmentation``: printed characters composited
on textures, masks with a 1-px ignore band), a teacher finetuned on few labelled masks (UperNet over
the shipped mini-VFM's backbone), a SegFormer-B0 student trained from scratch, and three ways to
train it, each ending with finetuning on the same labelled masks:

  (a) labels only;
  (c) per-pixel KD on a random sample of the unlabelled pool (generic: mostly off-domain images);
  (d) per-pixel KD on a set retrieved from the pool around the labelled images (faiss, mini-VFM
      embeddings), the same size as (c).

The teacher is trained once (seed 0) and its weights are checked bit-identical after all runs;
students use ``--seeds``. Writes a JSON of every run's test metrics and a table.

    python benchmarks/miniature/segmentation.py --output benchmarks/results/segmentation_miniature.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time

import numpy as np
import torch

SEGMENTATION = "image-segmentation"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label_budget", type=int, default=32, help="labelled training images")
    parser.add_argument("--test_images", type=int, default=150)
    parser.add_argument("--pool_size", type=int, default=4000)
    parser.add_argument("--in_domain_share", type=float, default=0.15)
    parser.add_argument("--transfer_budget", type=int, default=1280, help="images in (c) and (d)")
    parser.add_argument("--teacher_epochs", type=int, default=30)
    parser.add_argument("--distill_epochs", type=int, default=30)
    parser.add_argument("--finetune_epochs", type=int, default=30)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/segmentation_miniature.json")
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--teacher_strategy", default="lp-ft", help="linear, full, lp-ft or lora")
    parser.add_argument("--teacher_image_size", type=int, default=64, help="the teacher's input, px")
    parser.add_argument("--head_channels", type=int, default=128, help="UperNet head width")
    parser.add_argument("--teacher_learning_rate", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--teacher_folder",
        default=None,
        help="a teacher this script's train_teacher saved: reuse it (not retrained)",
    )
    parser.add_argument(
        "--figure", default=None, help="PNG of test predictions (image, truth, teacher, students)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="seg_miniature_")
    from hf_task_distill.data import load_target_task
    from hf_task_distill.demo.segmentation import (
        SegmentationWorldConfig,
        segmentation_world_pool,
        segmentation_world_task,
    )

    splits, names = segmentation_world_task(
        seed=0, label_budget=args.label_budget, validation_images=32, test_images=args.test_images
    )
    task = load_target_task(splits, label_names=names, name="segmentation-world")
    pool = segmentation_world_pool(
        size=args.pool_size, in_domain_share=args.in_domain_share, seed=0, with_kind=True
    )
    started = time.time()
    if args.teacher_folder:
        teacher, processor, teacher_metrics = load_trained_teacher(task, args.teacher_folder)
    else:
        teacher, processor, teacher_metrics = train_teacher(task, args, os.path.join(work, "teacher"))
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    retrieved = retrieved_set(pool, task, args.transfer_budget, os.path.join(work, "retrieval"))
    transfer = {"random": random_sample(pool, len(retrieved)), "retrieved": retrieved}  # the same size
    shares = {k: float(np.mean(np.asarray(v["kind"]) == "task")) for k, v in transfer.items()}
    methods = {
        "(a) labels only": None,
        "(c) KD, random pool sample": transfer["random"],
        "(d) KD, retrieved set": transfer["retrieved"],
    }
    runs, students = [], {}
    for seed in args.seeds:
        for method, transfer_set in methods.items():
            record, students[method] = run_one(
                method, transfer_set, task, teacher, processor, seed, args, work
            )
            runs.append(record)
        print(json.dumps(runs[-3:], indent=1), flush=True)
        identical = all(torch.equal(snapshot[k], v) for k, v in teacher.state_dict().items())
        result = {  # written after every seed: a long run interrupted keeps what it measured
            "settings": vars(args),
            "world": dataclasses.asdict(SegmentationWorldConfig()),
            "teacher_test": teacher_metrics,
            "teacher_weights_bit_identical_after_all_runs": identical,
            "in_domain_share_of_transfer_sets": shares,
            "runs": runs,
            "table": table(runs),
            "minutes": round((time.time() - started) / 60, 1),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.figure:
        prediction_figure(task, teacher, students, args.figure)
    print("\n".join(result["table"]))
    print("teacher weights bit-identical after all runs:", identical)


def train_teacher(task, args, directory):
    from transformers import SegformerImageProcessor

    from hf_task_distill.tasks import get_task_type
    from hf_task_distill.teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments

    processor = SegformerImageProcessor(  # the mini-VFM's normalisation, at the world's resolution
        size={"height": args.teacher_image_size, "width": args.teacher_image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_reduce_labels=False,
    )
    from hf_task_distill.models.segmentation import segmentation_teacher_processor

    vfm = segmentation_teacher_processor("mini-vfm")
    processor.image_mean, processor.image_std = list(vfm.image_mean), list(vfm.image_std)
    finetuning = TeacherFinetuningArguments(
        output_dir=directory,
        teacher_strategy=args.teacher_strategy,
        num_train_epochs=args.teacher_epochs,
        per_device_train_batch_size=8,
        learning_rate=args.teacher_learning_rate,
        warmup_steps=10,
        report_to="none",
        logging_steps=1000,
        save_total_limit=1,
        seed=0,
    )
    finetuner = TeacherFinetuner(
        "mini-vfm",
        task,
        finetuning,
        processor=processor,
        model_kwargs={"head_channels": args.head_channels, "auxiliary_head": False},
    )
    result = finetuner.train()
    folder = finetuner.save(os.path.join(directory, "final"))
    teacher = get_task_type(SEGMENTATION).load_model(folder).eval()
    metrics, _ = get_task_type(SEGMENTATION).evaluate(
        teacher, task["test"], task=task, batch_size=32, where="test"
    )
    print("teacher:", result.metrics, "test:", metrics, flush=True)
    return teacher, processor, metrics


def load_trained_teacher(task, folder):
    from transformers import AutoImageProcessor

    from hf_task_distill.tasks import get_task_type

    segmentation = get_task_type(SEGMENTATION)
    teacher = segmentation.load_model(folder).eval()
    metrics, _ = segmentation.evaluate(teacher, task["test"], task=task, batch_size=32, where="test")
    print("teacher (reused):", metrics, flush=True)
    return teacher, AutoImageProcessor.from_pretrained(folder), metrics


def random_sample(pool, size):
    rows = sorted(random.Random(0).sample(range(len(pool)), size))
    return pool.select(rows)


def retrieved_set(pool, task, budget, directory):
    from hf_task_distill.retrieval import RetrievalTransferSetBuilder

    per_query = max(1, -(-budget // len(task["train"])))
    builder = RetrievalTransferSetBuilder("mini-vfm", per_query_k=per_query)  # 32 queries x k, de-duplicated
    transfer, stats = builder.build(
        pool,
        task["train"].select_columns([task.image_column]),
        heldout=[task["test"]],
        embeddings_dir=directory,
    )
    print("retrieval:", {k: v for k, v in vars(stats).items() if isinstance(v, int | float)}, flush=True)
    return transfer


def new_student(names, seed, size):
    from transformers import set_seed

    from hf_task_distill.models import create_student

    set_seed(seed)
    return create_student("segformer-b0", names, task_type=SEGMENTATION, image_size=size)


def run_one(method, transfer, task, teacher, processor, seed, args, work):
    from hf_task_distill.data import PairedViews, ViewAugmentation, ViewSpec
    from hf_task_distill.tasks import get_task_type
    from hf_task_distill.trainer import DistillationArguments, DistillationTrainer

    started = time.time()
    student = new_student(task.label_names, seed, args.image_size)
    directory = os.path.join(work, f"{method[:3]}-{seed}")
    if transfer is not None:
        views = PairedViews(
            ViewSpec.from_image_processor(processor),
            ViewSpec.from_model(student),
            ViewAugmentation(hflip=0.5),
        )
        distill = DistillationArguments(
            output_dir=os.path.join(directory, "distill"),
            num_train_epochs=args.distill_epochs,
            per_device_train_batch_size=16,
            learning_rate=2e-3,
            warmup_steps=10,
            temperature=args.temperature,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=seed,
            remove_unused_columns=False,
        )
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=distill,
            views=views,
            train_dataset=transfer.select_columns(["image"]),
        ).train()
    distilled = {}
    if transfer is not None:  # the student after transfer alone: what finetuning starts from
        distilled, _ = get_task_type(SEGMENTATION).evaluate(
            student, task["test"], task=task, batch_size=32, where="test"
        )
    finetune_on_labels(student, task, seed, args, os.path.join(directory, "finetune"))
    metrics, _ = get_task_type(SEGMENTATION).evaluate(
        student, task["test"], task=task, batch_size=32, where="test"
    )
    record = {"method": method, "seed": seed, **{k: round(v, 4) for k, v in metrics.items()}}
    record.update({f"before_finetuning_{k}": round(v, 4) for k, v in distilled.items()})
    return {**record, "seconds": round(time.time() - started)}, student


def finetune_on_labels(student, task, seed, args, directory):
    from transformers import TrainingArguments

    from hf_task_distill.data import ViewAugmentation, ViewSpec, single_view_dataset
    from hf_task_distill.tasks import get_task_type
    from hf_task_distill.trainer import TaskTrainer

    train = single_view_dataset(
        task["train"],
        ViewSpec.from_model(student),
        train=True,
        augmentation=ViewAugmentation(hflip=0.5),
        image_column=task.image_column,
        label_column=task.label_column,
        num_labels=len(task.label_names),
        seed=seed,
        task_type=get_task_type(SEGMENTATION),
    )
    training = TrainingArguments(
        output_dir=directory,
        num_train_epochs=args.finetune_epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=10,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        seed=seed,
        remove_unused_columns=False,
    )
    TaskTrainer(model=student, args=training, train_dataset=train).train()


def prediction_figure(task, teacher, students, path, rows: int = 4):
    """Test images, their masks, the teacher's and each student's predictions (last seed), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_task_distill.tasks.segmentation import predict_masks

    test = task["test"].select(range(rows))
    columns = {"truth": None}
    _, columns["truth"] = next(predict_masks(teacher, test, task=task, batch_size=rows))
    columns["teacher"], _ = next(predict_masks(teacher, test, task=task, batch_size=rows))
    for method, student in students.items():
        columns[method.split(",")[0]], _ = next(predict_masks(student, test, task=task, batch_size=rows))
    figure, axes = plt.subplots(rows, len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.6 * rows))
    colours = plt.get_cmap("tab10", len(task.label_names))
    for r in range(rows):
        axes[r, 0].imshow(test[r][task.image_column])
        for c, (name, masks) in enumerate(columns.items(), start=1):
            mask = masks[r].float().numpy()
            shown = np.ma.masked_where(mask == 255, mask)
            axes[r, c].imshow(
                shown, cmap=colours, vmin=-0.5, vmax=len(task.label_names) - 0.5, interpolation="nearest"
            )
            if r == 0:
                axes[r, c].set_title(name, fontsize=7)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(runs):
    lines = ["| method | mIoU (mean ± sd) | pixel accuracy | seeds |", "|---|---:|---:|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        iou = np.array([r["mean_iou"] for r in rows])
        acc = np.array([r["pixel_accuracy"] for r in rows])
        spread = f" ± {iou.std(ddof=1):.3f}" if len(rows) > 1 else ""
        seeds = ", ".join(f"{r['seed']}: {r['mean_iou']:.3f}" for r in rows)
        lines.append(f"| {method} | {iou.mean():.3f}{spread} | {acc.mean():.3f} | {seeds} |")
    return lines


if __name__ == "__main__":
    main()
