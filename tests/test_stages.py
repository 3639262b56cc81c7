"""Stages as objects (hf_task_distill.stages): the registry, the fingerprints the built-in stages
have always had, the commands derived from them, and a stage added from one file."""

from __future__ import annotations

import json
import os

import pytest

from hf_task_distill.config import STAGES, PipelineConfig
from hf_task_distill.stages import (
    Stage,
    StageResult,
    available_stages,
    get_stage,
    register_stage,
    stages_for_command,
    unregister_stage,
)

TASK = ["budget_seed", "dataset", "fraction", "per_class", "test_fraction"]
TRAINING = ["batch_size", "bf16", "crop_min_scale", "fp16", "hflip_probability", "seed"]
STUDENT = ["pretrained_student", "student", "student_image_size"]
TEACHER = [
    "teacher",
    "teacher_epochs",
    "teacher_layer_decay",
    "teacher_learning_rate",
    "teacher_probe_epochs",
]
DISTILL = ["distill_epochs", "distill_learning_rate", "distill_loss", "teacher_cache_top_k"]
DISTILL += ["teacher_cache_views", "temperature"]
FINETUNE = ["finetune_epochs", "finetune_learning_rate"]
RETRIEVAL = ["leakage_threshold", "per_query_k", "pool", "pool_streaming", "retrieval_encoder"]
RETRIEVAL += ["seed", "transfer", "transfer_budget"]
PUBLISH = ["hub_dataset_id", "hub_model_id", "hub_private", "push_to_hub"]

#: The settings (and upstream stages) each stage's fingerprint was made of before stages became
#: objects, recorded from that version: a run finished then must continue, not be refused as changed.
EARLIER_VERSION = {
    "teacher": (TASK + TRAINING + TEACHER + ["teacher_strategy"], []),
    "transfer": (["dataset", "transfer"], []),
    "distill": (STUDENT + TRAINING + DISTILL, ["teacher", "transfer"]),
    "baseline": (TASK + STUDENT + TRAINING + FINETUNE, []),
    "finetune": (TASK + TRAINING + FINETUNE, ["distill"]),
    "evaluate": (TASK, ["teacher", "distill", "finetune", "baseline"]),
    "publish": (PUBLISH, ["transfer", "finetune", "evaluate"]),
}


def _config(tmp_path, **values):
    return PipelineConfig.from_dict({"dataset": "digits", "output_dir": str(tmp_path / "run"), **values})


def test_the_built_in_stages_are_registered_in_run_order():
    assert available_stages() == STAGES
    assert [n for n in STAGES if get_stage(n).recomputed_freely] == ["evaluate", "export", "publish"]
    with pytest.raises(ValueError, match=r"unknown stage 'distil'; stages are teacher, transfer, distill"):
        get_stage("distil")


def test_fingerprint_settings_are_those_of_the_earlier_version(tmp_path):
    config = _config(tmp_path)
    for name, (settings, upstream) in EARLIER_VERSION.items():
        stage = get_stage(name)
        assert sorted(stage.settings(config)) == sorted(settings), name
        assert list(stage.upstream(config)) == upstream, name
        flat = config.to_dict()
        assert all(stage.settings(config)[k] == flat[k] for k in settings if k != "retrieval_encoder")


@pytest.mark.parametrize(
    ("values", "stage", "expected"),
    [
        ({"teacher_strategy": "none", "teacher": "mini-vfm"}, "teacher", ["teacher", "teacher_strategy"]),
        ({"transfer": "random", "pool": "POOL", "transfer_budget": 10}, "transfer", None),
        ({"transfer": "retrieval", "pool": "POOL", "per_query_k": 3}, "transfer", TASK + RETRIEVAL),
        ({"baseline": False}, "evaluate", TASK),
    ],
)
def test_fingerprint_settings_by_mode_are_those_of_the_earlier_version(tmp_path, values, stage, expected):
    pool = tmp_path / "pool"
    pool.mkdir()
    values = {k: str(pool) if v == "POOL" else v for k, v in values.items()}
    config = _config(tmp_path, **values)
    expected = expected or ["pool", "seed", "transfer", "transfer_budget"]
    assert sorted(get_stage(stage).settings(config)) == sorted(expected)
    if values.get("transfer") == "retrieval":  # the encoder defaults to the teacher before finetuning
        assert get_stage(stage).settings(config)["retrieval_encoder"] == config.teacher.teacher
    if "baseline" in values:
        assert get_stage("evaluate").upstream(config) == ("teacher", "distill", "finetune")


