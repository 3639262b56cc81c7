"""Crash-safe file writes shared by every stage: a reader sees the old file or the whole new one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

__all__ = ["read_json", "write_atomically", "write_json_atomically"]


def write_atomically(path: str, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """``write(tmp, *args, **kwargs)`` to a temporary name next to ``path``, then rename it over ``path``.

    The temporary name carries the process id, so processes writing different files never collide
    and a killed writer leaves only a ``.tmp-<pid>`` file that no reader looks at.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp, *args, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _dump_json(path: str, payload: Any, indent: int | None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=indent, default=str)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomically(path: str, payload: Any, *, indent: int | None = 2) -> None:
    write_atomically(path, _dump_json, payload, indent)


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable (never trusted half-written)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
