"""Bring your own checkpoint: a timm architecture plus a weights file becomes a model folder that
``load_teacher``, ``create_student``, ``AutoModelForImageClassification``, ``pipeline`` and
``timm.create_model("local-dir:<folder>")`` all load.

Weights are read with timm's own ``load_state_dict`` (safetensors, or a pickle file through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers; a
``state_dict``/``model`` wrapper and DDP's ``module.`` prefix are unwrapped). Tensors are matched to
the architecture by name, after the caller's prefix renames; by position and shape only when asked
(``match_by_order=True``), for checkpoints from another codebase whose layers come in timm's order.
Every tensor must find its place: a missing, unexpected or mis-shaped one is a
``CheckpointMismatch`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["CheckpointMismatch", "convert_timm_checkpoint", "read_state_dict"]

# Buffers a checkpoint may or may not carry; neither is a weight.
_COUNTERS = ("num_batches_tracked",)


class CheckpointMismatch(ValueError):
    """A weights file does not fit the architecture it was given for; the message names the tensor."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name.

    ``path``: a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.ckpt`` read with
    ``torch.load(weights_only=True)`` (timm's ``load_state_dict``, which also unwraps ``state_dict``,
    ``model`` and EMA entries and DDP/``torch.compile`` prefixes).

    Raises ``FileNotFoundError`` for a missing file, and ``ValueError`` naming the file for a pickle
    holding anything but tensors (pickled objects can run code, so they are refused, never loaded)
    or an entry that is not a tensor.
    """
    from timm.models import load_state_dict

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = load_state_dict(path, use_ema=False, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's refusal, or a file that is no checkpoint at all
        # torch's refusal (an UnpicklingError, or a RuntimeError naming weights_only); the pickle
        # module itself is never imported here (tests/test_security.py)
        blocked = type(err).__name__ == "UnpicklingError" or "weights_only" in str(err)
        if blocked:
            raise ValueError(
                f"{os.path.basename(path)} holds pickled objects other than tensors, which are refused because "
                "unpickling them can run code. Save its state_dict alone (torch.save(model.state_dict(), ...)) "
                f"or as safetensors. torch said: {_first_sentence(err)}"
            ) from err
        raise ValueError(
            f"{os.path.basename(path)} could not be read as a checkpoint: {type(err).__name__}: {_first_sentence(err)}"
        ) from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.path.basename(path)} holds a {type(state).__name__}, not a state_dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{os.path.basename(path)}: entry '{key}' is a {type(value).__name__}, not a tensor; "
                "pass a file holding a model's state_dict"
            )
    return dict(state)


def _first_sentence(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ")[0]


def convert_timm_checkpoint(
    architecture: str,
    weights: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    key_map: Mapping[str, str] | None = None,
    match_by_order: bool = False,
    label_names: Sequence[str] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> str:
    """Write ``architecture`` with the weights in ``weights`` as a timm-format model folder.

    Args:
        architecture: a timm model name (``tf_efficientnet_lite0``); a ``.tag`` is ignored, the
            weights come from ``weights``.
        weights: the weights file (see ``read_state_dict``).
        output_dir: the folder to write: ``config.json`` (timm's ``architecture``, ``num_classes``,
            ``label_names`` and ``pretrained_cfg``, which transformers reads as a
            ``TimmWrapperConfig``) and ``model.safetensors`` with timm's key names.
        key_map: prefix renames applied to the file's keys before matching by name, longest prefix
            first: ``{"backbone.": "", "head.fc.": "classifier."}``.
        match_by_order: match the file's tensors to the architecture's by position and shape instead
            of by name (counters such as ``num_batches_tracked`` left out on both sides); for
            checkpoints written by another implementation of the same network.
        label_names: the head's class names, one per output. Default for a 1000-class head:
            ImageNet-1k's names as timm gives them (``"tiger cat"``), the two names used twice with
            their WordNet id (``"crane (n02012849)"``); ``LABEL_i`` for any other head.
        pretrained_cfg: overrides of timm's data config for the architecture: ``input_size``
            ``(3, H, W)``, ``mean``/``std`` (per channel, for pixels in [0, 1]), ``interpolation``,
            ``crop_pct``. Loaders preprocess with these, so they must be the ones the weights were
            trained with.

    Returns:
        ``output_dir``, as a string.

    Raises:
        CheckpointMismatch: the first missing, unexpected or mis-shaped tensor, by name (and
            position when matching by order), with the counts of each kind.
        ValueError: an unknown architecture, ``label_names`` of the wrong length, a bad weights file.
    """
    import timm

    name = architecture.split(".")[0]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:5]
        raise ValueError(
            f"unknown timm architecture '{architecture}'"
            + (f"; similar: {', '.join(close)}" if close else "")
        )
    source = read_state_dict(weights)
    reference = timm.create_model(name, pretrained=False).state_dict()
    classifier = timm.models.get_pretrained_cfg(name).classifier
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    if match_by_order:
        state = _by_order(source, reference, os.path.basename(os.fspath(weights)))
    else:
        state = _by_name(_renamed(source, key_map or {}), reference, classifier)
    num_classes = _num_classes(state, reference, classifier)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    _check_shapes(state, model.state_dict())
    model.load_state_dict(state, strict=False)  # every weight is present (checked); counters may not be
    names = _label_names(label_names, num_classes)
    cfg = _data_config(model.pretrained_cfg, pretrained_cfg)
    import tempfile

    from transformers import TimmWrapperForImageClassification

    from .families.timm import write_timm_folder

    with tempfile.TemporaryDirectory(prefix="hf_task_distill_convert_") as folder:
        write_timm_folder(model, name, names, cfg, folder)
        wrapped = TimmWrapperForImageClassification.from_pretrained(folder)
    wrapped.save_pretrained(output_dir)  # with `architectures`, which loaders read to find the head
    return os.fspath(output_dir)


def _renamed(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    prefixes = sorted(key_map, key=len, reverse=True)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for prefix in prefixes:
            if key.startswith(prefix):
                new = key_map[prefix] + key[len(prefix) :]
                break
        if new in renamed:
            raise CheckpointMismatch(f"key_map maps two tensors to '{new}' (one of them '{key}')")
        renamed[new] = value
    return renamed


def _is_counter(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _COUNTERS


def _by_name(source, reference, classifier: str) -> dict[str, torch.Tensor]:
    weights = {k: v for k, v in source.items() if not _is_counter(k)}
    missing = [k for k in reference if not _is_counter(k) and k not in weights]
    unexpected = [k for k in weights if k not in reference]
    if missing or unexpected:
        hint = ""
        if not set(weights) & set(reference) and len(weights) == len(missing):
            hint = (
                " None of the names match: if the file comes from another implementation of the same "
                "network, rename prefixes with key_map (--key_map old=new) or match by position and "
                "shape with match_by_order=True (--match_by_order)."
            )
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} tensors of the architecture are not in the file (first: '{missing[0]}')"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} tensors of the file are not in the architecture (first: '{unexpected[0]}')"
            )
        raise CheckpointMismatch("; ".join(parts) + "." + hint)
    return {k: v for k, v in source.items() if k in reference}


def _by_order(source, reference, filename: str) -> dict[str, torch.Tensor]:
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    ref = [(k, v) for k, v in reference.items() if not _is_counter(k)]
    counts = f"{filename} holds {len(src)} tensors besides {'/'.join(_COUNTERS)}, the architecture {len(ref)}"
    last = len(ref) - 1
    for position, ((s_key, s_val), (r_key, r_val)) in enumerate(zip(src, ref, strict=False)):
        head_rows_only = position >= last - 1 and s_val.shape[1:] == r_val.shape[1:]  # another class count
        if s_val.shape != r_val.shape and not head_rows_only:
            raise CheckpointMismatch(
                f"tensor {position} does not fit: '{s_key}' in the file has shape {tuple(s_val.shape)}, "
                f"'{r_key}' in the architecture {tuple(r_val.shape)} ({counts})"
            )
    if len(src) != len(ref):
        first = (
            f"'{src[len(ref)][0]}' in the file"
            if len(src) > len(ref)
            else f"'{ref[len(src)][0]}' in the architecture"
        )
        raise CheckpointMismatch(
            f"{counts}; the first without a partner is tensor {min(len(src), len(ref))}, {first}"
        )
    return {r_key: s_val for (_, s_val), (r_key, _) in zip(src, ref, strict=True)}


def _num_classes(state, reference, classifier: str) -> int:
    """The head's size in the file (a checkpoint may predict other classes than timm's default)."""
    key = f"{classifier}.weight"
    return int((state[key] if key in state else reference[key]).shape[0])


def _check_shapes(state, target) -> None:
    wrong = [
        (k, v.shape, target[k].shape) for k, v in state.items() if k in target and v.shape != target[k].shape
    ]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointMismatch(
            f"{len(wrong)} tensors have the wrong shape (first: '{key}' is {tuple(got)} in the file, "
            f"{tuple(want)} in the architecture); is the file for another variant of the network?"
        )


def _label_names(label_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(names) != num_classes:
            raise ValueError(
                f"label_names has {len(names)} names, the checkpoint's head {num_classes} outputs"
            )
        return names
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = info.label_descriptions()
        repeated = {n for n in names if names.count(n) > 1}  # 'crane' the bird and the machine...
        return [
            f"{n} ({synset})" if n in repeated else n
            for n, synset in zip(names, info.label_names(), strict=True)
        ]
    return [f"LABEL_{i}" for i in range(num_classes)]


def _data_config(registered: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The architecture's registered data config (``model.pretrained_cfg``) without the fields naming
    timm's own weights, with the caller's ``overrides``."""
    from .families.timm import WEIGHT_SOURCE_FIELDS

    cfg = {k: v for k, v in registered.items() if k not in WEIGHT_SOURCE_FIELDS + ("num_classes", "file")}
    unknown = sorted(set(overrides or {}) - set(cfg) - {"test_input_size"})
    if unknown:
        raise ValueError(
            f"pretrained_cfg: unknown field(s) {', '.join(unknown)}; timm's are {', '.join(sorted(cfg))}"
        )
    cfg.update(overrides or {})
    if "input_size" in (overrides or {}):
        cfg.pop("test_input_size", None)
    return cfg
