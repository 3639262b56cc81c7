"""Which Trainer checkpoint a killed run may resume from."""

from __future__ import annotations

import json
import logging
import os

__all__ = ["last_complete_checkpoint"]

logger = logging.getLogger(__name__)


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` whose ``trainer_state.json`` (the Trainer writes it
    last) parses, or ``None``.

    A process killed while writing a checkpoint leaves one without it; that one is skipped, so a
    resumed run never loads half-written weights or optimizer state.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        (int(name.split("-")[1]), name)
        for name in os.listdir(folder)
        if name.startswith("checkpoint-") and name.split("-")[1].isdigit()
    )
    for _, name in reversed(steps):
        try:
            with open(os.path.join(folder, name, "trainer_state.json"), encoding="utf-8") as f:
                state = json.load(f)
            if not isinstance(state, dict):  # valid JSON but not a trainer state (e.g. `null` or a list)
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            logger.warning("ignoring incomplete checkpoint %s", os.path.join(folder, name))
            continue
        return os.path.join(folder, name)
    return None
