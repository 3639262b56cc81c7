"""How a model or dataset source is named in anything meant for publishing.

A run names its sources the way the user gave them: a Hub id (``facebook/dinov2-large``), a timm
name (``resnet18``, ``hf-hub:timm/...``) or a local folder (``/home/alice/models/my-teacher``). A
card, an uploaded JSON file or a dataset card must not carry the local machine's paths, user or
host name, so every source goes through :func:`public_name` before it is written there: a Hub id
stays as it is, a local folder becomes its folder name marked ``(local)``, a folder inside the
installed package (the shipped mini-VFM) is marked as shipped with hf_task_distill.
"""

from __future__ import annotations

import getpass
import os
import re
import socket

from ..sources import HUB_ID, LOCAL_PREFIXES, SHIPPED_MODELS, is_local_path

__all__ = ["FINETUNED", "LOCAL", "hub_id", "is_local", "public_model_name", "public_name", "short_name"]

LOCAL = " (local)"
#: How a run names its own finetuned teacher: ``"<teacher source>, finetuned"``.
FINETUNED = ", finetuned"
_SHIPPED = " (shipped with hf_task_distill)"
_HUB_ID, _LOCAL_PREFIXES = HUB_ID, LOCAL_PREFIXES
#: Stands in for a folder whose name is the user's or the host's.
_PRIVATE_FOLDER = "folder"


#: Whether a source is on this machine: one rule for the whole package (:mod:`hf_task_distill.sources`).
is_local = is_local_path


def _private_words() -> set[str]:
    """The user and host names of this machine (lower case, at least 3 characters)."""
    words = set()
    for get in (getpass.getuser, socket.gethostname, lambda: os.path.basename(os.path.expanduser("~"))):
        try:
            value = get() or ""
        except Exception:  # noqa: BLE001 - no user database in some containers: nothing to hide then
            continue
        words |= {value.lower(), value.split(".")[0].lower()}
    return {w for w in words if len(w) >= 3}


def short_name(source: str | os.PathLike) -> str:
    """The last part of a local path (never the user's or host's name), or a Hub id's repo name.

    For descriptive names such as ``<teacher>-<task>-teacher``: ``facebook/dinov2-large`` gives
    ``dinov2-large``, ``/home/alice/models/my-teacher/`` gives ``my-teacher``.
    """
    text = os.fspath(source)
    for prefix in (*_LOCAL_PREFIXES, "hf-hub:", "hf_hub:"):
        text = text.removeprefix(prefix)
    name = re.split(r"[/\\]", text.rstrip("/\\"))[-1] or _PRIVATE_FOLDER
    if name in ("~", ".", "..") or any(word in name.lower() for word in _private_words()):
        return _PRIVATE_FOLDER
    return name


def _shipped(text: str) -> bool:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return os.path.commonpath([os.path.realpath(text), os.path.realpath(package)]) == os.path.realpath(
            package
        )
    except ValueError:  # different drives on Windows
        return False


def public_name(source: str | os.PathLike | None) -> str | None:
    """The name of a model or dataset source that may be published.

    A Hub id or timm name is returned as is; a local path becomes its folder name with
    :data:`LOCAL` appended (``"my-teacher (local)"``), a folder of the installed package its name
    marked as shipped; a folder named after the user or the host becomes ``"folder (local)"``.
    Idempotent: a name already made public is returned unchanged. ``None`` stays ``None``.
    """
    if source is None:
        return None
    text = os.fspath(source)
    if text in SHIPPED_MODELS:  # a name every entry point takes (mini-vfm)
        return text + _SHIPPED
    if not text or text.endswith((LOCAL, _SHIPPED)) or not is_local(text):
        return text
    stripped = text
    for prefix in _LOCAL_PREFIXES:
        stripped = stripped.removeprefix(prefix)
    if os.path.exists(stripped) and _shipped(stripped):
        return short_name(stripped) + _SHIPPED
    return short_name(stripped) + LOCAL


def hub_id(source: str | os.PathLike | None) -> str | None:
    """``source`` as a Hub repo id (``owner/name``, any ``hf-hub:`` prefix dropped), or ``None`` when it
    is a local path, a published local name (``"x (local)"``) or a bare timm model name."""
    if source is None:
        return None
    text = os.fspath(source)
    if not text or text.endswith((LOCAL, _SHIPPED)) or is_local(text):
        return None
    text = text.removeprefix("hf-hub:").removeprefix("hf_hub:")
    return text if "/" in text and _HUB_ID.match(text) else None


def public_model_name(name: str | None) -> str | None:
    """:func:`public_name` of a model as a run names it, keeping a ``", finetuned"`` suffix
    (``"facebook/dinov2-large, finetuned"`` stays; ``"/home/a/t, finetuned"`` gives ``"t (local), finetuned"``)."""
    if name and name.endswith(FINETUNED):
        return public_name(name.removesuffix(FINETUNED)) + FINETUNED
    return public_name(name)
