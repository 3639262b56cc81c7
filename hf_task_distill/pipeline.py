"""The stages of task-oriented knowledge transfer (:mod:`hf_task_distill.stages`), chained in a run
directory.

Each stage writes into ``<run>/<stage>/`` and finishes by writing ``manifest.json`` (atomically,
last): its inputs' fingerprint, its outputs, its compute-ledger entries and wall time. A rerun skips
a stage whose manifest is there with the same fingerprint; a stage's inputs include the ids of the
upstream runs it used, so redoing a stage (``overwrite_stage``) redoes what depends on it. A stage
killed part-way has no manifest and is run again; its Trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import replace
from typing import Any

from .config import PipelineConfig
from .devices import process_state
from .files import display_path
from .ledger import ComputeLedger, Stopwatch, describe_device
from .run_directory import NOT_HASHED, RunDirectory, RunInUse
from .stages import (
    RunContext,
    StageNotReady,
    StageResult,
    available_stages,
    check_order,
    get_stage,
    stages_for_command,
)
from .stages.context import TASK_DATA, TRANSFER_DATA, check_models_reachable

__all__ = ["Pipeline", "RunInUse", "StageNotReady", "StageSettingsChanged"]

logger = logging.getLogger(__name__)

#: Kept for callers of earlier versions: see :mod:`hf_task_distill.run_directory`.
_NOT_HASHED = NOT_HASHED
_DATA_INPUTS = {
    TASK_DATA: "task's data (its images, labels or classes)",
    TRANSFER_DATA: "transfer set's images",
}


class StageSettingsChanged(ValueError):
    """A command asked for settings other than those a finished stage was computed with.

    ``changes`` lists ``(stage, setting, recorded value, requested value)``. Nothing was changed:
    the finished stages stay as they are until ``overwrite_stage`` asks for them to be redone.
    """

    def __init__(self, run_dir: str, changes: list[tuple[str, str, Any, Any]]):
        self.changes = changes
        stages = list(dict.fromkeys(stage for stage, *_ in changes))
        settings = [(stage, k, old, new) for stage, k, old, new in changes if k not in _DATA_INPUTS]
        data = [(stage, k) for stage, k, *_ in changes if k in _DATA_INPUTS]
        listed = [
            f"stage {stage} finished with {setting}={old!r}, this command asks for {new!r}"
            for stage, setting, old, new in settings
        ]
        by_data: dict[str, list[str]] = {}
        for stage, k in data:  # one clause per kind of data, naming every stage it touches
            by_data.setdefault(k, []).append(stage)
        listed += [
            f"the {_DATA_INPUTS[k]} changed since stage{'s' if len(names) > 1 else ''} {', '.join(names)} finished"
            for k, names in by_data.items()
        ]
        advice = []
        if settings:
            keep = " ".join(dict.fromkeys(f"--{setting} {old}" for _, setting, old, _ in settings))
            advice.append(f"to keep the finished result, give {keep}")
        if data:
            advice.append("to keep it, put the data back as it was")
        advice.append(f"to redo it and the stages after it, add --overwrite_stage {' '.join(stages)}")
        super().__init__(
            f"{'; '.join(listed)} (run {run_dir}; its settings are its config.json with the command's flags on "
            f"top). Nothing was changed. {'; '.join(advice)[:1].upper()}{'; '.join(advice)[1:]}; or use another "
            "--output_dir"
        )


def _fingerprint(inputs: dict[str, Any]) -> str:
    """A stage's fingerprint: :func:`~hf_task_distill.data.fingerprints.fingerprint_hash` of its inputs."""
    from .data.fingerprints import fingerprint_hash

    return fingerprint_hash(inputs)


