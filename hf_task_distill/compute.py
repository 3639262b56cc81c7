"""Moved to :mod:`hf_task_distill.ledger` (this path works, with a warning, until 0.2.0)."""

from hf_task_distill._moved import moved

moved(__name__, "hf_task_distill.ledger")
