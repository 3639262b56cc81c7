"""The paper's comparison on the user's own task (``hf-task-distill compare``): methods, the
pipeline runs that produce them, and the report with paired differences."""

from .methods import COMPARISONS, METHODS, Method
from .report import paired_difference, spread, summarise, to_markdown, write_report
from .runner import COMPARE_OWNED, CompareArguments, Comparison

__all__ = [
    "COMPARE_OWNED",
    "COMPARISONS",
    "METHODS",
    "CompareArguments",
    "Comparison",
    "Method",
    "paired_difference",
    "spread",
    "summarise",
    "to_markdown",
    "write_report",
]