def test_each_command_runs_its_stage_and_what_it_depends_on(tmp_path):
    """What the CLI's hand-written command table ran before, now derived from the stages."""
    from hf_task_distill.cli import command_table

    table = command_table()
    assert list(table) == ["run", "finetune-teacher", "build-transfer-set", "distill", "finetune"] + [
        "evaluate",
        "push",
        "demo",
    ]
    config = _config(tmp_path)
    runs = {command: stages_for_command(config, stage) for command, (_, stage) in table.items()}
    assert runs["finetune-teacher"] == ["teacher"] and runs["build-transfer-set"] == ["transfer"]
    assert runs["distill"] == ["teacher", "transfer", "distill"]
    assert runs["finetune"] == ["teacher", "transfer", "distill", "finetune"]
    assert runs["evaluate"] == [s for s in STAGES if s not in ("export", "publish")]
    assert runs["push"] == runs["run"] == [s for s in STAGES if s != "export"]  # export is off by default
    exporting = _config(tmp_path, export_formats=["onnx"])
    assert stages_for_command(exporting, "publish") == stages_for_command(exporting, None) == list(STAGES)
    assert "export" not in stages_for_command(exporting, "evaluate")
    no_baseline = _config(tmp_path, baseline=False)
    assert "baseline" not in stages_for_command(no_baseline, "evaluate") + stages_for_command(
        no_baseline, None
    )


# ---- a stage added from this file alone ----------------------------------------------------------
class ClassCountStage(Stage):
    """A toy stage: counts the labelled images per class after the label budget."""

    name = "class_count"
    command = "count-classes"
    command_help = "Count the labelled images per class."
    settings_read = ("dataset", "per_class", "seed")

    def task_splits(self, config, eval_split):
        return ("train",)

    def run(self, context, directory):
        from hf_task_distill.ledger import LedgerEntry

        labels = context.task["train"][context.task.label_column]
        counts = {name: labels.count(i) for i, name in enumerate(context.task.label_names)}
        path = os.path.join(directory, "counts.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(counts, f)
        entry = LedgerEntry(self.name, "counting", "none", len(labels), 0, "cpu")
        return StageResult({"counts": path, "files": [path], "classes": len(counts)}, [entry])


@pytest.fixture
def class_count_stage():
    register_stage(ClassCountStage, after="transfer")
    yield ClassCountStage
    unregister_stage(ClassCountStage.name)


def test_a_stage_added_from_one_file_runs_is_skipped_and_guards_its_settings(tmp_path, class_count_stage):
    from hf_task_distill.pipeline import Pipeline, StageSettingsChanged

    assert available_stages()[:3] == ("teacher", "transfer", "class_count")
    config = _config(tmp_path, per_class=3)
    first = Pipeline(config).run(["class_count"])["class_count"]
    with open(first["outputs"]["counts"], encoding="utf-8") as f:
        assert set(json.load(f).values()) == {3}  # the label budget, per class
    assert first["outputs"]["classes"] == 10 and first["ledger"]["entries"][0]["images"] == 30
    assert "class_count" in first["ledger"]["wall_s"]
    assert Pipeline(config).run(["class_count"])["class_count"]["run_id"] == first["run_id"]  # skipped
    with pytest.raises(StageSettingsChanged, match=r"stage class_count finished with per_class=3"):
        Pipeline(_config(tmp_path, per_class=4)).run(["class_count"])
    redo = _config(tmp_path, per_class=4, overwrite_stage=["class_count"])  # the registry's names count
    outputs = Pipeline(redo).run(["class_count"])["class_count"]["outputs"]
    assert outputs["classes"] == 10
    # a path the stage returns, under any key and at any depth, is stored relative to the stage folder:
    # after the redo (built beside the finished result, then swapped in) it names the file in place
    stage_folder = os.path.join(str(tmp_path / "run"), "class_count")
    assert outputs["files"] == [os.path.join(stage_folder, "counts.json")] and os.path.isfile(
        outputs["files"][0]
    )
    with open(os.path.join(stage_folder, "manifest.json"), encoding="utf-8") as f:
        assert json.load(f)["outputs"]["files"] == ["./counts.json"]


def test_a_stage_added_from_one_file_gets_its_command(tmp_path, class_count_stage, capsys):
    from hf_task_distill.cli import main

    assert main(["--help"]) == 0 and "count-classes" in capsys.readouterr().out
    run = str(tmp_path / "run")
    assert main(["count-classes", "--dataset", "digits", "--per_class", "2", "--output_dir", run]) == 0
    assert os.path.isfile(os.path.join(run, "class_count", "manifest.json"))
    assert not os.path.exists(os.path.join(run, "teacher"))  # it depends on no other stage


def test_registering_a_stage_twice_or_after_an_unknown_one_is_refused(class_count_stage):
    with pytest.raises(ValueError, match="a stage named 'class_count' is already registered"):
        register_stage(ClassCountStage)

    class Other(ClassCountStage):
        name = "other"
        command = None  # its parent's command is taken (a second stage cannot have it)

    with pytest.raises(ValueError, match=r"register_stage\(after='nope'\): no such stage"):
        register_stage(Other, after="nope")
    assert "other" not in available_stages()


# ---- what the registry refuses (found by the newcomer try of issue 17) ---------------------------
class _Reads(Stage):
    name = "reads_transfer"

    def upstream(self, config):
        return ("transfer",)

    def run(self, context, directory):
        return StageResult({})


def _stage(name="toy", **attributes):
    return type("Toy", (Stage,), {"name": name, "run": lambda self, c, d: StageResult({}), **attributes})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: _stage()(), TypeError, r"register_stage takes a Stage subclass, got <"),
        (lambda: type("NoRun", (Stage,), {"name": "norun"}), TypeError, "NoRun does not implement run"),
        (lambda: _stage("../escaped"), ValueError, r"Toy.name must be lowercase .* got '../escaped'"),
        (lambda: _stage(None), ValueError, "Toy.name must be lowercase"),
        (lambda: _stage("teacher"), ValueError, "a stage named 'teacher' is already registered"),
        (lambda: _stage(command="evaluate"), ValueError, "command 'evaluate' is already stage 'evaluate''s"),
        (lambda: _stage(command="run"), ValueError, "command 'run' is already the CLI's command"),
        (lambda: _stage(command="compare"), ValueError, "command 'compare' is already the CLI's command"),
    ],
)
def test_registering_a_malformed_stage_is_refused_with_the_reason(make, error, match):
    before = available_stages()
    with pytest.raises(error, match=match):
        register_stage(make())
    assert available_stages() == before


