"""One name and one default per option: every flag of `hf-task-distill run` against its API field.

The command line's groups (``config.ARGUMENT_GROUPS``) map onto the API's dataclasses (and, for the
task, :meth:`TargetTask.with_label_budget` and :func:`load_target_task`). A flag must find a field of the same name, type and
default there, or be one of the documented exceptions below (docs/pipeline.md, "Flags and the
API"). Adding a flag whose API counterpart has another default fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import typing
import warnings

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_task_distill.cli import build_parser, parse_config
from hf_task_distill.config import (
    ARGUMENT_GROUPS,
    RunArguments,
    StudentArguments,
    TaskArguments,
    TeacherArguments,
    TransferArguments,
    stage_settings,
    stage_upstream,
)
from hf_task_distill.data.loading import TargetTask, load_target_task
from hf_task_distill.data.views import ViewAugmentation
from hf_task_distill.options import REMOVED_IN, RetrievalSettings
from hf_task_distill.retrieval.builder import RetrievalConfig
from hf_task_distill.teacher_cache import TeacherCacheConfig
from hf_task_distill.teacher_finetuning import TeacherFinetuningArguments
from hf_task_distill.trainer import DistillationArguments

#: Where each command-line group's flags live in the API.
API_OF_GROUP = {
    TaskArguments: (TargetTask.with_label_budget, load_target_task),
    TeacherArguments: (TeacherFinetuningArguments,),
    TransferArguments: (RetrievalConfig,),
    StudentArguments: (DistillationArguments, TeacherCacheConfig),
    RunArguments: (TeacherFinetuningArguments, DistillationArguments, RetrievalConfig, TeacherCacheConfig),
}

#: The run's own settings: which data and models, and where the run lives. No API dataclass holds
#: them; the API takes them as the arguments of its calls (``load_target_task(source)``,
#: ``TeacherFinetuner(model, task, trust_remote_code=)``, ``RetrievalTransferSetBuilder(encoder)
#: .build(pool, pool_embeddings_dir=)``, ``create_student(name, image_size=, crop_pct=)``, ``Pipeline``).
PIPELINE_ONLY = {
    "dataset",
    "test_fraction",
    "teacher",
    "trust_remote_code",
    "transfer",
    "pool",
    "pool_streaming",
    "pool_embeddings_dir",
    "retrieval_encoder",
    "student",
    "pretrained_student",
    "student_image_size",
    "student_crop_pct",
    "baseline",
    "output_dir",
    "overwrite_stage",
    "hub_dataset_id",
    "export_formats",  # the export stage's formats: export_student(folder, formats) takes them as an argument
}

#: Flags whose API field has another name (and possibly default): flag -> (API, field, reason).
#: The CLI is one flat namespace over three trainings, so a stage's ``TrainingArguments`` field
#: carries the stage's prefix there; in the API each stage has its own ``TrainingArguments``, which
#: keep transformers' names and defaults (a Trainer script that switches to them changes nothing).
RENAMED_IN_THE_CLI = {
    "budget_seed": (TargetTask.with_label_budget, "seed", "the task's seed, apart from the training --seed"),
    "teacher_epochs": (TeacherFinetuningArguments, "num_train_epochs", "stage 1's TrainingArguments"),
    "teacher_learning_rate": (TeacherFinetuningArguments, "learning_rate", "stage 1's TrainingArguments"),
    "distill_epochs": (DistillationArguments, "num_train_epochs", "stage 3's TrainingArguments"),
    "distill_learning_rate": (DistillationArguments, "learning_rate", "stage 3's TrainingArguments"),
    "finetune_epochs": (TrainingArguments, "num_train_epochs", "stage 4's TrainingArguments"),
    "finetune_learning_rate": (TrainingArguments, "learning_rate", "stage 4's TrainingArguments"),
    "teacher_cache_views": (
        TeacherCacheConfig,
        "num_views",
        "0 on the CLI means no cache (in the API: no TeacherCacheConfig); the cache's own default is 4",
    ),
    "teacher_cache_top_k": (TeacherCacheConfig, "top_k", "the teacher_cache_ prefix names the cache"),
    "hub_private": (TrainingArguments, "hub_private_repo", "a switch for every repo the run creates"),
}

#: Flags whose same-named TrainingArguments field keeps transformers' default (and type) in the API,
#: while the CLI sets the recipe's: flag -> reason.
TRAINER_DEFAULTS = {
    "seed": "transformers' 42; the pipeline seeds every stage with --seed, 0",
    "logging_steps": "transformers' 500 steps; the pipeline's short stages log every 10",
    "report_to": "transformers takes a list too; the CLI takes one name or 'all'/'none'",
}


def _api_fields(api) -> dict[str, tuple[typing.Any, typing.Any]]:
    """``{name: (type, default)}`` of a dataclass's fields or a function's keyword parameters."""
    hints = typing.get_type_hints(api)
    if dataclasses.is_dataclass(api):
        return {f.name: (hints.get(f.name), _default(f)) for f in dataclasses.fields(api)}
    params = inspect.signature(api).parameters.values()
    return {p.name: (hints.get(p.name), p.default) for p in params if p.kind is p.KEYWORD_ONLY}


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _cli_flags() -> list[tuple[type, str, typing.Any, typing.Any]]:
    """``(group, flag, type, default)`` of every flag of ``run --help``, from the parser cli.py builds."""
    parser = build_parser("run")
    dests = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    flags = []
    for group in ARGUMENT_GROUPS:
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            assert f.name in dests, f"--{f.name} is a field of {group.__name__} but not a flag"
            flags.append((group, f.name, hints[f.name], _default(f)))
            dests.discard(f.name)
    assert not dests, f"flags of no group: {sorted(dests)}"
    return flags


def test_the_exceptions_name_real_flags_and_fields():
    flags = {name for _, name, _, _ in _cli_flags()}
    for name in (*PIPELINE_ONLY, *RENAMED_IN_THE_CLI, *TRAINER_DEFAULTS):
        assert name in flags, f"the allow-list names --{name}, which is no longer a flag: remove it"
    for flag, (api, field, reason) in RENAMED_IN_THE_CLI.items():
        assert field in _api_fields(api), f"--{flag}: {getattr(api, '__qualname__', api)} has no {field}"
        assert reason
    assert not set(PIPELINE_ONLY) & set(RENAMED_IN_THE_CLI)


@pytest.mark.parametrize("flag", [f for _, f, _, _ in _cli_flags()])
def test_every_flag_has_its_api_field_with_the_same_name_type_and_default(flag):
    group, _, cli_type, cli_default = next(entry for entry in _cli_flags() if entry[1] == flag)
    if flag in PIPELINE_ONLY or flag in RENAMED_IN_THE_CLI:
        return  # documented above; test_the_exceptions_name_real_flags_and_fields checks the list
    matches = [(api, _api_fields(api)[flag]) for api in API_OF_GROUP[group] if flag in _api_fields(api)]
    assert matches, (
        f"--{flag} ({group.__name__}) has no field of that name in "
        f"{', '.join(getattr(a, '__qualname__', str(a)) for a in API_OF_GROUP[group])}: give the API field "
        "the flag's name, or document the exception in tests/test_options.py and docs/pipeline.md"
    )
    for api, (api_type, api_default) in matches:
        name = getattr(api, "__qualname__", str(api))
        if flag in TRAINER_DEFAULTS and isinstance(api, type) and issubclass(api, TrainingArguments):
            continue  # transformers' default, kept on purpose (TRAINER_DEFAULTS says why)
        assert api_default == cli_default, (
            f"--{flag} defaults to {cli_default!r}, {name}.{flag} to {api_default!r}"
        )
        assert api_type == cli_type, f"--{flag} is {cli_type}, {name}.{flag} is {api_type}"


def test_view_augmentation_takes_the_flags_defaults_under_timms_names():
    """ViewAugmentation keeps timm's names (``scale``, ``hflip``); its defaults are the flags'."""
    view = ViewAugmentation()
    assert view.scale == (RunArguments.crop_min_scale, 1.0)
    assert view.hflip == RunArguments.hflip_probability
    assert TeacherFinetuningArguments.crop_min_scale == RunArguments.crop_min_scale


def test_the_transfer_group_and_retrieval_config_share_one_definition():
    shared = {f.name: f for f in dataclasses.fields(RetrievalSettings)}
    assert {"min_similarity", "min_teacher_confidence", "recall_target", "memory_budget_gb"} <= set(shared)
    for cls in (TransferArguments, RetrievalConfig):
        assert issubclass(cls, RetrievalSettings)
        mine = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in shared.items():
            assert mine[name].default == f.default and mine[name].metadata == f.metadata, (cls, name)


def test_the_retrieval_flags_reach_the_builders_config_and_the_fingerprint(tmp_path):
    pytest.importorskip("faiss")
    config = parse_config(
        "run",
        [
            *("--dataset", "digits", "--output_dir", str(tmp_path / "run"), "--transfer", "retrieval"),
            *("--pool", str(tmp_path), "--per_query_k", "3", "--min_similarity", "0.2"),
            *("--min_teacher_confidence", "0.5", "--recall_target", "0.9", "--memory_budget_gb", "2"),
        ],
    )
    retrieval = config.transfer.retrieval_config(batch_size=8, seed=1)
    assert (retrieval.min_similarity, retrieval.min_teacher_confidence) == (0.2, 0.5)
    assert (retrieval.recall_target, retrieval.memory_budget_gb) == (0.9, 2.0)
    assert (retrieval.per_query_k, retrieval.batch_size, retrieval.seed) == (3, 8, 1)
    settings = stage_settings(config, "transfer")
    assert {"min_similarity": 0.2, "min_teacher_confidence": 0.5}.items() <= settings.items()
    assert {"recall_target": 0.9, "memory_budget_gb": 2.0}.items() <= settings.items()
    assert stage_upstream(config, "transfer") == ("teacher",)  # the teacher's confidence filters


def test_a_retrieval_run_recorded_before_the_new_flags_keeps_its_fingerprint(tmp_path):
    pytest.importorskip("faiss")
    argv = ["--dataset", "digits", "--output_dir", str(tmp_path / "run"), "--transfer", "retrieval"]
    config = parse_config("run", [*argv, "--pool", str(tmp_path), "--per_query_k", "3"])
    settings = stage_settings(config, "transfer")
    assert not {"min_similarity", "min_teacher_confidence", "recall_target", "memory_budget_gb"} & set(
        settings
    )
    assert stage_upstream(config, "transfer") == ()


@pytest.mark.parametrize("flag", ["--min_similarity", "--min_teacher_confidence", "--memory_budget_gb"])
def test_a_retrieval_filter_without_retrieval_is_an_error(flag, tmp_path):
    with pytest.raises(ValueError, match=rf"{flag} applies to --transfer retrieval only"):
        parse_config("run", ["--dataset", "digits", "--output_dir", str(tmp_path), flag, "0.5"])


# -- renamed options: the old name works for one release, with a FutureWarning naming the new one --
RENAMED = [
    (DistillationArguments, "loss_name", "distill_loss", "kd"),
    (TeacherFinetuningArguments, "strategy", "teacher_strategy", "linear"),
    (TeacherFinetuningArguments, "layer_decay", "teacher_layer_decay", 0.5),
    (TeacherFinetuningArguments, "probe_epochs", "teacher_probe_epochs", 7),
    (RetrievalConfig, "budget", "transfer_budget", 12),
]


def _make(cls, **kwargs):
    if issubclass(cls, TrainingArguments):
        kwargs.update(output_dir="unused", report_to="none")
    return cls(**kwargs)


@pytest.mark.parametrize(("cls", "old", "new", "value"), RENAMED, ids=[r[1] for r in RENAMED])
def test_an_old_keyword_still_works_and_warns_with_the_new_name(cls, old, new, value):
    with pytest.warns(FutureWarning, match=rf"'{old}' is renamed '{new}'.*{REMOVED_IN}"):
        made = _make(cls, **{old: value})
    assert getattr(made, new) == value and getattr(made, old) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new name: no warning
        assert getattr(_make(cls, **{new: value}), new) == value


@pytest.mark.parametrize(("cls", "old", "new", "value"), RENAMED, ids=[r[1] for r in RENAMED])
def test_an_old_flag_and_an_old_config_key_still_parse_and_warn(cls, old, new, value, tmp_path):
    """A script's ``HfArgumentParser`` over the API dataclass: ``--old`` and a JSON file's ``old`` key."""
    parser = HfArgumentParser(cls)
    assert f"--{old}" not in parser.format_help()  # hidden from --help, still parsed
    trainer = {"output_dir": "unused", "report_to": "none"} if issubclass(cls, TrainingArguments) else {}
    argv = [text for key, v in trainer.items() for text in (f"--{key}", v)]
    with pytest.warns(FutureWarning, match=f"'{old}' is renamed '{new}'"):
        (made,) = parser.parse_args_into_dataclasses(args=[*argv, f"--{old}", str(value)])
    assert getattr(made, new) == value
    path = tmp_path / "args.json"
    path.write_text(json.dumps({old: value, **trainer}))
    with pytest.warns(FutureWarning, match=f"'{old}' is renamed '{new}'"):
        (made,) = parser.parse_json_file(str(path))
    assert getattr(made, new) == value


def test_an_option_given_under_both_names_with_two_values_is_an_error():
    with pytest.raises(ValueError, match=r"'loss_name' \(deprecated\) = 'kd' and 'distill_loss' = 'ce'"):
        with pytest.warns(FutureWarning):
            _make(DistillationArguments, loss_name="kd", distill_loss="ce")


def test_the_distillation_loss_has_one_name_and_the_papers_default():
    assert DistillationArguments.distill_loss == StudentArguments.distill_loss == "function_matching"
    args = _make(DistillationArguments)
    assert args.distill_loss == "function_matching"
    with pytest.raises(
        ValueError, match="function_matching uses the teacher as the only target.*distill_loss='kd'"
    ):
        _make(DistillationArguments, ce_weight=0.5)


def test_renamed_options_are_documented_with_their_release():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "pipeline.md").read_text(encoding="utf-8")
    for cls, old, new, _ in RENAMED:
        assert f"| `{cls.__name__}` | `{old}` | `{new}` | {REMOVED_IN} |" in text, (cls.__name__, old)
    for flag in (*RENAMED_IN_THE_CLI, *TRAINER_DEFAULTS):
        assert f"`--{flag}`" in text, f"--{flag}'s exception is not in docs/pipeline.md"


def test_hidden_old_names_do_not_show_in_api_help():
    for cls in {c for c, *_ in RENAMED}:
        for f in dataclasses.fields(cls):
            if f.name in getattr(cls, "_renamed", {}):
                assert f.metadata.get("help") is argparse.SUPPRESS and f.default is None, (cls, f.name)