def _setting_changes(recorded: dict[str, Any], current: dict[str, Any], upstream: tuple[str, ...]):
    """``(setting, recorded, current)`` for every setting (not an upstream run id) that differs."""
    names = [k for k in dict.fromkeys([*current, *recorded]) if k not in upstream]
    missing = "(not recorded)"
    return [
        (name, recorded.get(name, missing), current.get(name, missing))
        for name in names
        if _canonical(recorded.get(name, missing)) != _canonical(current.get(name, missing))
    ]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Pipeline:
    """Run the registered stages (:mod:`hf_task_distill.stages`) of a configuration in
    ``config.run.output_dir``: manifests, fingerprints, resume, order and process barriers. What the
    stages read (the task, upstream results, shared models and views) is :attr:`context`."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.run_dir = os.path.abspath(config.run.output_dir)
        self.state = process_state()
        self.folders = RunDirectory(self.run_dir, is_main_process=self.state.is_main_process)
        self.context = RunContext(config, self.folders, self.state)
        self._redone: set[str] = set()

    # -- what the stages read (see RunContext) --------------------------------------------------
    @property
    def task(self):
        """The labelled task with its label budget applied (:attr:`RunContext.task`)."""
        return self.context.task

    @property
    def full_train(self):
        """The task's whole training split, before the label budget."""
        return self.context.full_train

    @property
    def eval_split(self) -> str:
        """``test``, or ``validation`` when the task has no test split."""
        return self.context.eval_split

    def task_fingerprint_of(self, splits: list[str]) -> str:
        """See :meth:`RunContext.task_fingerprint_of`."""
        return self.context.task_fingerprint_of(splits)

    def teacher_path(self) -> str:
        """The finetuned teacher's folder, or the source of a teacher used as it is (strategy none)."""
        return self.context.teacher_path()

    def transfer_dataset(self):
        """The transfer set the ``transfer`` stage chose (:meth:`RunContext.transfer_dataset`)."""
        return self.context.transfer_dataset()

    def ledger(self) -> ComputeLedger:
        """Every completed stage's compute, in stage order."""
        return self.context.ledger()

    # -- stage bookkeeping -----------------------------------------------------------------------
    def stage_dir(self, name: str) -> str:
        """The folder of stage ``name``: ``<run>/<name>``."""
        return self.folders.stage_dir(name)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The stage's manifest (output paths resolved), or ``None`` when it is missing or unreadable
        (the stage is then not complete)."""
        return self.folders.manifest(name)

    def _changed_output(self, name: str, manifest: dict[str, Any]) -> str | None:
        return self.folders.changed_output(name, manifest)

    def _upstream(self, name: str) -> str:
        manifest = self.manifest(name)
        if manifest is None:
            raise StageNotReady(f"stage '{name}' has not completed in {self.run_dir}: run it first")
        return manifest["run_id"]

    def _inputs(self, name: str) -> dict[str, Any]:
        """What the stage's result depends on: its settings (by flag name) and the run id of each
        upstream stage it reads."""
        inputs = self.context.stage_settings(name)
        for upstream in get_stage(name).upstream(self.config):
            inputs[upstream] = self._upstream(upstream)
        return inputs

    def check_settings(self, stages) -> None:
        """Raise :class:`StageSettingsChanged` if any of ``stages`` is complete with other settings than
        the configuration's (and is not to be overwritten): before anything in the run is touched."""
        changes = []
        for name in stages:
            manifest, stage = self.manifest(name), get_stage(name)
            if manifest is None or name in self.config.run.overwrite_stage or stage.recomputed_freely:
                continue
            recorded, upstream = manifest.get("inputs", {}), stage.upstream(self.config)
            changes += [
                (name, *change)
                for change in _setting_changes(recorded, self.context.stage_settings(name), upstream)
            ]
        if changes:
            raise StageSettingsChanged(self.run_dir, changes)

    def run(self, stages: tuple[str, ...] | list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run ``stages`` in order (default: all; ``baseline`` only if enabled), skipping completed ones.

        Raises :class:`StageSettingsChanged` before anything runs when a finished stage was computed
        with other settings and ``overwrite_stage`` does not name it.
        """
        if stages is None:
            stages = stages_for_command(self.config, None)
        check_order(self.config, list(stages))
        self.task  # noqa: B018 - a task that cannot be loaded fails here, before the run folder is written
        overwrite = self.config.run.overwrite_stage
        with self.folders.locked():
            for name in stages:
                self.folders.recover(name)
            self.state.wait_for_everyone()
            # every finished stage, not only this command's: config.json, saved below, must hold the
            # settings of all the run's finished stages (found by the newcomer try of issue 17)
            finished = [
                n for n in available_stages() if n not in stages and get_stage(n).enabled(self.config)
            ]
            self.check_settings([*stages, *(n for n in finished if self.manifest(n) is not None)])
            check_models_reachable(
                self.config, [s for s in stages if self.manifest(s) is None or s in overwrite]
            )
            for name in stages:
                get_stage(name).check_ready(self.config)
            os.makedirs(self.run_dir, exist_ok=True)
            config_path = os.path.join(self.run_dir, "config.json")
            # config.json holds the settings the finished stages have: a command that changes them
            # records them once its stages are done (a failed or interrupted redo leaves the old
            # ones, so a plain command afterwards continues the finished run); a first command
            # records them at once, so that a plain command continues it too
            if self.state.is_main_process and not os.path.isfile(config_path):
                self.config.save(config_path)
            results = {name: self.run_stage(name) for name in stages}
            if self.state.is_main_process:
                self.config.save(config_path)
            return results

    def _redo_reason(self, name: str, manifest: dict[str, Any], inputs: dict[str, Any]) -> str:
        """Why a complete stage whose fingerprint differs is redone, or raise if it may not be."""
        upstream = get_stage(name).upstream(self.config)
        changes = _setting_changes(manifest.get("inputs", {}), inputs, upstream)
        if changes and not get_stage(name).recomputed_freely:
            raise StageSettingsChanged(self.run_dir, [(name, *change) for change in changes])
        redone = [u for u in upstream if manifest.get("inputs", {}).get(u) != inputs.get(u)]
        parts = [f"{setting} {old!r} -> {new!r}" for setting, old, new in changes]
        parts += [f"stage {u} was redone" for u in redone]
        return "its inputs changed: " + ", ".join(parts or ["(recorded by another version)"])

    def run_stage(self, name: str) -> dict[str, Any]:
        """Run one stage, or skip it when it is complete with the same inputs and intact outputs.

        A complete stage is only replaced when ``overwrite_stage`` names it, an upstream stage was
        redone, or (``evaluate``, ``publish``) its settings changed; the finished result stays in
        place until the new one is complete. Other setting changes raise :class:`StageSettingsChanged`.
        """
        self.folders.recover(name)
        self.state.wait_for_everyone()
        inputs = self._inputs(name)
        fingerprint = _fingerprint(inputs)
        manifest = self.manifest(name)
        reason, damaged = self._why_redo(name, manifest, inputs, fingerprint)
        if manifest is not None and reason is None:
            return manifest  # complete: skipped
        # a finished result is kept until its replacement is complete; derived stages (evaluate,
        # publish: seconds of work, and publish's folders are what a failed push points the user at)
        # are rewritten in place
        replacing = manifest is not None and not damaged and not get_stage(name).recomputed_freely
        if manifest is None or replacing:
            self._log_interrupted_attempt(name, inputs, fingerprint, replacing=replacing, damaged=damaged)
        self.state.wait_for_everyone()  # every process has decided before a folder changes
        directory, resumed = self.folders.begin(name, fingerprint, inputs, replacing=replacing, fresh=damaged)
        self.state.wait_for_everyone()
        if reason:
            kept = "; the finished result is kept until the new one is complete" if replacing else ""
            logger.info("stage %s: redoing, %s%s", name, reason, kept)
        logger.info("stage %s: %s", name, "resuming an interrupted run" if resumed else "starting")
        return self._execute(name, directory, inputs, fingerprint)

    def _why_redo(self, name, manifest, inputs, fingerprint) -> tuple[str | None, bool]:
        """``(reason, damaged)``: why a finished stage is redone (``None``: it is complete and is
        skipped; for a stage with no manifest, ``None`` too) and whether its outputs were changed."""
        if manifest is None:
            return None, False
        if name in self.config.run.overwrite_stage and name not in self._redone:
            return "--overwrite_stage", False
        if manifest.get("fingerprint") != fingerprint and not get_stage(name).still_serves(
            manifest.get("inputs", {}), inputs
        ):
            return self._redo_reason(name, manifest, inputs), False
        changed = self._changed_output(name, manifest)
        if changed is not None:  # its files were changed since: nothing there is worth keeping
            return f"its output {changed} is not what it wrote", True
        logger.info("stage %s: complete (%s), skipped", name, manifest["run_id"])
        self.folders.drop_checkpoints(name)
        if os.path.isdir(self.folders.redo_dir(name)):
            logger.info(
                "stage %s: %s holds an interrupted redo; the command that started it resumes it (with "
                "--overwrite_stage %s), or delete the folder",
                name,
                self.folders.redo_dir(name),
                name,
            )
        return None, False

    def _log_interrupted_attempt(self, name, inputs, fingerprint, *, replacing: bool, damaged: bool) -> None:
        """Say so when an attempt that started in the work folder and never finished had other
        settings (a finished stage rewritten in place keeps its own started.json there: that one was
        not interrupted)."""
        interrupted = self.folders.started(self.folders.work_dir(name, replacing=replacing))
        if interrupted and interrupted.get("fingerprint") != fingerprint and not damaged:
            changes = _setting_changes(interrupted.get("inputs", {}), inputs, ())
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes) or "its inputs changed"
            logger.info(
                "stage %s: an interrupted attempt had other settings (%s): starting over", name, listed
            )

    def _execute(self, name: str, directory: str, inputs: dict[str, Any], fingerprint: str) -> dict[str, Any]:
        """Run the stage in ``directory`` and complete it: its manifest, written last."""
        with Stopwatch() as watch:
            result = get_stage(name).run(self.context, directory)
        _check_result(name, result)
        manifest = {
            "stage": name,
            "run_id": uuid.uuid4().hex[:12],
            "fingerprint": fingerprint,
            "inputs": inputs,
            "outputs": result.outputs,
            "ledger": ComputeLedger(list(result.ledger), {name: watch.seconds}).as_dict(),
            "device": describe_device(),
            "num_processes": self.state.num_processes,
            "versions": _versions(),
        }
        self.state.wait_for_everyone()  # every process's outputs are on disk before they are hashed
        self.folders.complete(name, directory, manifest)
        self.state.wait_for_everyone()
        self._redone.add(name)
        logger.info("stage %s: done in %.1f s", name, watch.seconds)
        return self.manifest(name)  # every process continues from what was written

    # -- summary ---------------------------------------------------------------------------------
    def skipped_images(self) -> dict[str, int]:
        """Images skipped because they could not be decoded, per where they were met (non-zero only;
        each stage says what it skipped: :meth:`Stage.skipped_images`)."""
        counts: dict[str, int] = {}
        for name, outputs in self._finished_outputs():
            counts.update(get_stage(name).skipped_images(outputs))
        return {where: n for where, n in counts.items() if n}

    def summary(self) -> str:
        """Each finished stage's report (the results table), skipped images and the compute per
        stage, one screen."""
        lines = [f"Run directory: {display_path(self.run_dir)}"]
        for name, outputs in self._finished_outputs():
            lines += get_stage(name).report(outputs)
        skipped = self.skipped_images()
        if skipped:
            lines += [
                "",
                "Skipped (unreadable) images: " + "; ".join(f"{n} in the {w}" for w, n in skipped.items()),
            ]
        ledger = self.ledger()
        if ledger.entries or ledger.wall_s:
            shown = ComputeLedger(
                [replace(e, model=_shown(e.model)) for e in ledger.entries], dict(ledger.wall_s)
            )
            lines += ["", "Compute per stage:", "", shown.markdown()]
        return "\n".join(lines)

    def _finished_outputs(self):
        """``(stage, outputs)`` of every finished stage, in run order."""
        for name in available_stages():
            manifest = self.manifest(name)
            if manifest is not None:
                yield name, manifest.get("outputs") or {}


def _shown(model: str) -> str:
    """A ledger's model name as the summary shows it: a local folder by :func:`display_path`."""
    head, sep, tail = model.partition(", ")  # "<teacher>, finetuned"
    return display_path(head) + sep + tail if os.path.isabs(head) else model


def _check_result(name: str, result: Any) -> None:
    """A stage's result is a :class:`StageResult` whose outputs a manifest can hold (JSON).

    Raises:
        TypeError: naming the stage and what is wrong.
    """
    if not isinstance(result, StageResult):
        raise TypeError(
            f"stage '{name}': run() must return a StageResult(outputs, ledger), got {type(result).__name__}"
        )
    try:
        json.dumps(result.outputs)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"stage '{name}': its outputs must be JSON (numbers, strings, lists, dicts): {err}"
        ) from err


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("hf_task_distill", "torch", "transformers", "datasets", "timm", "accelerate"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = "?"
    return out
