"""A run's folder on disk: one sub-folder per stage, complete when its manifest is there.

The rules every stage follows, kept here apart from what the stages compute:

- A stage is complete when ``<run>/<stage>/manifest.json`` exists, parses, has its keys, and every
  output file still has the sha256 the manifest recorded.
- A first attempt works in ``<run>/<stage>/`` and records the fingerprint it started with
  (``started.json``); a killed attempt with the same fingerprint resumes there, one with other
  settings starts over.
- A stage that is redone while a complete result exists (``--overwrite_stage``, or a stage upstream
  was redone) works in ``<run>/<stage>.redo/``. The finished result stays where it is, usable, until
  the replacement is complete; then the two are swapped (``<stage>`` -> ``<stage>.old`` ->
  deleted, ``<stage>.redo`` -> ``<stage>``). A kill at any point leaves a complete stage in place, or
  a swap that the next run finishes (:meth:`RunDirectory.recover`).
- Paths in a manifest's outputs are relative to the stage folder, so a run folder can be moved or
  copied; :meth:`RunDirectory.manifest` returns them resolved.
- Once a stage is complete its Trainer checkpoints (``checkpoints/``) are deleted: they only serve to
  resume an incomplete stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

from .files import content_hashes, read_json, write_json_atomically

__all__ = ["MANIFEST", "PATH_OUTPUTS", "RunDirectory", "RunInUse"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STARTED = "started.json"
REDO, OLD = ".redo", ".old"
CHECKPOINTS = "checkpoints"
#: Not covered by a manifest's content hashes: the manifest itself, Trainer checkpoints (only read to
#: resume an incomplete stage), and the pool embeddings and teacher cache, whose shards carry their
#: own fingerprints and are checked when read.
NOT_HASHED = (MANIFEST, STARTED, CHECKPOINTS, "embeddings", "teacher_cache")
#: Output keys that hold paths (stored relative to the stage folder).
PATH_OUTPUTS = (
    "model",
    "path",
    "student",
    "transfer_set",
    "confusion_matrices",
    "per_class_iou",
    "resumed_from",
)
_REQUIRED = ("stage", "run_id", "fingerprint", "outputs", "ledger")
LOCK = ".lock"


class RunInUse(RuntimeError):
    """Another command is working in the same run directory."""


class RunDirectory:
    """The stage folders of one run directory (``path``); folder changes happen on the main process."""

    def __init__(self, path: str | os.PathLike, *, is_main_process: bool = True):
        self.path = os.path.abspath(os.fspath(path))
        self.is_main_process = is_main_process

    def stage_dir(self, name: str) -> str:
        """The folder of stage ``name``: ``<path>/<name>`` (absolute; not created)."""
        return os.path.join(self.path, name)

    def redo_dir(self, name: str) -> str:
        """Where a stage redone over a complete result works: ``<path>/<name>.redo`` (not created)."""
        return self.stage_dir(name) + REDO

    def work_dir(self, name: str, *, replacing: bool) -> str:
        """Where an attempt works: beside a complete result it replaces, else in the stage folder."""
        return self.redo_dir(name) if replacing else self.stage_dir(name)

    # -- reading -----------------------------------------------------------------------------------
    def manifest(self, name: str, folder: str | None = None) -> dict[str, Any] | None:
        """The stage's manifest with its output paths resolved, or ``None`` when it is missing,
        unreadable or lacks its keys (the stage is then not complete)."""
        folder = folder or self.stage_dir(name)
        path = os.path.join(folder, MANIFEST)
        manifest = read_json(path)
        if not manifest and os.path.exists(path):
            logger.warning("stage %s: %s is unreadable; the stage counts as not complete", name, path)
        if manifest and not all(key in manifest for key in _REQUIRED):
            missing = [k for k in _REQUIRED if k not in manifest]
            logger.warning("stage %s: %s lacks %s; the stage counts as not complete", name, path, missing)
            return None
        if not manifest:
            return None
        outputs = manifest.get("outputs")
        if isinstance(outputs, dict):
            for key in PATH_OUTPUTS:
                value = outputs.get(key)
                if isinstance(value, str) and not os.path.isabs(value):
                    outputs[key] = os.path.join(folder, value)
            manifest["outputs"] = _map_paths(outputs, lambda v: _resolved(v, folder))
        return manifest

    def changed_output(self, name: str, manifest: dict[str, Any]) -> str | None:
        """The first output file (relative to the stage folder) that is missing, added or differs
        from the hash its manifest recorded, or ``None`` when every one matches."""
        recorded = manifest.get("content")
        if not isinstance(recorded, dict):
            return MANIFEST  # written by a version that recorded no hashes: cannot be checked
        found = content_hashes(self.stage_dir(name), exclude=NOT_HASHED)
        for path in sorted(set(recorded) | set(found)):
            if recorded.get(path) != found.get(path):
                return path
        return None

    def started(self, folder: str) -> dict[str, Any]:
        """What an attempt in ``folder`` recorded when it started (``{}`` if nothing)."""
        return read_json(os.path.join(folder, STARTED))

    @contextlib.contextmanager
    def locked(self):
        """Hold the run directory for one command (an advisory ``flock`` on ``<run>/.lock``, released
        when the command ends, however it ends). A second command on the same run would take the first
        one's live stage for an interrupted one and 'resume' it from checkpoints that are still being
        written; it is refused instead, naming the process that holds the run."""
        if not self.is_main_process:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, no check
            yield
            return
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, LOCK), "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunInUse(
                    f"another command is running in {self.path} ({holder}): wait for it to end, or stop it "
                    "(the same command again then resumes its work)"
                ) from err
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- writing (main process only) ---------------------------------------------------------------
    def recover(self, name: str) -> None:
        """Finish a swap a kill interrupted: a complete ``.redo`` replaces the stage; a stage folder
        that was moved to ``.old`` and not replaced is moved back; a leftover ``.old`` is deleted."""
        if not self.is_main_process:
            return
        final, redo, old = self.stage_dir(name), self.redo_dir(name), self.stage_dir(name) + OLD
        if os.path.isdir(redo) and self.manifest(name, redo) is not None:
            logger.info("stage %s: finishing the replacement a previous run completed", name)
            self._swap(name)
        elif not os.path.isdir(final) and os.path.isdir(old):
            os.replace(old, final)
        if os.path.isdir(old):
            shutil.rmtree(old)

    def begin(
        self, name: str, fingerprint: str, inputs: dict[str, Any], *, replacing: bool, fresh: bool = False
    ) -> tuple[str, bool]:
        """The folder to work in and whether an interrupted attempt with these inputs is resumed.

        ``replacing``: a complete result exists and must stay until the new one is complete, so the
        work happens in ``<stage>.redo``. A folder holding an attempt with another fingerprint is
        wiped: it is not complete, and its checkpoints belong to other settings. ``fresh`` wipes it
        whatever it holds (a complete result whose files were changed since).
        """
        folder = self.work_dir(name, replacing=replacing)
        started = self.started(folder)
        resumed = not fresh and started.get("fingerprint") == fingerprint
        if self.is_main_process:
            if not resumed and os.path.isdir(folder):
                shutil.rmtree(folder)
            os.makedirs(folder, exist_ok=True)
            write_json_atomically(
                os.path.join(folder, STARTED), {"fingerprint": fingerprint, "inputs": inputs}
            )
        return folder, resumed

    def complete(self, name: str, folder: str, manifest: dict[str, Any]) -> None:
        """Record ``manifest`` (output paths made relative, output files hashed) in ``folder``, move
        the result into place if it was built beside a complete one, and drop its checkpoints."""
        if not self.is_main_process:
            return
        outputs = manifest.get("outputs")
        if isinstance(outputs, dict):
            for key in PATH_OUTPUTS:
                value = outputs.get(key)
                if isinstance(value, str) and os.path.isabs(value) and _inside(value, folder):
                    outputs[key] = os.path.relpath(value, folder).replace(os.sep, "/")
            # any other path into the stage folder (a plugin stage's outputs, at any depth) is stored
            # as "./<relative>", so that it survives a redo's swap and a moved run
            manifest["outputs"] = _map_paths(outputs, lambda v: _relative(v, folder))
        manifest["content"] = content_hashes(folder, exclude=NOT_HASHED)
        write_json_atomically(os.path.join(folder, MANIFEST), manifest)
        if folder == self.redo_dir(name):
            self._swap(name)
        self.drop_checkpoints(name)

    def drop_checkpoints(self, name: str) -> None:
        """Delete a complete stage's Trainer checkpoints (resuming is over)."""
        checkpoints = os.path.join(self.stage_dir(name), CHECKPOINTS)
        if self.is_main_process and os.path.isdir(checkpoints):
            shutil.rmtree(checkpoints)

    def _swap(self, name: str) -> None:
        final, redo, old = self.stage_dir(name), self.redo_dir(name), self.stage_dir(name) + OLD
        if os.path.isdir(final):
            if os.path.isdir(old):
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(redo, final)
        if os.path.isdir(old):
            shutil.rmtree(old)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _map_paths(value: Any, convert) -> Any:
    """``value`` with ``convert`` applied to every string in it (dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: _map_paths(v, convert) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_paths(v, convert) for v in value]
    return convert(value) if isinstance(value, str) else value


def _relative(value: str, folder: str) -> str:
    """An absolute path inside ``folder`` as ``./<relative>``; anything else unchanged."""
    if os.path.isabs(value) and _inside(value, folder):
        return "./" + os.path.relpath(value, folder).replace(os.sep, "/")
    return value


def _resolved(value: str, folder: str) -> str:
    """A ``./<relative>`` output (see :func:`_relative`) as a path in ``folder``."""
    return os.path.join(folder, value[2:]) if value.startswith("./") else value
