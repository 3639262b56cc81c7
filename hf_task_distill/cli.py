"""``hf-task-distill``: the pipeline from the command line.

    hf-task-distill run --dataset eurosat --per_class 10 --teacher facebook/dinov2-large \\
        --student mobilevitv2_100 --output_dir runs/eurosat-10shot
    hf-task-distill run runs/eurosat.yaml          # the same flags from a .json/.yaml file
    hf-task-distill demo                           # offline, CPU, a few minutes

Every command takes the same flags (``hf-task-distill <command> --help``); a command runs its
stages in order and skips those already complete in the run directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import tempfile
from typing import Any

from . import __version__
from .commands import TOOL_COMMANDS
from .config import ARGUMENT_GROUPS, PipelineConfig, RunArguments, saved_run_settings
from .demo import demo_defaults
from .files import display_path

logger = logging.getLogger("hf_task_distill")


def command_table() -> dict[str, tuple[str, str | None]]:
    """``{command: (help, stage)}``: ``run``, one command per stage that declares one (it runs that
    stage and every stage it depends on: :func:`~hf_task_distill.stages.stages_for_command`), and
    ``demo``. ``stage`` is ``None`` for every stage."""
    from .stages import load_plugins, stage_commands

    load_plugins()  # stages installed packages declare (entry-point group hf_task_distill.plugins)
    return {
        "run": (
            "Run every stage: teacher, transfer set, distillation, finetuning, evaluation, publishing.",
            None,
        ),
        **stage_commands(),
        "demo": (
            "The offline demo: scikit-learn digits, a small CPU teacher, a few minutes on 2 cores.",
            None,
        ),
    }


class CommandLineError(Exception):
    """A problem with what the user asked for: one line, no traceback."""


def _usage() -> str:
    commands = command_table()
    width = max(len(c) for c in commands)
    lines = [
        "usage: hf-task-distill <command> [--flags | config.json | config.yaml]",
        "",
        "Task-oriented knowledge transfer from a vision foundation model to a small student.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (text, _) in commands.items()]
    lines += ["", "tools:"] + [f"  {name:<{width}}  {text}" for name, text in TOOL_COMMANDS.items()]
    lines += [
        "",
        "hf-task-distill <command> --help lists every flag; hf-task-distill --version prints the version.",
        "Ctrl-C stops a command; the same command again resumes it.",
    ]
    return "\n".join(lines)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``<command> --help`` as a reader wants it: one spelling per flag (``--per_class``; the
    ``--per-class`` alias still parses), switches without a value (``--bf16``, not
    ``--bf16 [BF16]``; ``--bf16 false`` still parses), short value names (``N`` an integer, ``X`` a
    number, the flag's last word for text) and a default only where it says something."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog, max_help_position=32, **kwargs)

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        dashed = {o.replace("_", "-") for o in action.option_strings if "_" in o}
        flags = ", ".join(o for o in action.option_strings if o not in dashed)
        if _is_switch(action):
            return flags
        return f"{flags} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_default_metavar_for_optional(self, action):
        if action.type in (int, float):
            return {int: "N", float: "X"}[action.type]
        word = action.dest.rsplit("_", 1)[-1].upper()  # --teacher_strategy STRATEGY, --output_dir DIR
        return word if len(word) > 2 else "VALUE"

    def _get_help_string(self, action):
        text = action.help or ""
        if _is_switch(action) or action.default in (None, [], argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def _is_switch(action: argparse.Action) -> bool:
    """A flag given without a value: ``-h``, ``--no_<name>``, a bool field (``nargs="?"``, ``const=True``)."""
    return action.nargs == 0 or (action.nargs == "?" and action.const is True)


def _describe_off_switches(parser: argparse.ArgumentParser) -> None:
    """``--no_<name>`` (for a bool field that is on by default) gets its own help, "Turn off <the
    field's help>", instead of a copy of the field's help (which said the opposite of what it does);
    ``--<name>`` itself, which only restates the default, is not listed (it still parses)."""
    for off in parser._actions:
        if off.nargs == 0 and off.option_strings and off.option_strings[0] == f"--no_{off.dest}":
            on = next(a for a in parser._actions if a.dest == off.dest and a is not off)
            off.help = f"Turn off {on.help}"
            on.help = argparse.SUPPRESS


def build_parser(command: str):
    """The ``HfArgumentParser`` of one command: the five groups of :data:`ARGUMENT_GROUPS`."""
    from transformers import HfArgumentParser

    needs = "" if command == "demo" else " --dataset DATASET"
    parser = HfArgumentParser(
        ARGUMENT_GROUPS,
        prog=f"hf-task-distill {command}",
        usage=(
            f"hf-task-distill {command}{needs} [flags]\n"
            f"       hf-task-distill {command} --output_dir RUN [flags]   (a run that exists: its "
            "config.json, with these flags on top)\n"
            f"       hf-task-distill {command} config.yaml|.json"
        ),
        description=command_table()[command][0],
        formatter_class=_HelpFormatter,
    )
    _describe_off_switches(parser)
    return parser


def parse_config(command: str, argv: list[str]) -> PipelineConfig:
    """Flags (or one .json/.yaml path) into a :class:`PipelineConfig`.

    On an existing run (``--output_dir`` holds a ``config.json``) the run's recorded settings are the
    base and only the flags given on this command line change them; a new run starts from the
    defaults (the demo's own for ``demo``).
    """
    parser = build_parser(command)
    parser.error = _one_line_error  # argparse would print the whole usage (dozens of flags) first
    defaults = demo_defaults() if command == "demo" else {}
    if any(arg in ("-h", "--help") for arg in argv):
        parser.set_defaults(**defaults)
        parser.parse_args(args=argv)  # prints the help (with the command's defaults) and exits
    given: dict[str, Any] = {}
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        if not os.path.isfile(argv[0]):
            raise CommandLineError(f"config file {argv[0]} does not exist")
        given, argv = _read_config_file(argv[0]), argv[1:]  # flags after the file change its values
    given.update(_given_flags(parser, argv))
    named = "output_dir" in given
    output_dir = given.get("output_dir", defaults.get("output_dir", RunArguments.output_dir))
    try:
        saved = saved_run_settings(output_dir)
    except ValueError as err:
        raise CommandLineError(str(err)) from err
    base = defaults
    if saved is not None:
        if not named and "dataset" in given and given["dataset"] != saved.get("dataset"):
            raise CommandLineError(
                f"no --output_dir given, and the default {output_dir} holds another run (on dataset "
                f"'{saved.get('dataset')}', this command names '{given['dataset']}'): give this run its own "
                "--output_dir"
            )
        _log_continuation(output_dir, saved, given)
        base = saved
    try:  # the run folder is the one whose settings were read, whatever the defaults say
        config = PipelineConfig.from_dict({**base, **given, "output_dir": output_dir})
    except TypeError as err:  # a config file's value of the wrong type (flags are typed by argparse)
        raise CommandLineError(str(err)) from err
    if given.get("push_to_hub") and command != "demo":
        _check_command_publishes(command, config)
    return config


def _check_command_publishes(command: str, config: PipelineConfig) -> None:
    """``--push_to_hub`` given to a command without the publish stage (``evaluate``) would be ignored."""
    from .stages import stages_for_command

    if "publish" not in stages_for_command(config, command_table()[command][1]):
        raise CommandLineError(
            f"--push_to_hub uploads in the publish stage, which `{command}` does not run: add it to "
            "`hf-task-distill run`, or push the finished run with `hf-task-distill push`"
        )


def _one_line_error(message: str):
    # argparse names a flag by all its spellings ("--per_class/--per-class"); the help shows one
    message = re.sub(r"(--\w+)/(--[\w-]+)", _one_spelling, message)
    raise CommandLineError(f"{message} (--help lists every flag)")


def _one_spelling(match: re.Match) -> str:
    underscored, dashed = match[1], match[2]
    return underscored if dashed == underscored.replace("_", "-") else match[0]


def _given_flags(parser, argv: list[str]) -> dict[str, Any]:
    """Only the settings named on the command line, typed by the parser (nothing filled from defaults)."""
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    return vars(parser.parse_args(args=argv))


def _read_config_file(path: str) -> dict[str, Any]:
    """A .json/.yaml config file as a mapping of settings; a file that does not parse is named, in one line."""
    import json

    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        # the parsers' own messages name a line and column but not the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CommandLineError(f"config file {path} is not a mapping of flags to values ({first})") from err
    if not isinstance(values, dict):
        raise CommandLineError(
            f"config file {path} is not a mapping of flags to values (it holds a {type(values).__name__})"
        )
    return values


def _log_continuation(output_dir: str, saved: dict[str, Any], given: dict[str, Any]) -> None:
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in given.items() if k in saved and saved[k] != v]
    logger.info(
        "continuing the run in %s with the settings in its config.json%s",
        display_path(output_dir),
        f"; changed by this command: {', '.join(changed)}" if changed else "",
    )


def _check_writable(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise CommandLineError(f"cannot write to the output directory {path}: {err.strerror or err}") from err


def run_command(command: str, config: PipelineConfig) -> str:
    """Run a command's stages and return the one-screen summary."""
    from .pipeline import Pipeline

    _check_writable(config.run.output_dir)
    if command == "demo":
        from .demo import run_demo

        return run_demo(config)
    from .stages import get_stage, stages_for_command

    stage = command_table()[command][1]
    if stage is not None:
        for name, value in get_stage(stage).command_settings.items():  # push: push_to_hub
            setattr(_group_of(config, name), name, value)
    if config.run.push_to_hub and not config.run.hub_model_id:
        raise CommandLineError(f"{command} needs --hub_model_id (e.g. me/mobilevitv2-cub)")
    pipeline = Pipeline(config)
    if command == "evaluate" and _is_finished_student(pipeline):
        return _evaluate_finished_student(pipeline)
    if stage is not None and get_stage(stage).command_needs_finished:
        _check_finished(command, pipeline, [n for n in stages_for_command(config, stage) if n != stage])
    pipeline.run(stages_for_command(config, stage))
    return pipeline.summary()


def _check_finished(command: str, pipeline, upstream: list[str]) -> None:
    """Refuse ``command`` before it computes or uploads anything when a stage in ``upstream`` is not complete."""
    missing = [name for name in upstream if pipeline.manifest(name) is None]
    if missing:
        raise CommandLineError(
            f"{command} publishes a finished run, and the run in {display_path(pipeline.run_dir)} has not completed "
            f"stage{'s' if len(missing) > 1 else ''} {', '.join(missing)}: finish it with `hf-task-distill run` "
            f"and the same flags first (or add --push_to_hub to that run command)"
        )


def _is_finished_student(pipeline) -> bool:
    """Whether ``--student`` is already a classifier of the task's classes, in the task's order (a
    published student such as ``me/mobilevitv2-cub``): ``evaluate`` then scores it as it is.

    A finished classifier of other classes (or of the same in another order) is a starting point:
    ``evaluate`` runs the pipeline's stages to distil a student of the task's classes from it, and a
    warning names the differences (scoring it as it is would compare the wrong names).
    """
    from .stages.evaluate import finished_student_labels

    student, task = pipeline.config.student.student, pipeline.task
    labels = finished_student_labels(student, task.task_type)
    wanted = list(task.label_names)
    if labels is None or labels == wanted:
        return labels is not None
    if sorted(labels) == sorted(wanted):
        how = f"the same {len(wanted)} classes in another order (it has {labels[:3]}..., the task {wanted[:3]}...)"
    else:
        only_student = [n for n in labels if n not in wanted][:3]
        only_task = [n for n in wanted if n not in labels][:3]
        how = (
            f"{len(labels)} classes where '{task.name}' has {len(wanted)} (only the student's: "
            f"{only_student or 'none'}; only the task's: {only_task or 'none'})"
        )
    logger.warning(
        "--student %s is a finished classifier of %s: it is not scored as it is; evaluate runs the "
        "pipeline's stages to distil a student of the task's classes from it",
        student, how,
    )  # fmt: skip
    return False


def _evaluate_finished_student(pipeline) -> str:
    """``evaluate --student <finished classifier>``: its metrics on the evaluation split, no training;
    ``results.json`` in ``<output_dir>/evaluate-student``."""
    from .stages import get_stage
    from .stages.evaluate import evaluate_finished_student

    student = pipeline.config.student.student
    logger.info(
        "--student %s already classifies the %d classes of '%s': evaluating it as it is (no teacher, "
        "no training; `hf-task-distill run` distils from it instead)",
        student, pipeline.task.num_labels, pipeline.task.name,
    )  # fmt: skip
    directory = os.path.join(pipeline.run_dir, "evaluate-student")
    outputs = evaluate_finished_student(pipeline.context, directory)
    return "\n".join([*get_stage("evaluate").report(outputs), "", f"Results: {directory}"])


def _group_of(config: PipelineConfig, name: str):
    """The settings group of ``config`` that has the field ``name``."""
    import dataclasses

    for group in dataclasses.fields(config):
        value = getattr(config, group.name)
        if name in {f.name for f in dataclasses.fields(value)}:
            return value
    raise KeyError(f"no setting named '{name}'")


def main(argv: list[str] | None = None) -> int:
    """The ``hf-task-distill`` console script; returns the exit status.

    0 done; 2 a problem with what was asked for (one ``hf-task-distill: error:`` line); 130
    interrupted (Ctrl-C), with one line saying that the same command again resumes; 1 stdout was
    closed by its reader (``| head``), quietly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _close_progress_bars()
        if os.environ.get("RANK", "0") == "0":  # one line for a launch of several processes
            command = shlex.join(["hf-task-distill", *argv])
            print(
                "hf-task-distill: interrupted; run the same command again to resume (finished stages are "
                f"kept; the interrupted one continues from its last checkpoint, if it wrote one): {command}",
                file=sys.stderr,
            )
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return 1


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"hf-task-distill {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOL_COMMANDS:
        return _run_tool(command, rest)
    if command not in command_table():
        print(f"hf-task-distill: error: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    from .console import ConsoleSession  # torch and transformers load from here on, not for -h / --version
    from .pipeline import RunInUse, StageNotReady

    with ConsoleSession(main_process=os.environ.get("RANK", "0") == "0") as console:
        try:
            config = parse_config(command, rest)
            _check_writable(config.run.output_dir)
            console.log_to(config.run.output_dir)
            summary = run_command(command, config)
        except (CommandLineError, StageNotReady, RunInUse, ValueError, FileNotFoundError, ImportError) as err:
            return _report_error("hf-task-distill", str(err))
        except OSError as err:  # e.g. a model or dataset that cannot be found (Hub offline, typo)
            if isinstance(err, BrokenPipeError):
                raise
            return _report_error("hf-task-distill", _first_line(err))
    from .devices import end_processes, process_state

    if process_state().is_main_process:
        print(summary)
    end_processes()
    return 0


def _run_tool(command: str, argv: list[str]) -> int:
    """A command of :mod:`hf_task_distill.commands`: its own flags, one error line."""
    import importlib

    from .console import ConsoleSession
    from .pipeline import RunInUse, StageNotReady

    module = importlib.import_module(f".commands.{command.replace('-', '_')}", __package__)
    main_process = os.environ.get("RANK", "0") == "0"
    with ConsoleSession(main_process=main_process) as console:
        try:
            parse = getattr(module, "parse", None) or module.build_parser().parse_args
            args = parse(argv)  # --help and argparse's usage errors exit here
            if hasattr(module, "log_folder"):
                _check_writable(module.log_folder(args))
                console.log_to(module.log_folder(args))
            summary = module.run(args)
        except (
            CommandLineError,
            StageNotReady,
            RunInUse,
            ValueError,
            FileNotFoundError,
            ImportError,
            OSError,
        ) as err:
            if isinstance(err, BrokenPipeError):
                raise
            return _report_error(f"hf-task-distill {command}", _first_line(err))
    if main_process:
        print(summary)
    return 0


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _report_error(prefix: str, message: str) -> int:
    """One error line on stderr, on a line of its own (not after a progress bar's carriage return);
    returns the exit status 2."""
    _close_progress_bars()
    print(f"{prefix}: error: {message}", file=sys.stderr)
    return 2


def _close_progress_bars() -> None:
    """End open progress bars on their own lines, so that a last message is the last line."""
    tqdm_module = sys.modules.get("tqdm")  # no tqdm imported: no bars
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the message
            pass


def _discard_stdout() -> None:
    """After the reader of stdout went away: send what is still buffered to /dev/null, so that
    Python's flush at exit does not raise BrokenPipeError again (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
