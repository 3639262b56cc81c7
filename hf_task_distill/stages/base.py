"""The stage contract and the stage registry: one file per stage, registered here.

A stage is one step of task-oriented knowledge transfer (Vemulapalli et al., ICML 2024) that writes
its results into ``<run>/<stage>/``. It declares, in one place:

- ``name``, and the CLI ``command`` (if any) that runs it and every stage it depends on;
- ``settings_read``: the flags its result depends on (with :meth:`Stage.settings` for those that
  depend on a mode), which, with the run ids of its :meth:`Stage.upstream` stages and a fingerprint
  of the task's splits it reads (:meth:`Stage.task_splits`), make its fingerprint;
- :meth:`Stage.run`, which returns a :class:`StageResult`: its outputs and its compute-ledger entries.

:class:`~hf_task_distill.pipeline.Pipeline` does the rest (manifests, resume, order, process barriers).
Adding a stage: subclass :class:`Stage` in one file and decorate it with :func:`register_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..ledger import LedgerEntry
    from .context import RunContext

__all__ = [
    "Stage",
    "StageNotReady",
    "StageResult",
    "available_stages",
    "get_stage",
    "register_stage",
    "stage_commands",
    "stages_for_command",
    "unregister_stage",
]


class StageNotReady(RuntimeError):
    """A stage was asked for before the stage it depends on has completed."""


@dataclass
class StageResult:
    """What a stage's :meth:`Stage.run` returns.

    Args:
        outputs: JSON-serialisable results recorded in the stage's manifest (paths inside the stage
            folder are stored relative to it by :class:`~hf_task_distill.run_directory.RunDirectory`).
        ledger: the compute the stage did (images through a model and FLOPs per image), one
            :class:`~hf_task_distill.ledger.LedgerEntry` per kind of work.
    """

    outputs: dict[str, Any]
    ledger: list[LedgerEntry] = field(default_factory=list)


class Stage:
    """One stage of a run. Subclasses set the class attributes and implement :meth:`run`.

    Attributes:
        name: the stage folder's name and the name ``--overwrite_stage`` takes.
        command: the CLI command that runs this stage and every stage it depends on (``None``: none).
        command_help: that command's one-line description.
        command_settings: settings the command sets (``push`` sets ``push_to_hub``).
        settings_read: the flags (config field names) the stage's result depends on.
        recomputed_freely: the stage only derives files from finished ones (seconds of work): a
            changed setting redoes it without asking for ``--overwrite_stage``.
    """

    name: ClassVar[str]
    command: ClassVar[str | None] = None
    command_help: ClassVar[str] = ""
    command_settings: ClassVar[dict[str, Any]] = {}
    settings_read: ClassVar[tuple[str, ...]] = ()
    recomputed_freely: ClassVar[bool] = False

    def enabled(self, config: PipelineConfig) -> bool:
        """Whether a run of every stage includes this one (the baseline can be turned off)."""
        return True

    def upstream(self, config: PipelineConfig) -> tuple[str, ...]:
        """The stages whose results this one reads: redoing one of them redoes this one."""
        return ()

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        """The settings the result depends on, by flag name (default: :attr:`settings_read`)."""
        flat = config.to_dict()
        return {name: flat[name] for name in self.settings_read}

    def models_needed(self, config: PipelineConfig) -> list[tuple[str, str]]:
        """``(what, name)`` of the models the stage will load by name (a student, a retrieval encoder):
        checked before the first stage runs, so that a typo or a missing network fails at once."""
        return []

    def task_splits(self, config: PipelineConfig, eval_split: str) -> tuple[str, ...] | None:
        """The task's splits whose data the result depends on (``None``: all of them). A fixed test
        image must not redo a training stage."""
        return None

    def skipped_images(self, outputs: dict[str, Any]) -> dict[str, int]:
        """Images the finished stage skipped as undecodable, by where they were met (from its outputs)."""
        return {}

    def report(self, outputs: dict[str, Any]) -> list[str]:
        """Lines the finished stage adds to a command's summary (each starting with a blank line)."""
        return []

    def run(self, context: RunContext, directory: str) -> StageResult:
        """Do the stage's work in ``directory`` (a fresh or resumed work folder) and return its result.

        Raises:
            StageNotReady: a stage it reads has not completed.
        """
        raise NotImplementedError


_REGISTRY: dict[str, Stage] = {}


def register_stage(cls: type[Stage] | None = None, *, after: str | None = None):
    """Class decorator: add a :class:`Stage` subclass to the registry (at the end, or ``after`` a stage).

    Raises:
        ValueError: a stage of that name is registered, or ``after`` is not.
    """

    def add(stage_cls: type[Stage]) -> type[Stage]:
        name = stage_cls.name
        if name in _REGISTRY:
            raise ValueError(f"a stage named '{name}' is already registered")
        if after is not None and after not in _REGISTRY:
            raise ValueError(
                f"register_stage(after='{after}'): no such stage; stages are {', '.join(_REGISTRY)}"
            )
        items = list(_REGISTRY.items())
        at = len(items) if after is None else [n for n, _ in items].index(after) + 1
        items.insert(at, (name, stage_cls()))
        _REGISTRY.clear()
        _REGISTRY.update(items)
        return stage_cls

    return add if cls is None else add(cls)


def unregister_stage(name: str) -> None:
    """Remove a stage added with :func:`register_stage` (a plugin's or a test's)."""
    _REGISTRY.pop(name, None)


def available_stages() -> tuple[str, ...]:
    """The registered stages' names, in the order a run runs them (the package's own are registered
    when :mod:`hf_task_distill.stages` is imported, which importing this module does first)."""
    return tuple(_REGISTRY)


def get_stage(name: str) -> Stage:
    """The registered stage called ``name``.

    Raises:
        ValueError: no stage has that name (the message lists the stages).
    """
    names = available_stages()
    if name not in _REGISTRY:
        raise ValueError(f"unknown stage '{name}'; stages are {', '.join(names)}")
    return _REGISTRY[name]


def stage_commands() -> dict[str, tuple[str, str]]:
    """``{command: (help, stage)}`` for every stage that has a CLI command, in stage order."""
    return {
        get_stage(n).command: (get_stage(n).command_help, n)
        for n in available_stages()
        if get_stage(n).command
    }


def stages_for_command(config: PipelineConfig, stage: str | None) -> list[str]:
    """The stages a command runs: ``stage`` and every stage it depends on, directly or through others
    (every enabled stage for ``None``), in stage order."""
    names = available_stages()
    if stage is None:
        return [n for n in names if get_stage(n).enabled(config)]
    wanted, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(get_stage(name).upstream(config))
    return [n for n in names if n in wanted]
