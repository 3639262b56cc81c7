"""Options that the Python API and the command line share: one name and one default each.

Two things live here, both light (no torch) so that the command line's ``--help`` stays fast:

- :class:`RetrievalSettings`, the retrieval fields themselves. Both
  :class:`~hf_task_distill.retrieval.RetrievalConfig` (the API) and
  :class:`~hf_task_distill.config.TransferArguments` (the CLI's transfer group) inherit them, so a
  flag such as ``--min_similarity`` and the keyword ``min_similarity=`` are one definition.
- The renaming rule: an option renamed to its canonical name keeps its old name for one release
  (:data:`REMOVED_IN`) as a hidden field that is read, warns with a ``FutureWarning`` naming the new
  name, and is then cleared (:func:`renamed_field`, :func:`resolve_renamed`). The old name is a
  dataclass field, so ``HfArgumentParser`` still parses ``--old_name`` and a JSON/YAML file's
  ``old_name:`` key; ``docs/pipeline.md`` lists the renamed options.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from .checks import check_int, check_number

__all__ = [
    "REMOVED_IN",
    "TRANSFER_MODES",
    "RetrievalSettings",
    "distill_loss_field",
    "renamed_field",
    "resolve_renamed",
]

#: The release in which the old names of renamed options stop working.
REMOVED_IN = "0.2.0"


def renamed_field() -> Any:
    """The field of an option's old name.

    ``None`` unless given; hidden from ``--help``. The dataclass lists ``{old: new}`` in a class
    attribute ``_renamed`` and calls :func:`resolve_renamed` first thing in ``__post_init__``.
    """
    # no other metadata: HfArgumentParser hands every metadata key to argparse's add_argument
    return field(default=None, repr=False, metadata={"help": argparse.SUPPRESS})


#: ``--transfer`` values that name a way of building the transfer set, not a dataset.
TRANSFER_MODES = ("task", "retrieval", "random")


def resolve_renamed(obj: Any) -> dict[str, str]:
    """Move each old name's value given to ``obj`` onto its new name, with a ``FutureWarning``.

    Returns ``{new: old}`` for the options given by their old name, so that errors about the value
    can name the spelling the user wrote. Giving both names with different values is an error (the
    new name being at its default counts as not given).

    Raises:
        ValueError: an option given under both names, with different values.
    """
    given_as: dict[str, str] = {}
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for old, new in getattr(type(obj), "_renamed", {}).items():
        value = getattr(obj, old)
        if value is None:
            continue
        warnings.warn(
            f"{type(obj).__name__}: '{old}' is renamed '{new}'; the old name stops working in "
            f"hf-task-distill {REMOVED_IN}",
            FutureWarning,
            stacklevel=4,
        )
        current = getattr(obj, new)
        if current != _default_of(fields[new]) and current != value:
            raise ValueError(
                f"{type(obj).__name__}: '{old}' (deprecated) = {value!r} and '{new}' = {current!r} name the "
                f"same option: give '{new}' only"
            )
        object.__setattr__(obj, new, value)
        object.__setattr__(obj, old, None)
        given_as[new] = old
    return given_as


def distill_loss_field() -> Any:
    """``distill_loss``, the distillation loss by its name in :mod:`hf_task_distill.losses`' registry,
    in :class:`~hf_task_distill.DistillationArguments` and on the command line (``--distill_loss``).

    The default is the paper's: function matching, the KL divergence to the teacher's predictions on
    the same augmented view (Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", CVPR 2022; Vemulapalli et al., arXiv 2311.18237). ``kd`` adds cross-entropy on
    labelled rows (``ce_weight``)."""
    return field(
        default="function_matching",
        metadata={
            "help": "function_matching (paper: KL to the teacher), kd (+ CE on labels), feature_cosine, "
            "feature_contrastive (task-agnostic baseline) or a registered loss."
        },
    )


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@dataclass
class RetrievalSettings:
    """How many pool images retrieval takes and which it refuses: the fields that
    :class:`~hf_task_distill.retrieval.RetrievalConfig` and the CLI's ``--transfer retrieval`` share.

    Retrieval follows Vemulapalli et al., "Knowledge Transfer from Vision Foundation Models for
    Efficient Training of Small Task-specific Models" (arXiv 2311.18237): the ``per_query_k`` nearest
    pool images of each labelled image. The filters (``min_similarity``, ``min_teacher_confidence``)
    are not from the paper and are off by default.
    """

    per_query_k: int | None = field(
        default=None, metadata={"help": "Neighbours per labelled image (paper: 127/63/31/15/7)."}
    )
    transfer_budget: int | None = field(
        default=None,
        metadata={"help": "Total transfer-set size spread over classes (instead of per_query_k)."},
    )
    leakage_threshold: float = field(
        default=0.95,
        metadata={"help": "Cosine above which a pool image is a copy of a validation/test image."},
    )
    min_similarity: float | None = field(
        default=None, metadata={"help": "Drop neighbours of lower cosine similarity."}
    )
    min_teacher_confidence: float | None = field(
        default=None, metadata={"help": "Drop images with lower teacher confidence."}
    )
    memory_budget_gb: float | None = field(default=None, metadata={"help": "GiB the search index may use."})
    recall_target: float = field(default=0.95, metadata={"help": "IVF nprobe's target recall@k."})

    def check_retrieval_settings(self, flag: str = "") -> None:
        """Type- and range-check the fields (integral floats from a JSON file become ints). ``flag``
        prefixes the names in errors: ``"--"`` on the command line, ``""`` in the API."""
        self.per_query_k = check_int(self.per_query_k, f"{flag}per_query_k", minimum=1, optional=True)
        self.transfer_budget = check_int(
            self.transfer_budget, f"{flag}transfer_budget", minimum=1, optional=True
        )
        self.leakage_threshold = check_number(
            self.leakage_threshold, f"{flag}leakage_threshold", minimum=-1, maximum=1
        )
        self.min_similarity = check_number(
            self.min_similarity, f"{flag}min_similarity", minimum=-1, maximum=1, optional=True
        )
        self.min_teacher_confidence = check_number(
            self.min_teacher_confidence, f"{flag}min_teacher_confidence", minimum=0, maximum=1, optional=True
        )
        self.memory_budget_gb = check_number(
            self.memory_budget_gb, f"{flag}memory_budget_gb", above=0, optional=True
        )
        self.recall_target = check_number(self.recall_target, f"{flag}recall_target", above=0, maximum=1)

    def retrieval_settings(self) -> dict[str, Any]:
        """The shared fields by name: what one side hands the other."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RetrievalSettings)}
