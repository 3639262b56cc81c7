"""Old module paths of the package, kept for one release: each is the new module itself.

A module that moved leaves a two-line file at its old path that calls :func:`moved`: importing the
old path warns once (``FutureWarning``, naming the new path and the release it goes away in) and
then *is* the new module (``sys.modules`` holds one object under both names), so ``from old import
x``, ``import old`` and monkeypatching through either name all reach the same code.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from .options import REMOVED_IN  # the release in which old names and paths stop working


def moved(old: str, new: str) -> None:
    """Make the module ``old`` an alias of ``new`` (both absolute names), with a ``FutureWarning``."""
    warnings.warn(
        f"{old} is now {new}; the old module path stops working in hf-task-distill {REMOVED_IN}",
        FutureWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
