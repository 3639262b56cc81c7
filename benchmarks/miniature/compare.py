"""The paper's comparison in miniature, offline on a CPU: does task-oriented transfer beat the rest?

World: the "web" is a pool of rendered printed characters (``hf_task_distill.demo.glyphs``) with
unlabelled handwritten digits mixed in; the foundation model is the shipped mini-VFM (pretrained on
other glyphs, never on handwriting); the target task is scikit-learn's digits with N labels per class.
A third of the digits goes, unlabelled, into the pool; of the rest, three quarters are the test split
and one quarter the labelled candidates (test images never enter the pool: nothing is transductive).

For each N and seed, with one student architecture (``MINI_STUDENT``) and the same number of
distillation steps for (b)-(d):

  (a) student trained on the N labelled images per class only;
  (b) task-agnostic distillation: the student matches the mini-VFM's image features (feature_cosine)
      on a random pool sample of B images, then is finetuned on the labels;
  (c) task-oriented KD from the finetuned teacher on a random pool sample of B images, then finetuned;
  (d) task-oriented KD on B images retrieved from the pool with the labelled images as queries
      (``RetrievalTransferSetBuilder``), then finetuned;
  (e) the finetuned teacher itself (``TeacherFinetuner``).

Writes ``benchmarks/results/miniature.{json,md,png}``.

    python benchmarks/miniature/compare.py [--per_class 3 5] [--seeds 0 1 2] [--budget 2000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import DatasetDict  # noqa: E402

from hf_task_distill import (  # noqa: E402
    DistillationArguments,
    DistillationTrainer,
    PairedViews,
    load_teacher,
)
from hf_task_distill.data import ViewAugmentation, ViewSpec, load_target_task  # noqa: E402
from hf_task_distill.data.budget import label_budget_indices, stratified_holdout_indices  # noqa: E402
from hf_task_distill.demo.digits import load_digits_task  # noqa: E402
from hf_task_distill.demo.glyphs import GlyphPoolConfig, make_glyph_pool  # noqa: E402
from hf_task_distill.demo.miniature import MINI_STUDENT, mini_vfm_path  # noqa: E402
from hf_task_distill.evaluation import evaluate_classifier  # noqa: E402
from hf_task_distill.retrieval import ImageEncoder, RetrievalTransferSetBuilder, embed_pool  # noqa: E402
from hf_task_distill.teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
METHODS = {
    "a": "student, labels only",
    "b": "task-agnostic feature distillation + finetune",
    "c": "task-oriented KD, generic pool sample + finetune",
    "d": "task-oriented KD, retrieved transfer set + finetune",
    "e": "finetuned teacher (mini-VFM)",
}
BEFORE_FINETUNING = {  # the distilled students alone: does the last stage add anything?
    "c_distilled": "(c) before finetuning",
    "d_distilled": "(d) before finetuning",
}
AUGMENTATION = ViewAugmentation(scale=(0.6, 1.0), hflip=0.0)  # a mirrored digit is another glyph


def build_world(pool_glyphs: int, seed: int = 0):
    """Digits split into labelled candidates / pool half / test half, and the pool with its digits."""
    from datasets import Value, concatenate_datasets

    digits = load_digits_task(image_size=32, test_fraction=1 / 3, seed=seed)  # its "test" third: pool digits
    candidates_and_test = digits["train"]
    labels = np.asarray(candidates_and_test["label"])
    train_rows, test_rows = stratified_holdout_indices(labels, 0.75, seed=seed)
    train, test = (
        candidates_and_test.select(sorted(train_rows)),
        candidates_and_test.select(sorted(test_rows)),
    )
    pool_digits = digits["test"].remove_columns("label")
    glyphs = make_glyph_pool(GlyphPoolConfig(num_images=pool_glyphs, seed=1000 + seed))
    glyphs = glyphs.select_columns(["image"]).cast(pool_digits.features)
    pool = concatenate_datasets([glyphs, pool_digits])
    domain = np.r_[np.zeros(len(glyphs), bool), np.ones(len(pool_digits), bool)]
    pool = pool.add_column("is_digit", domain.tolist()).cast_column("is_digit", Value("bool"))
    return train, test, pool


def student_views(model) -> PairedViews:
    spec = ViewSpec.from_model(model)
    return PairedViews(teacher=spec, student=spec, augmentation=AUGMENTATION)


def train_student(model, dataset, *, teacher=None, loss="ce", epochs, lr, seed, batch, output_dir):
    """One DistillationTrainer run: labels only (``ce``), KD from ``teacher``, or feature matching."""
    args = DistillationArguments(
        output_dir=output_dir,
        distill_loss=loss,
        temperature=2.0 if loss == "function_matching" else 1.0,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch,
        weight_decay=0.05,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        disable_tqdm=True,
    )
    views = (
        student_views(model)
        if teacher is None
        else PairedViews(ViewSpec.from_model(teacher), ViewSpec.from_model(model), AUGMENTATION)
    )
    trainer = DistillationTrainer(
        model=model, teacher_model=teacher, args=args, train_dataset=dataset, views=views
    )
    trainer.train()
    if hasattr(model, "feature_projection"):
        del model.feature_projection  # the bridge to the teacher's features is not part of the student
    return model


def accuracy(model, test, task) -> float:
    return float(evaluate_classifier(model, test, task=task, batch_size=256)["accuracy"])


def run(per_class: int, seed: int, world, encoder, pool_embeddings, agnostic: dict, cli) -> dict[str, float]:
    """One (N, seed) cell. ``agnostic`` keeps (b)'s distilled student per seed: task-agnostic
    distillation sees no labels, so, as in the paper, it is done once and finetuned for every N."""
    train, test, pool = world
    labels = np.asarray(train["label"])
    labelled = train.select(sorted(label_budget_indices(labels, per_class=per_class, seed=seed)))
    # every label trains the teacher: its "validation" split is the labelled set itself, for reporting only
    task = load_target_task(DatasetDict({"train": labelled, "validation": labelled}), name="digits")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"miniature_n{per_class}_s{seed}_") as tmp:
        ft = dict(epochs=cli.finetune_epochs, lr=cli.finetune_lr, seed=seed, batch=16)
        kd = dict(epochs=cli.distill_epochs, lr=cli.distill_lr, seed=seed, batch=64)

        def fresh_student():
            torch.manual_seed(seed)
            return MINI_STUDENT.create(task.label_names)

        # (e) the teacher, finetuned on the labels
        teacher_args = TeacherFinetuningArguments(
            output_dir=os.path.join(tmp, "teacher"),
            teacher_strategy=cli.teacher_strategy,
            num_train_epochs=cli.teacher_epochs,
            learning_rate=cli.teacher_lr,
            teacher_layer_decay=1.0,
            per_device_train_batch_size=16,
            crop_min_scale=AUGMENTATION.scale[0],
            hflip_probability=0.0,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            seed=seed,
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
        )
        teacher = TeacherFinetuner(mini_vfm_path(), task, teacher_args).train().model
        out["e"] = accuracy(teacher, test, task)

        # (a) labels only
        out["a"] = accuracy(train_student(fresh_student(), labelled, **ft, output_dir=tmp), test, task)

        rng = np.random.default_rng(seed)
        generic = pool.select(sorted(rng.choice(len(pool), cli.budget, replace=False).tolist()))

        # (b) task-agnostic: features of the raw mini-VFM, then finetune
        if seed not in agnostic:
            vfm = load_teacher(mini_vfm_path(), labels=task.label_names)
            distilled = train_student(
                fresh_student(), generic, teacher=vfm, loss=cli.feature_loss, **kd, output_dir=tmp
            )
            agnostic[seed] = copy.deepcopy(distilled.state_dict())
        student = fresh_student()
        student.load_state_dict(agnostic[seed])
        out["b"] = accuracy(train_student(student, labelled, **ft, output_dir=tmp), test, task)

        # (c) task-oriented KD on the generic sample, then finetune
        student = train_student(
            fresh_student(), generic, teacher=teacher, loss="function_matching", **kd, output_dir=tmp
        )
        out["c_distilled"] = accuracy(student, test, task)
        out["c"] = accuracy(train_student(student, labelled, **ft, output_dir=tmp), test, task)

        # (d) task-oriented KD on the retrieved transfer set, then finetune
        builder = RetrievalTransferSetBuilder(encoder, transfer_budget=cli.budget, seed=seed, batch_size=256)
        # no held-out guard: the test digits are not in the pool by construction
        retrieved, _ = builder.build(
            pool, labelled, embeddings_dir=os.path.join(tmp, "embeddings"), pool_embeddings=pool_embeddings
        )
        out["d_digit_share"] = float(np.mean(retrieved["is_digit"]))
        out["d_rows"] = len(retrieved)
        student = train_student(
            fresh_student(), retrieved, teacher=teacher, loss="function_matching", **kd, output_dir=tmp
        )
        out["d_distilled"] = accuracy(student, test, task)
        out["d"] = accuracy(train_student(student, labelled, **ft, output_dir=tmp), test, task)
    return out


def summarise(runs: list[dict], per_class: list[int]) -> dict:
    table = {}
    for n in per_class:
        rows = [r for r in runs if r["per_class"] == n]
        table[n] = {
            m: {
                "mean": statistics.mean(r[m] for r in rows),
                "std": statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0,
                "per_seed": [round(r[m], 4) for r in rows],
            }
            for m in [*METHODS, *BEFORE_FINETUNING, "d_digit_share"]
        }
    return table


def markdown(table: dict, meta: dict) -> str:
    lines = [
        "# Miniature of the paper: digits, mini-VFM, glyph web",
        "",
        f"Pool: {meta['pool_rows']} images, {meta['pool_digit_share']:.1%} handwritten digits; test: "
        f"{meta['test_rows']} digits; B = {meta['budget']}; seeds {meta['seeds']}; wall time "
        f"{meta['wall_s'] / 60:.1f} min on {meta['device']}.",
        "",
        "| method | " + " | ".join(f"N = {n}" for n in table) + " |",
        "|---|" + "---:|" * len(table),
    ]
    rows = {**{key: f"({key}) {name}" for key, name in METHODS.items()}, **BEFORE_FINETUNING}
    for key, name in rows.items():
        cells = [f"{table[n][key]['mean']:.3f} ± {table[n][key]['std']:.3f}" for n in table]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    share = [f"{table[n]['d_digit_share']['mean']:.1%}" for n in table]
    lines.append("| digit share of the retrieved set | " + " | ".join(share) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(table)
    for i, n in enumerate(table):
        means = [table[n][k]["mean"] for k in METHODS]
        stds = [table[n][k]["std"] for k in METHODS]
        ax.bar(np.arange(len(METHODS)) + i * width, means, width, yerr=stds, capsize=3, label=f"N = {n}")
    ax.set_xticks(np.arange(len(METHODS)) + width * (len(table) - 1) / 2, [f"({k})" for k in METHODS])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.legend()
    ax.set_title("Digits from a mini-VFM: (a) labels only ... (d) retrieval + KD, (e) teacher")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--pool_glyphs", type=int, default=17_000)  # with 599 digits: a 3.4% base rate
    parser.add_argument("--distill_epochs", type=float, default=20)
    parser.add_argument("--distill_lr", type=float, default=3e-3)
    parser.add_argument("--finetune_epochs", type=float, default=40)
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--teacher_strategy", default="full")
    parser.add_argument("--teacher_epochs", type=float, default=30)
    parser.add_argument("--teacher_lr", type=float, default=5e-4)
    parser.add_argument("--feature_loss", default="feature_cosine")
    parser.add_argument("--output_prefix", default=os.path.join(RESULTS, "miniature"))
    cli = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    world = build_world(cli.pool_glyphs)
    runs, agnostic = [], {}
    encoder = ImageEncoder.from_pretrained(mini_vfm_path())
    with tempfile.TemporaryDirectory(prefix="miniature_pool_") as embeddings:
        pool_embeddings = embed_pool(
            world[2], encoder, embeddings, batch_size=256
        ).load()  # once for all runs
        for n in cli.per_class:
            for seed in cli.seeds:
                t0 = time.perf_counter()
                result = run(n, seed, world, encoder, pool_embeddings, agnostic, cli)
                runs.append({"per_class": n, "seed": seed, **result})
                print(json.dumps({**runs[-1], "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    from hf_task_distill.ledger import describe_device

    _, test, pool = world
    meta = {
        "pool_rows": len(pool),
        "pool_digit_share": float(np.mean(pool["is_digit"])),
        "test_rows": len(test),
        "budget": cli.budget,
        "seeds": cli.seeds,
        "wall_s": round(time.perf_counter() - started, 1),
        "device": describe_device(),
        "settings": vars(cli),
    }
    table = summarise(runs, cli.per_class)
    with open(cli.output_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": runs, "table": {str(k): v for k, v in table.items()}}, f, indent=2)
    with open(cli.output_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(table, meta))
    bar_chart(table, cli.output_prefix + ".png")
    print(markdown(table, meta))


if __name__ == "__main__":
    main()
