"""Where a model comes from: a local folder, a Hub id, a timm architecture, or a name the package ships.

One place decides what a model name means, so that every entry point (the CLI's flags,
``load_teacher``, ``TeacherFinetuner``, ``create_student``, ``ImageEncoder``) accepts the same names
and refuses the same mistakes at once: a folder that does not exist is "no such folder" (not a Hub
error about repo-id syntax), and a misspelt timm architecture gets the closest names timm knows,
before any stage has run.
"""

from __future__ import annotations

import difflib
import os
import re

__all__ = [
    "absolute_local_path",
    "HUB_ID",
    "LOCAL_PREFIXES",
    "SHIPPED_MODELS",
    "check_model_source",
    "is_local_path",
    "mini_vfm_path",
    "resolve_model_source",
]


def mini_vfm_path() -> str:
    """The folder of the shipped mini-VFM (config, safetensors weights, image processor, card).

    Raises:
        FileNotFoundError: its weights are missing (the folder says how to regenerate them).
    """
    from importlib import resources

    folder = os.fspath(resources.files("hf_task_distill").joinpath("assets/mini-vfm"))
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        raise FileNotFoundError(
            f"the mini-VFM is not in {folder}: regenerate it with "
            "python benchmarks/miniature/pretrain_mini_vfm.py --output_dir " + folder
        )
    return folder


#: Models that ship inside the package, by the name every entry point accepts.
SHIPPED_MODELS = {"mini-vfm": mini_vfm_path}


def resolve_model_source(name: str | os.PathLike) -> str:
    """The folder or Hub id to load ``name`` from: a shipped name (``mini-vfm``) becomes its folder,
    ``~`` is expanded; anything else is returned unchanged."""
    name = os.fspath(name)
    if name in SHIPPED_MODELS:
        return SHIPPED_MODELS[name]()
    if name.startswith("~"):
        return os.path.expanduser(name)
    return name


#: A Hub repo id (``owner/name`` or a canonical ``name``) or a timm name, optionally ``hf-hub:``-prefixed.
HUB_ID = re.compile(r"^(hf-hub:|hf_hub:)?[\w.-]+(/[\w.-]+)?$")
#: timm's prefixes for a model on this machine.
LOCAL_PREFIXES = ("local-dir:", "file:")


def is_local_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` names something on this machine rather than on the Hub.

    Local: an existing file or folder, an absolute, ``~``-, ``./``- or ``../``-path, a Windows path,
    a path of three or more parts (or with characters no repo name has), or timm's
    ``local-dir:``/``file:`` prefixes. ``owner/name`` and ``name`` are Hub ids unless a local folder
    of that name exists (``transformers`` would load that folder first); text without a ``/`` that
    is no file here (``"finetuned teacher"``) is a name, not a path.
    """
    text = os.fspath(name)
    if text.startswith(LOCAL_PREFIXES) or os.path.exists(text):
        return True
    if (
        text.startswith(("/", "~", "./", "../", ".\\", "..\\"))
        or "\\" in text
        or re.match(r"^[A-Za-z]:", text)
    ):
        return True
    return "/" in text and not HUB_ID.match(text)  # a/b/c, or parts no repo name can have


def check_model_source(name: str | os.PathLike, what: str, *, timm_architectures: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` (e.g. ``--teacher``) if ``name`` cannot be a model.

    Accepted: a shipped name, an existing folder, a well-formed Hub id (``owner/name``; whether it
    exists is only known when it is loaded), and with ``timm_architectures`` (the names
    ``create_student`` takes) a timm architecture with an optional pretrained tag (``resnet18``,
    ``mobilevitv2_100.cvnets_in1k``), and any name a student family registered outside the package
    matches, which that family's ``check`` judges instead.
    """
    name = os.fspath(name)
    if timm_architectures:
        from .models.families.base import student_family_for

        family = student_family_for(name, custom_only=True)
        if family is not None:
            family.check(name, what)
            return
    if name in SHIPPED_MODELS or os.path.isdir(os.path.expanduser(name)):
        return
    if os.path.exists(name):
        raise ValueError(f"{what}: '{name}' is a file; a model is a folder (config.json and weights)")
    if is_local_path(name):
        repo, at, revision = name.partition("@")
        repo = repo.removeprefix("hf-hub:").removeprefix("hf_hub:")
        if at and revision and HUB_ID.match(repo) and "/" in repo:  # owner/name@revision
            raise ValueError(
                f"{what}: '{name}': a revision after '@' is not read here (models load at the repo's default "
                f"branch); to use revision {revision}, download it (`hf download {repo} --revision {revision} "
                f"--local-dir <folder>`) and pass the folder"
            )
        raise ValueError(f"{what}: no such folder '{name}'")
    if timm_architectures and "/" not in name and ":" not in name:
        _check_timm_name(name, what)
        return
    shipped = difflib.get_close_matches(name, list(SHIPPED_MODELS), n=1, cutoff=0.8)
    if "/" not in name and shipped:  # a Hub id without an owner is rare; a typo of a shipped name is not
        raise ValueError(f"{what}: unknown model '{name}'; did you mean {shipped[0]}?")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ValueError(
            f"{what}: '{name}' is neither a folder here nor a Hub model id (owner/name): {err}"
        ) from err


def _check_timm_name(name: str, what: str) -> None:
    import timm

    architecture, _, tag = name.partition(".")
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (timm.list_models() lists them)"
        shipped = ", ".join(SHIPPED_MODELS)
        raise ValueError(
            f"{what}: unknown timm model '{name}'{hint} A Hub id needs owner/name, a local folder must "
            f"exist, and the shipped models are: {shipped}"
        )
    if tag and name not in timm.list_pretrained(f"{architecture}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{architecture}.*")]
        raise ValueError(
            f"{what}: timm has no pretrained tag '{tag}' for {architecture}; its tags: {', '.join(tags) or 'none'}"
        )


#: Exception types (by name, anywhere in an error's chain) that mean the Hub was not reached.
_UNREACHABLE = (
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NameResolutionError",
    "MaxRetryError",
)


def hub_unreachable(err: BaseException) -> str | None:
    """Why a load failed when the cause is that the Hub was not reached, in words a user can act on;
    ``None`` for any other failure. (transformers' own message then says only that the files are not
    in the cache, and to check for "a local directory with the same name".)"""
    from huggingface_hub import constants

    chain, seen = [], err
    while seen is not None and len(chain) < 20:
        chain.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    if not any(name in _UNREACHABLE for name in chain) and not constants.HF_HUB_OFFLINE:
        return None
    if constants.HF_HUB_OFFLINE:
        return (
            "it is not a folder here and not in the Hub cache, and the Hub is offline (HF_HUB_OFFLINE=1): "
            "give a local folder, or download it where there is network (hf download <repo id>)"
        )
    return "it is not a folder here and the Hugging Face Hub could not be reached (no network?)"


def absolute_local_path(name: str | None) -> str | None:
    """``name`` as an absolute path when it is a relative path to something on this machine (a file,
    a folder, or a glob that matches), else unchanged (a Hub id, a shipped name, ``None``). A run
    records its inputs this way, so that a command from another working directory continues it."""
    import glob

    if not isinstance(name, str) or name.startswith(LOCAL_PREFIXES):
        return name
    text = os.path.expanduser(name)
    if os.path.isabs(text):
        return text
    if os.path.exists(text) or (any(c in text for c in "*?[") and glob.glob(text)):
        return os.path.abspath(text)
    return name
