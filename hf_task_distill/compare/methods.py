"""The methods of the paper's comparison (Vemulapalli et al., ICML 2024, Table 1 and Fig. 3), and the
pipeline runs that produce them: which run of a cell holds each method's result, under which name.

A cell is one (label budget, seed). Its runs share the labels and the seed, and every distillation
run the same number of unique transfer images (``transfer_budget``) and epochs, hence the same
number of student steps:

- ``d``: the teacher finetuned on the labels, a transfer set retrieved from the pool, the student
  distilled and finetuned; its baseline stage is (a), its teacher (e).
- ``c``: the same teacher, a uniform sample of the pool instead of the retrieved set.
- ``b``: the raw VFM's image features matched on the same sample (task-agnostic), then finetuning.
- ``g``: the same teacher and retrieved set, a pretrained student; its baseline stage is (f).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMPARISONS", "METHODS", "RUNS", "Method"]

FINETUNED = "student, distilled + finetuned"
DISTILLED = "student, distilled"
LABELS_ONLY = "student, labels only"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: its description, the run of a cell holding it, and its name in
    that run's evaluation (``evaluate/manifest.json``)."""

    description: str
    run: str
    result: str
    needs_pretrained_student: bool = False


METHODS = {
    "a": Method("student from scratch, labels only", "d", LABELS_ONLY),
    "b": Method("task-agnostic feature distillation (raw VFM), pool sample + finetune", "b", FINETUNED),
    "c": Method("task-oriented KD, pool sample + finetune", "c", FINETUNED),
    "d": Method("task-oriented KD, retrieved transfer set + finetune", "d", FINETUNED),
    "e": Method("finetuned teacher", "d", "teacher"),
    "f": Method("pretrained student, labels only", "g", LABELS_ONLY, needs_pretrained_student=True),
    "g": Method(
        "task-oriented KD into the pretrained student, retrieved set + finetune", "g", FINETUNED, True
    ),
    # the distilled students before finetuning: does the last stage add anything?
    "c0": Method("(c) before finetuning", "c", DISTILLED),
    "d0": Method("(d) before finetuning", "d", DISTILLED),
}

#: The runs of one cell, in the order they must run (c, b and g read d's teacher or transfer set).
RUNS = ("d", "c", "b", "g")

#: The paired differences reported, (better, worse) as the paper claims them.
COMPARISONS = (("d", "c"), ("c", "b"), ("d", "f"), ("g", "f"))
