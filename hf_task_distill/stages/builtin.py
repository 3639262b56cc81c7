"""The package's own stages, registered in the order a run runs them."""

from . import teacher, transfer, distill, baseline, finetune, evaluate, export, publish  # noqa: F401, I001
