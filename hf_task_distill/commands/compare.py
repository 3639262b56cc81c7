"""``hf-task-distill compare``: the paper's comparison on your task (see ``hf_task_distill.compare``).

    hf-task-distill compare --dataset my-photos/ --teacher facebook/dinov2-large --student mobilevitv2_100 \\
        --pool web-images/ --transfer_budget 20000 --label_budgets 5 10 --seeds 0 1 2 3 4 \\
        --pretrained_student_model timm/mobilevitv2_100.cvnets_in1k --output_dir runs/compare
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from . import TOOL_COMMANDS

OUTPUT_DIR = "runs/compare"


def build_parser():
    """The ``hf-task-distill compare`` parser: the pipeline's flags and ``CompareArguments``.

    The flags ``compare`` sets per cell and run (``COMPARE_OWNED``, ``--pretrained_student``) are hidden
    from ``--help``.

    Returns:
        `transformers.HfArgumentParser`: the parser.
    """
    from transformers import HfArgumentParser

    from ..cli import _describe_off_switches, _HelpFormatter
    from ..compare import COMPARE_OWNED, CompareArguments
    from ..config import ARGUMENT_GROUPS

    parser = HfArgumentParser(
        (*ARGUMENT_GROUPS, CompareArguments),
        prog="hf-task-distill compare",
        usage="hf-task-distill compare --dataset DATASET --teacher TEACHER --student STUDENT --pool POOL "
        "--transfer_budget N [flags]",
        description=TOOL_COMMANDS["compare"]
        + f" Set per cell and run, so not flags here: {', '.join('--' + f for f in COMPARE_OWNED)}, "
        "--pretrained_student. The same command again continues an interrupted comparison.",
        formatter_class=_HelpFormatter,
    )
    _describe_off_switches(parser)
    for action in parser._actions:  # the flags compare sets itself are refused, so not listed
        if action.dest in (*COMPARE_OWNED, "pretrained_student"):
            action.help = argparse.SUPPRESS
    parser.set_defaults(output_dir=OUTPUT_DIR)
    return parser


def parse(argv: list[str]):
    """The base pipeline settings and the comparison's own, from the flags given."""
    from ..cli import CommandLineError, _given_flags, _one_line_error
    from ..compare import COMPARE_OWNED, CompareArguments
    from ..config import PipelineConfig

    parser = build_parser()
    parser.error = _one_line_error
    if any(arg in ("-h", "--help") for arg in argv):
        parser.parse_args(args=argv)  # prints the help and exits
    given = _given_flags(parser, argv)
    owned = [f for f in (*COMPARE_OWNED, "pretrained_student") if f in given]
    if owned:
        hint = {
            "per_class": "--label_budgets",
            "seed": "--seeds",
            "budget_seed": "--seeds",
            "pretrained_student": "--pretrained_student_model",
        }
        raise CommandLineError(
            f"--{owned[0]} is set by compare for each cell and run"
            + (f"; use {hint[owned[0]]}" if owned[0] in hint else "")
        )
    own = {f.name for f in dataclasses.fields(CompareArguments)}
    compare_args = CompareArguments(**{k: v for k, v in given.items() if k in own})
    flat = {k: v for k, v in given.items() if k not in own}
    flat.setdefault("output_dir", OUTPUT_DIR)
    for needed in ("pool", "transfer_budget"):
        if needed not in flat:
            raise CommandLineError(
                f"compare needs --{needed}: every distillation method gets --transfer_budget unique images "
                "from --pool (retrieved for (d) and (g), a uniform sample for (b) and (c))"
            )
    base = PipelineConfig.from_dict({**flat, "transfer": "retrieval"})
    return base, compare_args


def log_folder(args) -> str:
    """Where the command's log file goes: the comparison's folder."""
    return args[0].run.output_dir


def run(args) -> str:
    """Run (or continue) the comparison; returns the report's markdown and where it was written."""
    from ..compare import Comparison, summarise, to_markdown, write_report
    from ..ledger import describe_device

    base, compare_args = args
    started = time.perf_counter()
    comparison = Comparison(base, compare_args)
    records = comparison.run()
    summary = summarise(records, list(comparison.methods))
    meta: dict[str, Any] = {
        "task": base.task.dataset,
        "teacher": base.teacher.teacher,
        "student": base.student.student,
        "pretrained_student": compare_args.pretrained_student_model,
        "transfer_budget": base.transfer.transfer_budget,
        "test_images": records[0]["test_images"],
        "wall_s": comparison.compute_seconds(),
        "this_command_s": round(time.perf_counter() - started, 1),
        "device": describe_device(),
        "pool_base_rate": comparison.pool_base_rate(),
        "settings": {**base.to_dict(), **dataclasses.asdict(compare_args)},
    }
    paths = write_report(comparison.output_dir, records, summary, meta)
    return to_markdown(summary, meta) + "\n" + "\n".join(f"{name}: {path}" for name, path in paths.items())
