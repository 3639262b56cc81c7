"""Does a student distilled from the teacher cache end where online distillation ends? Digits, 3 seeds.

The offline demo's setting (scikit-learn digits at 32 px, 10 labels per class, the ResNet-34 teacher
finetuned on them, the unlabelled training images as transfer set, a ResNet-18 student, T=2) is run
once up to the transfer set through the pipeline. Then for each seed the student is distilled for E
epochs three ways from the same initialisation: online (fresh views every epoch), from a cache of E
views (as many views as online sees) and from a cache of E/2 views (views repeat). Test accuracy of
the distilled student, mean and standard deviation over seeds, plus the wall time of each mode.

    python benchmarks/cache_fidelity.py [--seeds 0 1 2] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_task_distill import (  # noqa: E402
    DistillationArguments,
    DistillationTrainer,
    PairedViews,
    TeacherCacheConfig,
    build_teacher_cache,
    create_student,
    load_teacher,
)
from hf_task_distill.config import PipelineConfig  # noqa: E402
from hf_task_distill.demo import demo_defaults, make_demo_teacher  # noqa: E402
from hf_task_distill.evaluation import evaluate_classifier  # noqa: E402
from hf_task_distill.pipeline import Pipeline  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--output_dir", default=None)
    cli = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    root = cli.output_dir or tempfile.mkdtemp(prefix="cache_fidelity_")
    defaults = demo_defaults()
    defaults.update(output_dir=os.path.join(root, "run"), baseline=False)
    defaults["teacher"] = make_demo_teacher(os.path.join(root, "demo-resnet34"))
    config = PipelineConfig.from_dict(defaults)
    pipeline = Pipeline(config)
    started = time.perf_counter()
    pipeline.run(["teacher", "transfer"])
    teacher = load_teacher(pipeline.teacher_path())
    transfer, test = pipeline.transfer_dataset(), pipeline.task[pipeline.eval_split]
    student_cfg = config.student
    modes = {
        "online": 0,
        f"cache, {cli.epochs} views": cli.epochs,
        f"cache, {cli.epochs // 2} views": cli.epochs // 2,
    }
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for seed in cli.seeds:
        for mode, views in modes.items():
            torch.manual_seed(seed)
            student = create_student(
                student_cfg.student, pipeline.task.id2label, image_size=student_cfg.student_image_size
            )
            paired = PairedViews.from_models(teacher, student, augmentation=pipeline.augmentation)
            args = DistillationArguments(
                output_dir=os.path.join(root, f"{mode}-{seed}"),
                per_device_train_batch_size=config.run.batch_size,
                learning_rate=student_cfg.distill_learning_rate,
                num_train_epochs=cli.epochs,
                temperature=student_cfg.temperature,
                distill_loss=student_cfg.distill_loss,
                seed=seed,
                save_strategy="no",
                report_to="none",
                logging_strategy="no",
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),
            )
            tick = time.perf_counter()
            if views:
                cache = build_teacher_cache(
                    teacher,
                    transfer,
                    os.path.join(root, f"cache-{views}-{seed}"),
                    config=TeacherCacheConfig(num_views=views, view_seed=seed, batch_size=64),
                    teacher_view=paired.teacher,
                    augmentation=paired.augmentation,
                    progress=False,
                )
                trainer = DistillationTrainer(
                    model=student, teacher_cache=cache, args=args, train_dataset=transfer, views=paired
                )
            else:
                trainer = DistillationTrainer(
                    model=student, teacher_model=teacher, args=args, train_dataset=transfer, views=paired
                )
            trainer.train()
            seconds = time.perf_counter() - tick
            metrics = evaluate_classifier(student, test, task=pipeline.task)
            runs[mode].append(
                {"seed": seed, "accuracy": round(metrics["accuracy"], 4), "wall_s": round(seconds, 1)}
            )
            print(mode, runs[mode][-1], flush=True)
    teacher_metrics = evaluate_classifier(teacher, test, task=pipeline.task)
    summary = {}
    for mode, rows in runs.items():
        accuracies = [r["accuracy"] for r in rows]
        summary[mode] = {
            "mean_accuracy": round(statistics.mean(accuracies), 4),
            "std_accuracy": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
            "mean_wall_s": round(statistics.mean(r["wall_s"] for r in rows), 1),
            "runs": rows,
        }
    report = {
        "benchmark": "cache_fidelity",
        "task": f"digits, {config.task.per_class} labels per class, {len(test)} test images",
        "teacher": "ResNet-34 finetuned on the labels (the offline demo's)",
        "teacher_accuracy": round(teacher_metrics["accuracy"], 4),
        "student": f"{student_cfg.student} at {student_cfg.student_image_size}px",
        "transfer_images": len(transfer),
        "epochs": cli.epochs,
        "seeds": cli.seeds,
        "modes": summary,
        "wall_s": round(time.perf_counter() - started, 1),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "cache_fidelity.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
