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

import difflib
import re
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
    "check_order",
    "get_stage",
    "load_plugins",
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
        command_needs_finished: the command refuses a run whose upstream stages are not all complete
            (``push`` uploads a finished run; ``run --push_to_hub`` computes and pushes).
    """

    name: ClassVar[str]
    command: ClassVar[str | None] = None
    command_help: ClassVar[str] = ""
    command_settings: ClassVar[dict[str, Any]] = {}
    settings_read: ClassVar[tuple[str, ...]] = ()
    recomputed_freely: ClassVar[bool] = False
    command_needs_finished: ClassVar[bool] = False

    def enabled(self, config: PipelineConfig) -> bool:
        """Whether a run of every stage includes this one (the baseline can be turned off)."""
        return True

    def upstream(self, config: PipelineConfig) -> tuple[str, ...]:
        """The stages whose results this one reads: redoing one of them redoes this one."""
        return ()

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        """The settings the result depends on, by flag name (default: :attr:`settings_read`; those of
        ``_settings.RECORDED_WHEN_GIVEN`` only when given)."""
        flat = config.to_dict()
        unknown = [name for name in self.settings_read if name not in flat]
        if unknown:
            close = {n: difflib.get_close_matches(n, flat, n=1) for n in unknown}
            hints = ", ".join(
                f"'{n}'" + (f" (did you mean '{c[0]}'?)" if c else "") for n, c in close.items()
            )
            raise ValueError(f"stage '{self.name}': settings_read names no setting: {hints}")
        from ._settings import RECORDED_WHEN_GIVEN

        return {
            name: flat[name]
            for name in self.settings_read
            if not (name in RECORDED_WHEN_GIVEN and flat[name] is None)
        }

    def models_needed(self, config: PipelineConfig) -> list[tuple[str, str]]:
        """``(what, name)`` of the models the stage will load by name (a student, a retrieval encoder):
        checked before the first stage runs, so that a typo or a missing network fails at once."""
        return []

    def still_serves(self, recorded: dict[str, Any], current: dict[str, Any]) -> bool:
        """Whether a finished result computed with the settings ``recorded`` serves a command whose
        settings are ``current`` although they differ (a pushed publish serves a command that does not
        push): it is then kept as it is, not redone. Default: only the same settings serve."""
        return False

    def check_ready(self, config: PipelineConfig) -> None:
        """Checks that cost no computation, run before the command's first stage (a push's token and
        repo ids): raise to refuse the command before anything is trained or written."""

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
#: Which stage each stage was registered ``after`` (run order: a stage comes after those registered
#: before it after the same stage).
_PLACED_AFTER: dict[str, str] = {}
#: The package's own stages: registered on import, never unregistered.
BUILTIN_STAGES = ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate", "export", "publish")
#: Command names that are not stages' (the CLI's own; its tools are :data:`~hf_task_distill.commands.TOOL_COMMANDS`).
RESERVED_COMMANDS = ("run", "demo")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_stage(cls: type[Stage] | None = None, *, after: str | None = None):
    """Class decorator: add a :class:`Stage` subclass to the registry, at the end or ``after`` a stage
    (after the stages already registered after that one).

    Raises:
        TypeError: not a :class:`Stage` subclass, or one without its own ``run``.
        ValueError: a bad or taken name, an unknown ``after``, or a command that another stage or the
            CLI already has.
    """

    def add(stage_cls: type[Stage]) -> type[Stage]:
        _check_stage_class(stage_cls)
        name = stage_cls.name
        if after is not None and after not in _REGISTRY:
            raise ValueError(
                f"register_stage(after='{after}'): no such stage; stages are {', '.join(_REGISTRY)}"
            )
        items = list(_REGISTRY.items())
        at = len(items)
        if after is not None:
            at = [n for n, _ in items].index(after) + 1
            while at < len(items) and _placed_after(items[at][0], after):
                at += 1
            _PLACED_AFTER[name] = after
        items.insert(at, (name, stage_cls()))
        _REGISTRY.clear()
        _REGISTRY.update(items)
        return stage_cls

    return add if cls is None else add(cls)


def _placed_after(name: str, anchor: str) -> bool:
    """Whether ``name`` was registered after ``anchor``, directly or after a stage that was."""
    while name in _PLACED_AFTER:
        name = _PLACED_AFTER[name]
        if name == anchor:
            return True
    return False


def _check_stage_class(stage_cls) -> None:
    """What :func:`register_stage` refuses, each with the reason."""
    if not isinstance(stage_cls, type) or not issubclass(stage_cls, Stage):
        raise TypeError(f"register_stage takes a Stage subclass, got {stage_cls!r}")
    name = getattr(stage_cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{stage_cls.__name__}.name must be lowercase letters, digits and underscores (a folder name), "
            f"got {name!r}"
        )
    if name in _REGISTRY:
        raise ValueError(f"a stage named '{name}' is already registered")
    if stage_cls.run is Stage.run:
        raise TypeError(f"{stage_cls.__name__} does not implement run(context, directory)")
    command = stage_cls.command
    taken = {get_stage(n).command: n for n in _REGISTRY if get_stage(n).command}
    from ..commands import TOOL_COMMANDS

    if command is not None and (command in (*RESERVED_COMMANDS, *TOOL_COMMANDS) or command in taken):
        owner = f"stage '{taken[command]}'" if command in taken else "the CLI"
        raise ValueError(f"{stage_cls.__name__}.command '{command}' is already {owner}'s command")


def unregister_stage(name: str) -> None:
    """Remove a stage added with :func:`register_stage` (a plugin's or a test's).

    Raises:
        ValueError: no stage has that name, or it is one of the package's own.
    """
    if name in BUILTIN_STAGES:
        raise ValueError(f"'{name}' is one of the package's own stages: it cannot be unregistered")
    if name not in _REGISTRY:
        raise ValueError(f"no stage named '{name}' is registered; stages are {', '.join(_REGISTRY)}")
    del _REGISTRY[name]
    _PLACED_AFTER.pop(name, None)


def check_order(config: PipelineConfig, stages: list[str]) -> None:
    """Raise ``ValueError`` when one of ``stages`` reads a stage that runs after it (a plugin stage
    registered too early), naming the fix."""
    order = {name: i for i, name in enumerate(available_stages())}
    for name in stages:
        late = [u for u in get_stage(name).upstream(config) if order.get(u, -1) > order[name]]
        if late:
            raise ValueError(
                f"stage '{name}' reads stage '{late[0]}', which runs after it: register it with "
                f"register_stage(after='{late[0]}')"
            )


def load_plugins() -> list[str]:
    """Import the modules that installed packages declare in the ``hf_task_distill.plugins`` entry-point
    group (their stages, losses, student families, export formats or task types register on import),
    once. Returns the entry points loaded; one that fails to import is a warning naming it."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED is not None:
        return _PLUGINS_LOADED
    import importlib.metadata
    import logging

    _PLUGINS_LOADED = []
    for entry in importlib.metadata.entry_points(group="hf_task_distill.plugins"):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not break the tool
            logging.getLogger(__name__).warning(
                "plugin '%s' (%s) did not load: %s", entry.name, entry.value, err
            )
            continue
        _PLUGINS_LOADED.append(entry.name)
    return _PLUGINS_LOADED


_PLUGINS_LOADED: list[str] | None = None


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