def test_the_packages_own_stages_and_unknown_names_cannot_be_unregistered():
    with pytest.raises(ValueError, match="'teacher' is one of the package's own stages"):
        unregister_stage("teacher")
    with pytest.raises(ValueError, match="no stage named 'nope' is registered"):
        unregister_stage("nope")
    assert available_stages() == STAGES


def test_a_settings_read_typo_names_the_setting(tmp_path):
    register_stage(_stage(settings_read=("seeed",)))
    try:
        with pytest.raises(
            ValueError, match=r"stage 'toy': settings_read names no setting: 'seeed' \(did you mean 'seed'"
        ):
            get_stage("toy").settings(_config(tmp_path))
    finally:
        unregister_stage("toy")


def test_stages_registered_after_the_same_stage_keep_their_order_and_a_stage_before_its_input_is_refused(
    tmp_path,
):
    from hf_task_distill.pipeline import Pipeline

    register_stage(_stage("first"), after="finetune")
    register_stage(_stage("second"), after="finetune")
    register_stage(_Reads, after="teacher")  # reads transfer, which runs after teacher: too early
    try:
        order = available_stages()
        assert (
            order.index("finetune") < order.index("first") < order.index("second") < order.index("evaluate")
        )
        with pytest.raises(ValueError, match=r"stage 'reads_transfer' reads stage 'transfer', which runs after it: "
                           r"register it with register_stage\(after='transfer'\)"):  # fmt: skip
            Pipeline(_config(tmp_path)).run(["reads_transfer"])
    finally:
        for name in ("first", "second", "reads_transfer"):
            unregister_stage(name)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ({"rows": 3}, r"stage 'toy': run\(\) must return a StageResult\(outputs, ledger\), got dict"),
        (StageResult({"model": object()}), r"stage 'toy': its outputs must be JSON"),
    ],
)
def test_a_stage_that_returns_something_a_manifest_cannot_hold_is_stopped(tmp_path, result, match):
    from hf_task_distill.pipeline import Pipeline

    register_stage(type("Bad", (Stage,), {"name": "toy", "run": lambda self, c, d: result}))
    try:
        with pytest.raises(TypeError, match=match):
            Pipeline(_config(tmp_path)).run(["toy"])
        assert not os.path.exists(tmp_path / "run" / "toy" / "manifest.json")
    finally:
        unregister_stage("toy")


def test_an_installed_plugin_adds_its_stage_and_command_to_the_console_script(tmp_path):
    """A package declares its module in the ``hf_task_distill.plugins`` entry-point group (in its
    pyproject: ``[project.entry-points."hf_task_distill.plugins"] mine = "mine.stages"``); the CLI
    imports it, so its stage's command runs like the package's own."""
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "mine_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "mine_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mine-plugin\nVersion: 0.1\n"
    )
    (site / "mine_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[hf_task_distill.plugins]\nmine = mine_stages\n"
    )
    (site / "mine_stages.py").write_text(
        "from hf_task_distill.stages import Stage, StageResult, register_stage\n\n"
        "@register_stage\nclass Hello(Stage):\n    name = 'hello'\n    command = 'say-hello'\n"
        "    command_help = 'Write hello.txt.'\n\n"
        "    def run(self, context, directory):\n"
        "        open(f'{directory}/hello.txt', 'w').write('hello')\n"
        "        return StageResult({'file': f'{directory}/hello.txt'})\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "hf_task_distill.cli"]
    usage = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=env)
    assert "say-hello" in usage.stdout and "Write hello.txt." in usage.stdout
    run = str(tmp_path / "run")
    done = subprocess.run(
        [*cli, "say-hello", "--dataset", "digits", "--output_dir", run],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(run, "hello", "hello.txt"), encoding="utf-8") as f:
        assert f.read() == "hello"
