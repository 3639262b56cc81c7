"""Crash-safe file writes shared by every stage: a reader sees the old file or the whole new one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

__all__ = [
    "content_hashes",
    "display_path",
    "read_json",
    "write_atomically",
    "write_folder_atomically",
    "write_json_atomically",
]


def display_path(path: str | os.PathLike) -> str:
    """``path`` as a message shows it: relative to the working directory when under it, ``~/...``
    when under the home directory, else absolute; so that logs and errors a user shares name no
    home directory (and with it no user name) of their machine."""
    absolute = os.path.abspath(path)
    bases = [(os.getcwd(), ""), (os.path.expanduser("~"), "~")]
    under = [(b, s) for b, s in bases if b != os.sep and _is_within(absolute, b)]
    if not under:
        return absolute
    base, shown = max(under, key=lambda item: len(item[0]))  # the nearer one: ~ unless cwd is inside home
    relative = os.path.relpath(absolute, base)
    if relative == os.curdir:
        return shown or relative
    return os.path.join(shown, relative) if shown else relative


def _is_within(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:  # another drive (Windows)
        return False


_DATASETS_CACHE = re.compile(r"^cache-[0-9a-f]+\.arrow$")


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
    """Write ``payload`` as JSON to ``path`` so that a reader sees the old file or the new, never half of one.

    The file is written and fsync-ed beside ``path``, then moved over it (:func:`write_atomically`).
    Values JSON cannot hold are written as their ``str``.

    Args:
        path (`str`): the file to write.
        payload (`Any`): the JSON value.
        indent (`int`, *optional*, defaults to 2): ``json.dump``'s indent; ``None`` for one line.
    """
    write_atomically(path, _dump_json, payload, indent)


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable (never trusted half-written)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_folder_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """``write(tmp_folder)``, then move the whole folder to ``path`` (replacing one already there).

    A reader of ``path`` never sees a folder that is half written; a killed writer leaves only a
    ``.tmp-<pid>`` folder next to it, removed by the next successful write.
    """
    path = os.path.abspath(os.fspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    parent = os.path.dirname(path)
    stem = os.path.basename(path) + ".tmp-"
    for name in os.listdir(parent):  # left by killed writers
        if name.startswith(stem) and name[len(stem) :].isdigit():
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return path


def _sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hashes(folder: str | os.PathLike, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, skipping top-level entries named in
    ``exclude``, ``.tmp-`` leftovers and the ``cache-*.arrow`` files ``datasets`` adds next to a
    saved dataset when it is read: what a manifest records so that a changed, truncated or missing
    output is noticed before it is reused."""
    folder = os.fspath(folder)
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d not in exclude]
            files = [f for f in files if f not in exclude]
        dirs[:] = sorted(d for d in dirs if ".tmp-" not in d)
        for name in sorted(files):
            if ".tmp-" in name or _DATASETS_CACHE.match(name):
                continue
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = _sha256(full)
    return out
