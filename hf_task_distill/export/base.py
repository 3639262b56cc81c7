"""The contract of an export format, the registry of formats, and ``export_student``.

A student is saved as a transformers model folder (``config.json``, ``model.safetensors``, the
image processor's ``preprocessor_config.json``): what ``save_pretrained`` and the Trainer's
``save_model`` write. An export format turns such a folder into another artefact (the folder itself,
ONNX, TorchScript...). A new format is one new file in this package: an :class:`ExportFormat`
subclass registered with :func:`register_export_format`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

from ..registry import Registry

__all__ = [
    "ExportFormat",
    "available_export_formats",
    "check_student_folder",
    "export_student",
    "register_export_format",
    "unregister_export_format",
]

#: What every student folder holds, whatever it is exported to.
REQUIRED_FILES = ("config.json", "model.safetensors")


class ExportFormat:
    """One way to write a student out of its model folder.

    Subclass it, set ``name``, implement :meth:`export`, and register an instance with
    :func:`register_export_format` (also usable as a class decorator). Override :meth:`check` for
    what the format needs beyond a student folder (an optional package, a model it can trace), so
    that :func:`export_student` refuses before writing anything.
    """

    #: The format's registry name (``export_student(folder, formats=[name])``).
    name: str = ""
    #: Formats whose files this one writes too (``onnx-int8`` writes ``onnx``'s): when both are asked
    #: for, only this one runs, and the included format's entry lists this one's files.
    includes: tuple[str, ...] = ()

    def check(self, model_folder: str, **options: Any) -> None:
        """Raise (``ValueError``, ``ImportError``...) naming the problem if this format cannot export
        ``model_folder``, which :func:`check_student_folder` has already accepted. Default: nothing.

        ``options`` are :func:`export_student`'s keyword options (``output_dir``, ``images``,
        ``calibration``, ``overwrite``); a format whose ``check`` or ``export`` does not name one is not given it."""

    def export(self, model_folder: str, output_dir: str, **options: Any) -> list[str]:
        """Write the format's files for the student in ``model_folder`` into ``output_dir`` (which
        exists; it may be ``model_folder`` itself).

        Returns:
            The paths of the format's files in ``output_dir``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_FORMATS = Registry(
    "export format",
    ExportFormat,
    required=("export",),
    unregister_hint="unregister_export_format",
    listed=sorted,
)


def register_export_format(export_format: ExportFormat | type[ExportFormat]):
    """Register ``export_format`` (an instance, or a class with a no-argument constructor) under its
    ``name``. Usable as a class decorator.

    Returns:
        ``export_format`` as given.

    Raises:
        TypeError: it is not an ``ExportFormat``, or does not implement ``export``.
        ValueError: it has no ``name``, or another format is registered under that name.
    """
    return _FORMATS.register(export_format)


def _register_builtin(export_format: ExportFormat) -> None:
    _FORMATS.register(export_format, builtin=True)


def unregister_export_format(name: str) -> ExportFormat:
    """Remove the format registered as ``name`` and return it.

    Raises:
        ValueError: ``name`` is not registered, or is one of the package's own formats.
    """
    return _FORMATS.unregister(name)


def available_export_formats() -> list[str]:
    """The registered formats' names, sorted."""
    return _FORMATS.names()


def check_student_folder(folder: str | os.PathLike) -> str:
    """``folder`` as a string if it holds a saved student; else ``ValueError`` naming the folder and
    what it lacks (pickle weights, ``pytorch_model.bin``, are not exported: re-save with
    ``save_pretrained``, which writes safetensors)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "a file" if os.path.exists(folder) else "no such folder"
        raise ValueError(
            f"'{folder}' is not a student folder: {what} (a student is a folder saved by save_pretrained)"
        )
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        hint = ""
        if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
            hint = " (it has pickle weights, pytorch_model.bin: load and re-save it with save_pretrained)"
        raise ValueError(f"'{folder}' is not a student folder: it has no {' and no '.join(missing)}{hint}")
    _check_weights_readable(os.path.join(folder, "model.safetensors"))
    return folder


def _check_weights_readable(path: str) -> None:
    """``ValueError`` naming ``path`` when it is not a whole safetensors file (truncated, or not
    safetensors at all); reads only the header, and checks that it covers the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np"):
            pass
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"'{path}' is not a readable safetensors file ({err}): re-save the student with save_pretrained"
        ) from err


def _accepted(method, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``method`` names (all of them if it takes ``**kwargs``): formats written
    before an option existed keep working."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in parameters}


def export_student(
    folder: str | os.PathLike,
    formats: str | Sequence[str] = ("safetensors",),
    output_dir: str | os.PathLike | None = None,
    *,
    images: Any = None,
    calibration: Any = None,
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Export the student saved in ``folder`` to each of ``formats``.

    Every format is looked up and checked before any file is written.

    Args:
        folder: a student's model folder (``save_pretrained``, ``trainer.save_model``, a run's
            ``finetune/model``).
        formats: registered format names (``available_export_formats()``), or one name.
        output_dir: where the files go (created if needed); default ``folder`` itself.
        images: evaluation images for formats that measure the exported model (``onnx``: a list of
            PIL images, a ``datasets.Dataset`` or a ``TargetTask``); formats that measure nothing
            ignore them.
        calibration: images a quantizing format calibrates on (``onnx-int8``'s static int8: a
            list of PIL images, a ``datasets.Dataset`` such as a run's transfer set, or a
            ``TargetTask``, whose training split is used); default the training split of ``images``
            when it is a ``TargetTask``, else none (``onnx-int8`` then quantizes dynamically).
        overwrite: let a format replace an earlier export of *other* weights (``onnx`` refuses by
            default; an export of the same weights is always replaced).

    Returns:
        Each format's name and the paths of its files in ``output_dir``.

    Raises:
        ValueError: an unknown format (the message lists the registered ones), or a folder that is
            not a student (the message names it and what it lacks); a format's own ``check`` may
            raise more.
    """
    names = [formats] if isinstance(formats, str) else list(formats)
    if not names:
        raise ValueError(f"no export format given; registered: {', '.join(available_export_formats())}")
    chosen = [_FORMATS.get(name) for name in names]
    folder = check_student_folder(folder)
    output_dir = os.fspath(output_dir) if output_dir is not None else folder
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir '{output_dir}' is a file, not a folder: choose a folder for the export")
    options = {"output_dir": output_dir, "images": images, "calibration": calibration, "overwrite": overwrite}
    for export_format in chosen:
        export_format.check(folder, **_accepted(export_format.check, options))
    os.makedirs(output_dir, exist_ok=True)
    options.pop("output_dir")
    included = {name: f.name for f in chosen for name in f.includes if name in names}
    written: dict[str, list[str]] = {}
    for export_format in chosen:
        if export_format.name not in included and export_format.name not in written:
            kwargs = _accepted(export_format.export, options)
            written[export_format.name] = list(export_format.export(folder, output_dir, **kwargs))
    return {name: written[included.get(name, name)] for name in names}
