"""``hf-task-distill compare``: the paper's comparison on the user's own task, as pipeline runs.

Every (label budget, seed) cell is a folder of pipeline runs (:data:`~.methods.RUNS`) under
``<output_dir>/N<n>/seed<s>/``. A run skips its finished stages, so a killed or extended
comparison redoes only what is missing: the same command again continues it, and more seeds or label
budgets add cells.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_int
from ..config import STAGES, PipelineConfig
from .methods import METHODS, RUNS
from .report import at_unequal_budget

__all__ = ["COMPARE_OWNED", "CompareArguments", "Comparison"]

logger = logging.getLogger(__name__)

#: Pipeline settings the comparison sets per cell and run: refused when given.
COMPARE_OWNED = ("per_class", "fraction", "budget_seed", "seed", "transfer", "per_query_k", "baseline")


@dataclass
class CompareArguments:
    """The comparison's own settings; every other setting is the pipeline's (``run --help``)."""

    _argument_group_name = "comparison"

    label_budgets: list[int] = field(
        default_factory=lambda: [5, 10],
        metadata={"help": "Labelled images per class: one comparison for each."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        metadata={"help": "Seeds: each draws its own labels and trains every model anew."},
    )
    pretrained_student_model: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained student for (f) and (g) (timm name with a tag, Hub id or folder, e.g. one "
            "made by `hf-task-distill convert`); without it (f) and (g) are left out."
        },
    )
    feature_loss: str = field(
        default="feature_cosine", metadata={"help": "Loss of (b), task-agnostic distillation."}
    )
    pool_domain_column: str | None = field(
        default=None,
        metadata={
            "help": "A boolean pool column marking in-domain images: the report gives their share in the "
            "pool (the base rate) and in the retrieved and sampled transfer sets."
        },
    )

    def __post_init__(self):
        for name in ("label_budgets", "seeds"):
            values = getattr(self, name)
            if isinstance(values, int):
                values = [values]
            if not values:
                raise ValueError(f"--{name} needs at least one value")
            minimum = 1 if name == "label_budgets" else 0
            setattr(self, name, [check_int(v, f"--{name}", minimum=minimum) for v in values])
            if len(set(values)) != len(values):
                raise ValueError(f"--{name} lists a value twice: {values}")
        from ..losses import build_loss

        if (
            build_loss(self.feature_loss).requires_teacher_logits
            or not build_loss(self.feature_loss).requires_features
        ):
            raise ValueError(
                f"--feature_loss '{self.feature_loss}' is not a feature loss (feature_cosine, feature_contrastive)"
            )


class Comparison:
    """The cells of a comparison and their runs. ``base`` holds the pipeline settings shared by all
    runs (its ``output_dir`` is the comparison's folder); ``args`` the comparison's own."""

    def __init__(self, base: PipelineConfig, args: CompareArguments):
        flat = base.to_dict()
        if flat["transfer_budget"] is None or flat["pool"] is None:
            raise ValueError(
                "compare needs --pool and --transfer_budget: every distillation method gets that many "
                "unique pool images (retrieved for (d) and (g), a uniform sample for (b) and (c))"
            )
        self.base, self.args = flat, args
        self.output_dir = os.path.abspath(base.run.output_dir)
        self.methods = {
            key: m
            for key, m in METHODS.items()
            if not m.needs_pretrained_student or args.pretrained_student_model is not None
        }
        self.runs = tuple(r for r in RUNS if any(m.run == r for m in self.methods.values()))

    def cell_dir(self, per_class: int, seed: int) -> str:
        """The folder of one cell: ``<output_dir>/N<per_class>/seed<seed>`` (its runs are sub-folders)."""
        return os.path.join(self.output_dir, f"N{per_class}", f"seed{seed}")

    def run_config(self, per_class: int, seed: int, run: str) -> PipelineConfig:
        """The pipeline settings of one run of one cell."""
        cell = self.cell_dir(per_class, seed)
        teacher = os.path.join(cell, "d", "teacher", "model")  # d's finetuned teacher
        flat: dict[str, Any] = {
            **self.base,
            "per_class": per_class,
            "fraction": None,
            "budget_seed": seed,
            "seed": seed,
            "output_dir": os.path.join(cell, run),
            "overwrite_stage": [],
            "push_to_hub": False,
            "per_query_k": None,
        }
        if run == "d":
            flat.update(transfer="retrieval", baseline=True, pretrained_student=False)
            # every cell retrieves from the same pool with the same encoder: embed it once
            shared = os.path.join(self.output_dir, "pool_embeddings")
            flat["pool_embeddings_dir"] = self.base["pool_embeddings_dir"] or shared
            flat["retrieval_encoder"] = self.base["retrieval_encoder"] or self.base["teacher"]
        elif run == "c":
            flat.update(teacher=teacher, teacher_strategy="none", transfer="random", baseline=False)
        elif run == "b":  # the raw VFM lends its features; no labels reach distillation
            flat.update(teacher_strategy="none", transfer="random", baseline=False)
            flat["distill_loss"] = self.args.feature_loss
            # a teacher cache stores logits, not the features this loss matches: the teacher runs online
            flat.update(teacher_cache_views=0, teacher_cache_top_k=None)
        elif run == "g":
            flat.update(teacher=teacher, teacher_strategy="none", baseline=True, pretrained_student=True)
            flat.update(student=self.args.pretrained_student_model, pool=None, transfer_budget=None)
            flat["transfer"] = os.path.join(cell, "d", "transfer", "data")  # d's retrieved set
        else:
            raise ValueError(f"unknown run '{run}'; runs are {', '.join(RUNS)}")
        if run != "d":
            flat["retrieval_encoder"] = None
            flat["pool_embeddings_dir"] = None
        if run == "g":
            flat["pool_streaming"] = False
        return PipelineConfig.from_dict(flat)

    def cells(self) -> list[tuple[int, int]]:
        """Every ``(per_class, seed)`` pair, label budgets in the outer loop, in the order given."""
        return [(n, s) for n in self.args.label_budgets for s in self.args.seeds]

    def run(self) -> list[dict[str, Any]]:
        """Run (or continue) every cell; returns one record per cell with every method's accuracy."""
        from ..pipeline import Pipeline
        from ..stages import get_stage

        self.check_pool()
        records = []
        for number, (per_class, seed) in enumerate(self.cells(), start=1):
            logger.info("compare: cell %d of %d, N = %d, seed %d", number, len(self.cells()), per_class, seed)
            for run in self.runs:
                config = self.run_config(per_class, seed, run)
                stages = [s for s in STAGES if s != "publish" and get_stage(s).enabled(config)]
                Pipeline(config).run(stages)
            records.append(self.record(per_class, seed))
        return records

    def record(self, per_class: int, seed: int) -> dict[str, Any]:
        """One cell's results, read from its runs' manifests."""
        from ..run_directory import RunDirectory

        cell = self.cell_dir(per_class, seed)
        manifests = {run: RunDirectory(os.path.join(cell, run)) for run in self.runs}
        record: dict[str, Any] = {"per_class": per_class, "seed": seed, "accuracy": {}, "distill": {}}
        for key, method in self.methods.items():
            evaluation = manifests[method.run].manifest("evaluate")
            if evaluation is None:
                raise RuntimeError(f"{os.path.join(cell, method.run)} has no finished evaluation")
            record["accuracy"][key] = float(evaluation["outputs"]["results"][method.result]["accuracy"])
            record["test_images"] = evaluation["outputs"]["images"]
        for run in self.runs:
            distill = manifests[run].manifest("distill")["outputs"]
            record["distill"][run] = {"transfer_rows": distill["transfer_rows"], "steps": distill["steps"]}
        runs = record["distill"]
        if at_unequal_budget(runs):
            logger.warning(
                "compare: N = %d, seed %d: the distillation runs got different transfer sets or step counts "
                "(%s), not the same budget; the report marks this cell",
                per_class,
                seed,
                ", ".join(
                    f"{run} {d['transfer_rows']} images / {d['steps']} steps" for run, d in runs.items()
                ),
            )
        if self.args.pool_domain_column:
            record["in_domain_share"] = {
                run: self._domain_share(os.path.join(cell, run, "transfer", "data")) for run in ("d", "c")
            }
        return record

    def compute_seconds(self) -> float:
        """Seconds the stages of every run took, summed from their manifests: the comparison's
        compute time, whatever number of commands it took to finish."""
        from ..run_directory import RunDirectory

        total = 0.0
        for per_class, seed in self.cells():
            for run in self.runs:
                folder = RunDirectory(os.path.join(self.cell_dir(per_class, seed), run))
                for stage in STAGES:
                    manifest = folder.manifest(stage)
                    if manifest is not None:
                        total += sum(manifest["ledger"].get("wall_s", {}).values())
        return round(total, 1)

    def _domain_share(self, folder: str) -> float:
        from datasets import load_from_disk

        column = self.args.pool_domain_column
        dataset = load_from_disk(folder)
        if column not in dataset.column_names:
            raise ValueError(
                f"--pool_domain_column '{column}' is not a pool column ({', '.join(dataset.column_names)})"
            )
        values = dataset[column]
        return sum(bool(v) for v in values) / max(1, len(values))

    def check_pool(self) -> None:
        """Before any cell: the pool holds more than ``transfer_budget`` images (every method gets that
        many unique ones, and retrieval must have a choice), and the domain column exists."""
        from ..retrieval import load_pool

        pool = load_pool(self.base["pool"])
        budget = self.base["transfer_budget"]
        if budget >= len(pool):
            raise ValueError(
                f"--transfer_budget {budget} is not below the pool's size ({len(pool)} images in "
                f"'{self.base['pool']}'): (c) and (d) would both take the whole pool. Lower the budget or add images"
            )
        column = self.args.pool_domain_column
        if column and column not in pool.column_names:
            raise ValueError(
                f"--pool_domain_column '{column}' is not a pool column ({', '.join(pool.column_names)})"
            )

    def pool_base_rate(self) -> float | None:
        """The in-domain share of the whole pool (``--pool_domain_column``), or ``None``."""
        if not self.args.pool_domain_column:
            return None
        from ..retrieval import load_pool

        pool = load_pool(self.base["pool"])
        column = self.args.pool_domain_column
        if column not in pool.column_names:
            raise ValueError(
                f"--pool_domain_column '{column}' is not a pool column ({', '.join(pool.column_names)})"
            )
        values = pool[column]
        return sum(bool(v) for v in values) / max(1, len(values))
