"""Loading pretrained weights without running anyone's code: safetensors only, unless told otherwise."""

from __future__ import annotations

import contextlib

__all__ = ["safetensors_required"]


@contextlib.contextmanager
def safetensors_required(name_or_path: str):
    """Turn transformers' "no model.safetensors" error into one that says why and what to do."""
    try:
        yield
    except OSError as err:
        if "safetensors" not in str(err):
            raise
        raise OSError(
            f"'{name_or_path}' has no safetensors weights. Pickle checkpoints (pytorch_model.bin) are not "
            "loaded by default because unpickling can run code: convert the checkpoint to safetensors, or "
            "pass use_safetensors=False if you trust it (it is then read with torch.load(weights_only=True))"
        ) from err
