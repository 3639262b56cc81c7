"""Run an exported student in Transformers.js (npm ``@huggingface/transformers``) under node, offline.

Transformers.js loads a model folder the way the Hub lays it out: ``config.json`` (its
``model_type`` picks the model class), ``preprocessor_config.json`` (the image processor:
``image_processor_type`` and its resize, crop and normalisation fields) and ``onnx/model.onnx``
(``dtype="fp32"``) or ``onnx/model_quantized.onnx`` (``dtype="q8"``). transformers students
(``resnet``, ``mobilevitv2``, ``segformer``...) already carry both JSON files. A timm student
(``model_type`` ``timm_wrapper``) keeps its preprocessing in ``config.json``'s ``pretrained_cfg``,
which Transformers.js does not read, and its model type is not one Transformers.js's pipelines know:
:func:`write_transformers_js_files` writes the ``preprocessor_config.json`` it needs (transformers
in Python keeps reading ``pretrained_cfg``; the ``onnx`` export formats call it, so an exported
folder runs as it is), and ``classify.mjs`` then loads the model with
``AutoModel`` instead of ``pipeline`` (docs/deployment.md).

- :func:`transformers_js_preprocessor_config`: timm's evaluation transform as Transformers.js's fields.
- :func:`install_transformers_js`: ``npm ci`` of the pinned package into a cache folder.
- :func:`run_in_transformers_js`: the model's logits and top-1 per image, from node.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "NODE_PROJECT",
    "TransformersJsUnavailable",
    "default_install_dir",
    "install_transformers_js",
    "run_in_transformers_js",
    "transformers_js_preprocessor",
    "transformers_js_preprocessor_config",
    "transformers_js_version",
    "write_transformers_js_files",
]

#: The node project (``package.json``, ``package-lock.json``, ``classify.mjs``) shipped with the package.
NODE_PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
PACKAGE = "@huggingface/transformers"
PREPROCESSOR_FILE = "preprocessor_config.json"
#: timm interpolation names to the PIL resample codes Transformers.js reads (``resample``).
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


class TransformersJsUnavailable(RuntimeError):
    """node, npm or the installed npm package is missing; the message names the setup command."""


def transformers_js_version() -> str:
    """The pinned ``@huggingface/transformers`` version (``NODE_PROJECT/package.json``)."""
    with open(os.path.join(NODE_PROJECT, "package.json"), encoding="utf-8") as f:
        return json.load(f)["dependencies"][PACKAGE]


def default_install_dir() -> str:
    """Where :func:`install_transformers_js` installs by default: ``$HF_TASK_DISTILL_TRANSFORMERS_JS``,
    else ``<cache>/hf_task_distill/transformers-js-<version>`` (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if os.environ.get("HF_TASK_DISTILL_TRANSFORMERS_JS"):
        return os.environ["HF_TASK_DISTILL_TRANSFORMERS_JS"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "hf_task_distill", f"transformers-js-{transformers_js_version()}")


def _setup_hint(install_dir: str) -> str:
    return (
        "set it up with: python -c 'from hf_task_distill.export.transformers_js import "
        f"install_transformers_js; install_transformers_js()' (npm ci of {NODE_PROJECT} into {install_dir})"
    )


def _installed(install_dir: str) -> bool:
    manifest = os.path.join(install_dir, "node_modules", *PACKAGE.split("/"), "package.json")
    if not os.path.isfile(manifest):
        return False
    with open(manifest, encoding="utf-8") as f:
        return json.load(f).get("version") == transformers_js_version()


def install_transformers_js(install_dir: str | None = None) -> str:
    """Install the pinned Transformers.js into ``install_dir`` (``npm ci`` of :data:`NODE_PROJECT`'s
    lock file, without install scripts: onnxruntime-node's only fetches CUDA libraries from NuGet);
    nothing to do if it is there already. Needs npm's registry (about 480 MB on disk, 10 s).

    Args:
        install_dir (`str`, *optional*): defaults to :func:`default_install_dir`.

    Returns:
        `str`: the folder holding ``node_modules``.

    Raises:
        TransformersJsUnavailable: no ``npm`` on ``PATH``.
        RuntimeError: ``npm ci`` failed (its output's end).
    """
    install_dir = install_dir or default_install_dir()
    if _installed(install_dir):
        return install_dir
    npm = shutil.which("npm")
    if npm is None:
        raise TransformersJsUnavailable("npm is not on PATH: install Node.js (>= 18) with npm")
    os.makedirs(install_dir, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(os.path.join(NODE_PROJECT, name), os.path.join(install_dir, name))
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", install_dir]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not _installed(install_dir):
        raise RuntimeError(
            f"npm ci of {PACKAGE}@{transformers_js_version()} into {install_dir} failed "
            f"(exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )
    return install_dir


def transformers_js_preprocessor_config(pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """timm's evaluation transform for ``pretrained_cfg`` as ``preprocessor_config.json`` fields that
    Transformers.js's base ``ImageProcessor`` applies: resize (the shortest edge to
    ``floor(size / crop_pct)``, or both edges for ``crop_mode="squash"``), centre crop to ``size``,
    rescale to [0, 1], normalise with timm's mean and std (timm ``transforms_imagenet_eval``).

    ``image_processor_type`` stays ``TimmWrapperImageProcessor``, so transformers in Python still
    builds timm's own transform from ``config.json`` (it never reads these fields); Transformers.js,
    not knowing that class, falls back to its base processor, which reads them.

    Args:
        pretrained_cfg (`Mapping`): a ``TimmWrapperConfig.pretrained_cfg`` (``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``).

    Returns:
        `dict`: the ``preprocessor_config.json`` content.

    Raises:
        ValueError: a transform Transformers.js cannot reproduce (``crop_mode="border"``, a centre
            crop of a non-square input, an interpolation other than nearest/bilinear/bicubic).
    """
    from timm.data import resolve_data_config

    data = resolve_data_config(dict(pretrained_cfg), model=None, verbose=False)
    _, height, width = data["input_size"]
    crop_mode = data.get("crop_mode") or "center"
    interpolation = data.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"pretrained_cfg: interpolation '{interpolation}' has no Transformers.js equivalent")
    crop_pct = data.get("crop_pct") or 0.875
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if crop_mode == "squash":
        size = {"height": scale[0], "width": scale[1]}
    elif crop_mode == "center" and height == width:
        size = {"shortest_edge": scale[0]}
    else:
        raise ValueError(
            f"pretrained_cfg: crop_mode '{crop_mode}' at input size {height}x{width} has no "
            "Transformers.js equivalent (supported: 'center' with a square input, 'squash')"
        )
    return {
        "image_processor_type": "TimmWrapperImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": size,
        "resample": _RESAMPLE[interpolation],
        "do_center_crop": True,
        "crop_size": {"height": height, "width": width},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(data["mean"]),
        "image_std": list(data["std"]),
    }


def transformers_js_preprocessor(model_folder: str) -> dict[str, Any] | None:
    """The ``preprocessor_config.json`` Transformers.js needs for the student in ``model_folder``:
    for a timm student (``model_type`` ``timm_wrapper``), :func:`transformers_js_preprocessor_config`
    of its ``config.json``'s ``pretrained_cfg``; ``None`` for a transformers student, which carries
    its own image processor file.

    Raises:
        ValueError: a timm transform Transformers.js cannot reproduce (see
            :func:`transformers_js_preprocessor_config`).
    """
    with open(os.path.join(model_folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != "timm_wrapper":
        return None
    return transformers_js_preprocessor_config(config.get("pretrained_cfg") or {})


def write_transformers_js_files(model_folder: str, output_dir: str | None = None) -> list[str]:
    """Write what Transformers.js needs beyond the ONNX model for the student in ``model_folder``
    into ``output_dir`` (default ``model_folder``): for a timm student, ``preprocessor_config.json``
    from :func:`transformers_js_preprocessor`, rewritten each time (it is derived from
    ``config.json``, which transformers in Python keeps reading, so the two cannot disagree);
    transformers students need nothing. The ``onnx`` export formats call it.

    Returns:
        `list[str]`: the files written.

    Raises:
        ValueError: a timm transform Transformers.js cannot reproduce.
    """
    from ..files import write_json_atomically

    processor = transformers_js_preprocessor(model_folder)
    if processor is None:
        return []
    target = os.path.join(output_dir or model_folder, PREPROCESSOR_FILE)
    write_json_atomically(target, processor)
    return [target]


def run_in_transformers_js(
    model_folder: str,
    image_paths: Sequence[str],
    *,
    dtype: str = "fp32",
    task: str = "image-classification",
    install_dir: str | None = None,
    pixels: bool = False,
    timeout: float = 300,
) -> list[dict[str, Any]]:
    """Run ``model_folder``'s ONNX model on ``image_paths`` in Transformers.js under node, offline,
    through its own image processor (``NODE_PROJECT/classify.mjs``).

    Args:
        model_folder (`str`): a student folder with ``onnx/model.onnx`` (``onnx/model_quantized.onnx``
            for ``dtype="q8"``), ``config.json`` and ``preprocessor_config.json``.
        image_paths (`Sequence[str]`): image files (PNG, JPEG...).
        dtype (`str`, *optional*, defaults to ``"fp32"``): ``"fp32"`` or ``"q8"``.
        task (`str`, *optional*, defaults to ``"image-classification"``): or ``"image-segmentation"``.
        install_dir (`str`, *optional*): where :func:`install_transformers_js` installed the package;
            defaults to :func:`default_install_dir`. Nothing is installed here.
        pixels (`bool`, *optional*, defaults to `False`): also return each image's ``pixel_values``.
        timeout (`float`, *optional*, defaults to 300): seconds node may take.

    Returns:
        `list[dict]`: per image, ``path``, ``logits`` (flat list of floats, the batch axis dropped),
        ``shape`` (``[num_labels]``, or ``[num_labels, height, width]`` for segmentation), ``top1``
        (an index; per pixel, row-major, for segmentation), ``label`` (classification) and
        ``loaded_with`` (``"pipeline"``, or ``"AutoModel+AutoImageProcessor"`` for a model type
        Transformers.js's pipelines do not know); with ``pixels``, ``pixel_values`` and ``pixel_shape``.

    Raises:
        TransformersJsUnavailable: no ``node`` on ``PATH``, or the package is not installed (the
            message names the setup command).
        RuntimeError: Transformers.js failed on the folder (its message, e.g. a missing file).
    """
    install_dir = install_dir or default_install_dir()
    node = shutil.which("node")
    if node is None:
        raise TransformersJsUnavailable("node is not on PATH: install Node.js (>= 18) to run Transformers.js")
    if not _installed(install_dir):
        raise TransformersJsUnavailable(
            f"{PACKAGE}@{transformers_js_version()} is not installed in {install_dir}; {_setup_hint(install_dir)}"
        )
    if dtype not in ("fp32", "q8"):
        raise ValueError(
            f"dtype: '{dtype}'; Transformers.js reads onnx/model.onnx (fp32) or model_quantized.onnx (q8)"
        )
    script = os.path.join(NODE_PROJECT, "classify.mjs")
    command = [node, script, *(["--pixels"] if pixels else []), install_dir, model_folder, dtype, task]
    done = subprocess.run(
        [*command, *map(os.fspath, image_paths)], capture_output=True, text=True, timeout=timeout
    )
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode != 0 or "images" not in result:
        message = result.get("error") or done.stderr[-2000:] or f"exit status {done.returncode}"
        if "preprocessor_config.json" in message:
            message += (
                "; a timm student gets it from export_student(folder, 'onnx') or "
                "write_transformers_js_files(folder)"
            )
        raise RuntimeError(f"Transformers.js on {model_folder} ({dtype}): {message}")
    return [{**image, "loaded_with": result["loaded_with"]} for image in result["images"]]
