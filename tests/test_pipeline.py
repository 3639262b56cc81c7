"""The pipeline end to end: stages, manifests, resume after a kill, the CLI, the compute ledger,
and the published folders checked with the real clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import LABELS, kill_after_first_checkpoint, make_colour_dataset, write_run_inputs
from datasets import Image as ImageFeature
from PIL import Image

from hf_task_distill.cli import main, parse_config
from hf_task_distill.config import PipelineConfig
from hf_task_distill.ledger import ComputeLedger, LedgerEntry, count_flops_per_image

CLI = [sys.executable, "-m", "hf_task_distill.cli"]


# -- compute ledger --------------------------------------------------------------------------------
class _LinearClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3 * 8 * 8, 10)

    def forward(self, pixel_values):
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.head(pixel_values.flatten(1)))


def test_flops_are_counted_on_the_real_model_not_guessed():
    model = _LinearClassifier()
    assert count_flops_per_image(model, 8) == 2 * 192 * 10  # one matmul: 2 FLOPs per multiply-add
    # training adds the weight gradient (another matmul); the input needs no gradient
    assert count_flops_per_image(model, 8, training=True) == 2 * (2 * 192 * 10)
    assert model.training and model.head.weight.grad is None  # mode restored, gradients untouched
    model.eval()
    count_flops_per_image(model, 8, training=True)
    assert not model.training

    from hf_task_distill.models import create_student

    student = create_student("test_resnet", LABELS, image_size=32)
    forward = count_flops_per_image(student, 32)
    assert forward == count_flops_per_image(student, 32)  # deterministic
    assert 2.0 <= count_flops_per_image(student, 32, training=True) / forward <= 3.0
    assert count_flops_per_image(student, 64) == pytest.approx(4 * forward, rel=0.05)  # scales with pixels


class _DepthwiseNet(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups)

    def forward(self, pixel_values):
        return self.depthwise(self.conv(pixel_values)).mean((2, 3))


@pytest.mark.parametrize("groups", [1, 64])
def test_training_flops_of_depthwise_convolutions_are_about_three_forwards(groups):
    """torch's own convolution-backward formula charges a depthwise conv ~groups x too much."""
    model = _DepthwiseNet(groups)
    forward = count_flops_per_image(model, 16)
    conv_forward = 2 * 3 * 9 * 64 * 16 * 16
    depthwise_forward = 2 * (64 // groups) * 9 * 64 * 16 * 16
    assert forward == conv_forward + depthwise_forward
    # the first conv needs only its weight gradient (its input is the image), the depthwise both
    assert count_flops_per_image(model, 16, training=True) == forward + conv_forward + 2 * depthwise_forward


def test_ledger_totals_per_stage_and_round_trips(tmp_path):
    ledger = ComputeLedger()
    ledger.add(LedgerEntry("distill", "teacher forward", "t", 1000, 2e9, "cpu"))
    ledger.add(LedgerEntry("distill", "student training", "s", 1000, 3e8, "cpu"))
    ledger.add(LedgerEntry("finetune", "student training", "s", 50, 3e8, "cpu"))
    ledger.wall_s.update(distill=12.0, finetune=1.5)
    totals = ledger.stage_totals()
    assert totals["distill"] == {"flops": 2.3e12, "wall_s": 12.0}
    assert ledger.total_flops == pytest.approx(2.3e12 + 1.5e10)
    ledger.save(tmp_path / "ledger.json")
    again = ComputeLedger.load(tmp_path / "ledger.json")
    assert again.as_dict() == ledger.as_dict()
    table = ledger.markdown()
    assert "| distill | teacher forward | t | 1,000 | 2 | 2 | 12.0 s | cpu |" in table
    assert "| **total** | | | | | **2.315** | 13.5 s | |" in table


# -- configuration -----------------------------------------------------------------------------------
def test_flags_json_and_yaml_give_the_same_config(tmp_path):
    flags = ["--dataset", "eurosat", "--per_class", "10", "--student", "fastvit_t8", "--distill_epochs", "3"]
    from_flags = parse_config("run", flags)
    values = {"dataset": "eurosat", "per_class": 10, "student": "fastvit_t8", "distill_epochs": 3}
    (tmp_path / "c.json").write_text(json.dumps(values))
    (tmp_path / "c.yaml").write_text("\n".join(f"{k}: {v}" for k, v in values.items()))
    assert parse_config("run", [str(tmp_path / "c.json")]) == from_flags
    assert parse_config("run", [str(tmp_path / "c.yaml")]) == from_flags
    assert PipelineConfig.from_dict(from_flags.to_dict()) == from_flags
    assert from_flags.student.distill_epochs == 3.0 and from_flags.teacher.teacher == "facebook/dinov2-large"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--dataset", "no-such-task"], "cannot load a task from 'no-such-task'"),
        (["run", "--dataset", "digits", "--per_class", "0"], "--per_class must be at least 1, got 0"),
        (["run", "--dataset", "digits", "--overwrite_stage", "teachr"], "unknown stage(s) ['teachr']"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["push", "--dataset", "digits"], "push needs --hub_model_id"),
        (["run", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_bad_command_lines_get_one_clear_line_and_a_nonzero_exit(tmp_path, capsys, argv, message):
    argv = argv + (["--output_dir", str(tmp_path / "run")] if len(argv) > 2 else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unknown_teacher_and_an_unwritable_output_dir_are_one_line_errors(tmp_path, capsys):
    code = main(
        ["run", "--dataset", "digits", "--teacher", "nobody/no-such-vfm", "--output_dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # the stage's progress lines, then the error: one line, last
    assert code == 2 and lines[-1].startswith("hf-task-distill: error:") and "Traceback" not in err
    assert sum(line.startswith("hf-task-distill: error") for line in lines) == 1
    assert "nobody/no-such-vfm" in lines[-1]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a directory cannot be made under a file, even as root
    code = main(["run", "--dataset", "digits", "--output_dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to the output directory" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_command_and_flag(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "finetune-teacher", "build-transfer-set", "distill", "evaluate", "push", "demo"):
        assert command in out
    with pytest.raises(SystemExit) as stop:
        main(["distill", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--per_class",
        "--teacher_strategy",
        "--per_query_k",
        "--distill_epochs",
        "--overwrite_stage",
    ):
        assert flag in out


# -- the whole pipeline from the command line ------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, vfm_dirs):
    """A task as an image folder, a pool folder, a locally 'pretrained' student; one full CLI run,
    killed once during distillation and rerun."""
    root = tmp_path_factory.mktemp("cli")
    write_run_inputs(root, task="task", pool="pool", sizes=(48, 32, 160), seed=11)
    (root / "pool" / "zz-broken.png").write_bytes(b"not a png")  # a web pool has these: skipped, counted
    (root / "pool" / "zz-empty.jpg").write_bytes(b"")
    run = root / "run"
    argv = [
        "--dataset", str(root / "task"), "--per_class", "6",
        "--teacher", str(vfm_dirs["dinov2"]), "--teacher_strategy", "full", "--teacher_epochs", "3",
        "--teacher_learning_rate", "1e-3",
        "--transfer", "retrieval", "--pool", str(root / "pool"), "--per_query_k", "8",
        "--leakage_threshold", "0.9999",  # the random test encoder makes every colour image look alike
        "--student", str(root / "student-start"), "--pretrained_student",
        "--distill_epochs", "8", "--distill_learning_rate", "3e-3", "--temperature", "2",
        "--finetune_epochs", "2", "--finetune_learning_rate", "1e-3",
        "--batch_size", "16", "--logging_steps", "1", "--output_dir", str(run),
        "--hub_model_id", "me/colour-student", "--hub_dataset_id", "me/colour-transfer",
    ]  # fmt: skip
    ended = kill_after_first_checkpoint(
        [*CLI, "run", *argv], run / "distill" / "checkpoints", root / "first-run.log"
    )
    assert not ended, "the run ended early:\n" + (root / "first-run.log").read_text()[-3000:]
    before = {s: json.loads((run / s / "manifest.json").read_text()) for s in ("teacher", "transfer")}
    assert not (run / "distill" / "manifest.json").exists()
    finished = subprocess.run([*CLI, "run", *argv], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return {"root": root, "run": run, "argv": argv, "before": before, "output": finished}


def test_a_run_killed_in_distillation_resumes_without_redoing_finished_stages(cli_run):
    run = cli_run["run"]
    manifests = {s: json.loads((run / s / "manifest.json").read_text()) for s in
                 ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate", "publish")}  # fmt: skip
    for stage in ("teacher", "transfer"):  # completed before the kill: not redone
        assert manifests[stage]["run_id"] == cli_run["before"][stage]["run_id"]
    assert "stage teacher: complete" in cli_run["output"].stderr
    resumed = manifests["distill"]["outputs"]["resumed_from"]
    assert resumed is not None and "checkpoint-" in resumed  # picked up from the last checkpoint
    assert 0 < manifests["distill"]["outputs"]["resumed_at_epoch"] < 8
    assert (
        manifests["distill"]["ledger"]["entries"][0]["images"] == 8 * manifests["transfer"]["outputs"]["rows"]
    )
    out = cli_run["output"].stdout
    assert (
        "| teacher |" in out
        and "| student, labels only |" in out
        and "| student, distilled + finetuned |" in out
    )
    assert "Compute per stage:" in out and "| distill | teacher forward |" in out
    assert "Skipped (unreadable) images: 2 in the retrieval pool" in out
    card = (run / "transfer" / "data" / "README.md").read_text()
    assert "(162 images; 2 unreadable, skipped)" in card

    again = subprocess.run([*CLI, "evaluate", *cli_run["argv"]], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate"):
        assert f"stage {stage}: complete" in again.stderr, "\n".join(
            line for line in again.stderr.splitlines() if "stage" in line
        )  # a rerun does nothing again


def test_overwrite_stage_redoes_that_stage_and_what_depends_on_it(cli_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(cli_run["run"], run)
    argv = [a if a != str(cli_run["run"]) else str(run) for a in cli_run["argv"]]
    before = {
        s: json.loads((run / s / "manifest.json").read_text())["run_id"]
        for s in ("transfer", "finetune", "baseline")
    }
    result = subprocess.run(
        [*CLI, "evaluate", *argv, "--overwrite_stage", "finetune"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    after = {
        s: json.loads((run / s / "manifest.json").read_text())["run_id"]
        for s in ("transfer", "finetune", "baseline")
    }
    assert after["transfer"] == before["transfer"] and after["baseline"] == before["baseline"]
    assert after["finetune"] != before["finetune"]
    assert "stage finetune: redoing, --overwrite_stage" in result.stderr


def test_distilling_from_a_teacher_cache_redoes_only_distillation_and_charges_k_teacher_passes(
    cli_run, tmp_path
):
    import shutil

    from hf_task_distill import TeacherCache

    run = tmp_path / "cached"
    shutil.copytree(cli_run["run"], run)
    argv = [a if a != str(cli_run["run"]) else str(run) for a in cli_run["argv"]]
    before = {
        s: json.loads((run / s / "manifest.json").read_text())["run_id"] for s in ("teacher", "transfer")
    }
    result = subprocess.run(
        [*CLI, "distill", *argv, "--teacher_cache_views", "2", "--distill_epochs", "3"]
        + ["--overwrite_stage", "distill"],  # changing a finished stage's settings must be asked for
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage distill: redoing, --overwrite_stage" in result.stderr
    manifests = {
        s: json.loads((run / s / "manifest.json").read_text()) for s in ("teacher", "transfer", "distill")
    }
    assert all(manifests[s]["run_id"] == before[s] for s in ("teacher", "transfer"))
    rows = manifests["transfer"]["outputs"]["rows"]
    teacher_entry, student_entry = manifests["distill"]["ledger"]["entries"]
    assert teacher_entry["work"] == "teacher forward (cache of 2 views)"
    assert teacher_entry["images"] == 2 * rows  # K teacher passes per image, not one per epoch
    assert student_entry["images"] == 3 * rows
    cache = TeacherCache(run / "distill" / "teacher_cache")
    assert len(cache) == rows and cache.num_views == 2


def test_published_folders_load_with_the_real_clients(cli_run):
    import timm
    from datasets import load_dataset, load_from_disk
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification, pipeline

    publish = cli_run["run"] / "publish"
    student_dir = publish / "student"
    assert not (student_dir / "training_args.bin").exists()  # no pickles are published
    model = AutoModelForImageClassification.from_pretrained(student_dir).eval()
    # the task's classes in the task's order (the image folder's: sorted), not those of the checkpoint
    # the student started from (LABELS' order), which earlier versions kept in timm's label_names
    assert model.config.id2label == dict(enumerate(sorted(LABELS)))
    classifier = pipeline("image-classification", model=str(student_dir))
    image = make_colour_dataset(1, seed=99)[0]["image"]
    assert classifier(image)[0]["label"] in LABELS
    native = timm.create_model(f"local-dir:{student_dir}", pretrained=True).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), model(pixel_values=pixels).logits)

    transfer = load_dataset(str(publish / "transfer_set"), split="train")
    original = load_from_disk(str(cli_run["run"] / "transfer" / "data"))
    assert transfer["pool_index"] == original["pool_index"] and len(transfer) > 0
    assert np.array_equal(np.asarray(transfer[0]["image"]), np.asarray(original[0]["image"]))

    card = ModelCard.load(student_dir / "README.md")
    results = json.loads((student_dir / "results.json").read_text())["results"]
    # the student started from a local, randomly initialised checkpoint: no Hub id to name. (Earlier
    # versions copied timm's registered ImageNet weights, timm/test_resnet.r160_in1k, into every
    # from-scratch config, and the card then claimed them as the base model.)
    assert card.data.base_model is None
    assert "me/colour-transfer" in card.data.datasets
    assert not any(tag.startswith("teacher:") for tag in card.data.tags)  # a local teacher has no Hub id
    assert "`dinov2 (local)`" in card.text  # named by its folder, no path (tests/test_publishing.py)
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(results["student, distilled + finetuned"]["accuracy"])
    assert 'timm.create_model("hf-hub:me/colour-student"' in card.text
    ledger = json.loads((student_dir / "compute_ledger.json").read_text())
    assert {e["stage"] for e in ledger["entries"]} >= {"teacher", "transfer", "distill", "finetune"}


def test_push_uploads_the_checked_folders_and_never_writes_the_token(cli_run, tmp_path, monkeypatch):
    """Only the Hub's HTTP boundary is stubbed: huggingface_hub's own client runs against it."""
    import base64
    import shutil

    import httpx2 as httpx  # huggingface_hub's HTTP client
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    token = "hf_thisIsATestTokenValue0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    run = tmp_path / "copy"
    shutil.copytree(cli_run["run"], run)
    argv = [a if a != str(cli_run["run"]) else str(run) for a in cli_run["argv"]]
    calls, committed = [], {}

    def hub(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append((request.method, path, request.headers.get("authorization")))
        if path == "/api/whoami-v2":  # the token checked before anything is uploaded
            return httpx.Response(200, json={"name": "me", "type": "user"})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            return httpx.Response(
                200, json={"url": f"https://huggingface.co/{body['organization']}/{body['name']}"}
            )
        if path == "/api/validate-yaml":  # the model card's metadata
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                },
            )
        if "/commit/" in path:
            repo = path.split("/api/")[1].split("/commit/")[0]
            for line in request.content.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    committed.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(
                        item["value"]["content"]
                    )
            url = f"https://huggingface.co/{repo.removeprefix('models/')}/commit/{'a' * 40}"
            return httpx.Response(200, json={"commitUrl": url, "commitOid": "a" * 40})
        return httpx.Response(404, json={"error": f"not stubbed: {request.method} {path}"})

    huggingface_hub.set_client_factory(
        lambda: httpx.Client(
            transport=httpx.MockTransport(hub), event_hooks={"request": [hf_request_event_hook]}
        )
    )
    try:
        assert main(["push", *argv]) == 0
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
    student = committed["models/me/colour-student"]
    assert {"README.md", "config.json", "model.safetensors", "compute_ledger.json"} <= set(student)
    assert student["model.safetensors"] == (run / "publish" / "student" / "model.safetensors").read_bytes()
    dataset = committed["datasets/me/colour-transfer"]
    assert "README.md" in dataset and any(p.startswith("data/") and p.endswith(".parquet") for p in dataset)
    assert all(auth == f"Bearer {token}" for _, _, auth in calls)  # huggingface_hub found the token itself
    for folder, _, files in os.walk(run):
        for name in files:
            assert token.encode() not in open(os.path.join(folder, name), "rb").read(), name
    assert all(token.encode() not in content for repo in committed.values() for content in repo.values())


def test_the_offline_demo_runs_every_stage_and_prints_the_table(tmp_path):
    """The README's demo command, with short schedules: all stages, offline, the table at the end."""
    out_dir = tmp_path / "demo"
    short = ["--teacher_epochs", "2", "--distill_epochs", "1", "--finetune_epochs", "1", "--per_class", "3"]
    result = subprocess.run(
        [*CLI, "demo", "--output_dir", str(out_dir), *short], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in (
        "| teacher |",
        "| student, labels only |",
        "| student, distilled |",
        "| student, distilled + finetuned |",
    ):
        assert row in out
    assert "What it does not show" in out and "Compute per stage:" in out
    evaluation = json.loads((out_dir / "evaluate" / "manifest.json").read_text())["outputs"]
    assert evaluation["split"] == "test" and evaluation["images"] == 539
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in evaluation["results"].values())
    assert (out_dir / "publish" / "student" / "model.safetensors").exists()
    assert f"{out_dir / 'results.png'}  (accuracy" in out  # the figures, named in the summary
    with Image.open(out_dir / "results.png") as chart:
        assert chart.format == "PNG"
    card = (out_dir / "publish" / "student" / "README.md").read_text()
    assert "# resnet18-digits-student\n" in card and 'model="digits-demo"' not in card
    assert "mini-vfm (shipped with hf_task_distill)" in card
    _check_the_demos_export(out_dir, out, card)


def _check_the_demos_export(out_dir, out: str, card: str) -> None:
    """With the onnx extra (CI's dev install), the demo ends with its student exported: the summary's
    export line, onnx/ with parity on the test digits, published with the card's section."""
    from hf_task_distill.demo import _onnx_installed

    if not _onnx_installed():
        assert "Export skipped: pip install 'hf-task-distill[onnx]'" in out
        return
    line = next((row for row in out.splitlines() if row.startswith("Export (onnx-int8): ")), None)
    assert line is not None and "batch 1: ONNX Runtime" in line and "vs PyTorch" in line, out[-3000:]
    exported = out_dir / "export" / "model" / "onnx"
    assert (exported / "model.onnx").is_file() and (exported / "model_quantized.onnx").is_file()
    record = json.loads((exported / "export.json").read_text())
    assert record["parity"]["sample"] == {"source": "dataset (test split)", "images": 256}
    fp32 = record["parity"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    assert "accuracy_change_points" in record["parity"]["int8"]
    assert f"Exported student: {out_dir / 'export' / 'model'}" in out
    assert (out_dir / "publish" / "student" / "onnx" / "model.onnx").is_file()
    assert "## ONNX export" in card and "| ONNX Runtime, int8 |" in card


# -- a command on an existing run ------------------------------------------------------------------
def _copy_run(cli_run, tmp_path, name="copy"):
    import shutil

    run = tmp_path / name
    shutil.copytree(cli_run["run"], run)
    return run


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (but the log every command appends to)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name in ("hf-task-distill.log", ".lock"):  # appended to / held by every command
                continue
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def test_a_command_on_a_finished_run_takes_the_runs_settings_and_redoes_nothing(cli_run, tmp_path):
    """Issue 15.1: `evaluate` with the task flags only (no teacher, pool or student flags) on a copy of
    a finished run. Before: 'stage teacher: redoing, its inputs changed', then a failed load of the
    default teacher, teacher/ emptied and config.json overwritten with the default teacher."""
    run = _copy_run(cli_run, tmp_path)
    before = _snapshot(run)
    task = cli_run["argv"][cli_run["argv"].index("--dataset") + 1]
    result = subprocess.run(
        [*CLI, "evaluate", "--dataset", task, "--per_class", "6", "--output_dir", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with the settings in its config.json" in result.stderr
    for stage in ("teacher", "transfer", "distill", "baseline", "finetune", "evaluate"):
        assert f"stage {stage}: complete" in result.stderr, stage
    assert _snapshot(run) == before  # not one byte changed, config.json included
    # a copied run uses its own files: the manifests' paths are relative to the stage folders
    from hf_task_distill.config import PipelineConfig
    from hf_task_distill.pipeline import Pipeline

    pipeline = Pipeline(PipelineConfig.from_run(run))
    assert pipeline.manifest("finetune")["outputs"]["model"] == str(run / "finetune" / "model")
    assert json.loads((run / "finetune" / "manifest.json").read_text())["outputs"]["model"] == "model"


def test_a_setting_that_would_redo_a_finished_stage_is_refused_naming_it(cli_run, tmp_path, capsys):
    """Issue 15.1: one changed flag on a finished run. Before: distillation and finetuning were
    silently redone and the finished student replaced, and the log never named the setting."""
    run = _copy_run(cli_run, tmp_path)
    before = _snapshot(run)
    code = main(["finetune", "--output_dir", str(run), "--distill_epochs", "3", "--teacher_epochs", "5"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hf-task-distill: error:")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    err = errors[0]
    assert "stage teacher finished with teacher_epochs=3.0, this command asks for 5.0" in err
    assert "stage distill finished with distill_epochs=8.0, this command asks for 3.0" in err
    assert "--overwrite_stage teacher distill" in err and "--teacher_epochs 3.0 --distill_epochs 8.0" in err
    assert _snapshot(run) == before  # refused before anything was touched


def test_a_redone_stage_keeps_the_finished_result_until_its_replacement_is_complete(cli_run, tmp_path):
    """Issue 15.1: `--overwrite_stage distill` with new settings, killed during the redo. Before: the
    finished stage folder was deleted before the redo started."""
    from hf_task_distill.config import PipelineConfig
    from hf_task_distill.pipeline import Pipeline

    run = _copy_run(cli_run, tmp_path)
    finished = _snapshot(run / "distill")
    argv = [
        *CLI,
        "distill",
        "--output_dir",
        str(run),
        "--distill_epochs",
        "3",
        "--overwrite_stage",
        "distill",
    ]
    ended = kill_after_first_checkpoint(argv, run / "distill.redo" / "checkpoints", tmp_path / "redo.log")
    assert not ended, (tmp_path / "redo.log").read_text()[-3000:]
    assert _snapshot(run / "distill") == finished  # the finished distillation, whole and untouched
    # second newcomer try: config.json said distill_epochs 3 after the killed redo, and a plain
    # command was then refused ("finished with 8.0, this command asks for 3.0")
    assert json.loads((run / "config.json").read_text())["distill_epochs"] == 8.0
    plain = subprocess.run(
        [*CLI, "evaluate", "--output_dir", str(run)], capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == 0 and "holds an interrupted redo" in plain.stderr, plain.stderr[-3000:]
    pipeline = Pipeline(PipelineConfig.from_run(run))
    assert pipeline.manifest("distill")["inputs"]["distill_epochs"] == 8.0
    assert pipeline._changed_output("distill", pipeline.manifest("distill")) is None

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)  # the same command resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage distill: resuming an interrupted run" in again.stderr
    assert "resuming from checkpoint-" in again.stderr
    manifest = json.loads((run / "distill" / "manifest.json").read_text())
    assert manifest["inputs"]["distill_epochs"] == 3.0 and manifest["outputs"]["model"] == "model"
    assert json.loads((run / "config.json").read_text())["distill_epochs"] == 3.0  # now it is finished
    assert not (run / "distill.redo").exists() and not (run / "distill.old").exists()
    assert not (run / "distill" / "checkpoints").exists()  # a complete stage keeps no checkpoints


def test_finished_stages_keep_no_trainer_checkpoints(cli_run):
    """Issue 15.13: the demo folder was 575 MB, 387 MB of it stale checkpoints."""
    run = cli_run["run"]
    for stage in ("teacher", "distill", "baseline", "finetune"):
        assert (run / stage / "manifest.json").exists()
        assert not (run / stage / "checkpoints").exists(), stage
    assert (run / "distill" / "model" / "model.safetensors").exists()


def test_a_command_without_output_dir_continues_the_command_s_default_run(tmp_path, monkeypatch):
    """Found by the newcomer try: a plain `hf-task-distill demo` rerun read runs/digits-demo's settings
    but ran in runs/run (config.json does not record the folder it is in), so it never resumed."""
    from hf_task_distill.cli import CommandLineError
    from hf_task_distill.demo import demo_defaults

    monkeypatch.chdir(tmp_path)
    demo = PipelineConfig.from_dict({**demo_defaults(), "distill_epochs": 4.0})
    os.makedirs("runs/digits-demo")
    demo.save("runs/digits-demo/config.json")
    again = parse_config("demo", [])
    assert again.run.output_dir == "runs/digits-demo" and again.student.distill_epochs == 4.0
    # a config file, then flags that change it
    (tmp_path / "c.yaml").write_text("dataset: digits\noutput_dir: runs/a\ndistill_epochs: 7\n")
    combined = parse_config("run", ["c.yaml", "--distill_epochs", "2", "--per_class", "3"])
    assert combined.student.distill_epochs == 2.0 and combined.task.per_class == 3
    assert combined.run.output_dir == "runs/a"
    # the shared default folder holds a run on another task: no silent continuation of it
    os.makedirs("runs/run")
    PipelineConfig.from_dict({"dataset": "digits"}).save("runs/run/config.json")
    with pytest.raises(
        CommandLineError, match=r"no --output_dir given, and the default runs/run holds another"
    ):
        parse_config("run", ["--dataset", "eurosat"])


def _colour_task_folder(root, per_class_split: bool = True):
    from conftest import save_image_folder

    save_image_folder(make_colour_dataset(24, seed=7), root / ("task/train" if per_class_split else "task"))
    return root / "task"


def test_a_folder_with_class_folders_only_gets_a_held_out_test_split(tmp_path):
    """Found by the newcomer try: teacher, distillation and finetuning ran, then evaluation crashed
    with KeyError "task has no split 'validation'"."""
    from hf_task_distill.pipeline import Pipeline

    folder = _colour_task_folder(tmp_path, per_class_split=False)
    pipeline = Pipeline(PipelineConfig.from_dict({"dataset": str(folder), "output_dir": str(tmp_path / "r")}))
    task = pipeline.task
    assert pipeline.eval_split == "test" and len(task["test"]) + len(pipeline.full_train) == 24
    assert set(task["test"]["label"]) == set(range(4))  # every class is tested
    train_paths = pipeline.full_train.cast_column("image", ImageFeature(decode=False))["image"]
    test_paths = task["test"].cast_column("image", ImageFeature(decode=False))["image"]
    assert not {c["path"] for c in test_paths} & {c["path"] for c in train_paths}  # never trained on


def test_a_change_to_the_task_s_images_is_noticed(tmp_path):
    """Found by the newcomer try: a class folder added to the task, and every stage said 'complete,
    skipped' with the old three-class results."""
    from hf_task_distill.pipeline import Pipeline, StageSettingsChanged

    folder = _colour_task_folder(tmp_path)
    config = PipelineConfig.from_dict({"dataset": str(folder), "output_dir": str(tmp_path / "r")})
    Pipeline(config).run(["transfer"])  # the task's own images: no model needed
    assert Pipeline(config).run(["transfer"])["transfer"]["run_id"]  # unchanged data: skipped
    make_colour_dataset(1, seed=8)[0]["image"].save(folder / "train" / "red" / "added.png")
    with pytest.raises(StageSettingsChanged, match=r"the task's data \(its images, labels or classes\) "
                       r"changed since stage transfer finished.*put the data back"):  # fmt: skip
        Pipeline(config).run(["transfer"])


def test_a_fixed_test_image_redoes_no_stage_that_never_read_the_test_split(tmp_path):
    """Found by the second newcomer try: a truncated test image is reported after all training;
    removing it, as the error invites, made every training stage refuse to continue (the task's
    fingerprint covered the test split, which they never read)."""
    from conftest import save_image_folder

    from hf_task_distill.pipeline import Pipeline

    folder = _colour_task_folder(tmp_path)
    save_image_folder(make_colour_dataset(8, seed=9), folder / "test")
    config = PipelineConfig.from_dict({"dataset": str(folder), "output_dir": str(tmp_path / "r")})
    finished = Pipeline(config).run(["transfer"])["transfer"]["run_id"]
    (folder / "test" / "red" / sorted(os.listdir(folder / "test" / "red"))[0]).unlink()
    pipeline = Pipeline(config)
    assert pipeline.run(["transfer"])["transfer"]["run_id"] == finished  # skipped, not refused
    assert pipeline.context.splits_read_by("transfer") == ["train"] and pipeline.context.splits_read_by(
        "evaluate"
    ) == ["test"]


def test_a_run_on_a_relative_folder_continues_from_elsewhere_and_after_its_data_moved(tmp_path, monkeypatch):
    """Found by the second newcomer try: `--dataset task` was recorded as written, so `evaluate
    --output_dir <run>` from another directory could not load it, and naming the same folder by its
    absolute path was refused as a changed setting."""
    import shutil

    from hf_task_distill.pipeline import Pipeline

    _colour_task_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig.from_dict({"dataset": "task", "output_dir": "r"})
    assert config.task.dataset == str(tmp_path / "task")
    finished = Pipeline(config).run(["transfer"])["transfer"]["run_id"]
    monkeypatch.chdir(tmp_path.parent)  # another working directory
    assert (
        Pipeline(PipelineConfig.from_run(tmp_path / "r")).run(["transfer"])["transfer"]["run_id"] == finished
    )
    shutil.move(tmp_path / "task", tmp_path / "moved")  # the data moved: the same contents, elsewhere
    moved = PipelineConfig.from_run(tmp_path / "r", dataset=str(tmp_path / "moved"))
    assert Pipeline(moved).run(["transfer"])["transfer"]["run_id"] == finished


def test_a_task_that_cannot_be_loaded_fails_before_the_run_folder_is_written(tmp_path, capsys):
    """Found by the newcomer try: --dataset nosuchds failed only after 'stage teacher: starting', and
    left a config.json that later commands on the folder inherited."""
    run = tmp_path / "run"
    assert main(["run", "--dataset", "nosuchds", "--teacher", "mini-vfm", "--output_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot load a task from 'nosuchds'" in err and "stage teacher" not in err
    assert not (run / "config.json").exists()


def test_a_hub_student_that_cannot_be_loaded_fails_before_the_teacher_is_finetuned(tmp_path, capsys):
    """Found by the newcomer try: --student timm/resnet18.a1_in1k offline failed at the distill stage,
    after teacher finetuning and the transfer set."""
    run = tmp_path / "run"
    argv = ["run", "--dataset", "digits", "--teacher", "mini-vfm", "--student", "timm/resnet18.a1_in1k"]
    assert main([*argv, "--output_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        "cannot load the student 'timm/resnet18.a1_in1k': it is not a folder here and not in the Hub cache"
        in err
    )
    assert "stage teacher" not in err and not (run / "teacher").exists()


def test_a_second_command_on_a_busy_run_is_refused_naming_the_first(tmp_path):
    """Found by the newcomer try: a second identical command took the live stage for an interrupted one
    and 'resumed' it from a checkpoint that was being written."""
    from hf_task_distill.run_directory import RunDirectory, RunInUse

    first = RunDirectory(tmp_path / "run")
    with first.locked():
        with pytest.raises(RunInUse, match=rf"another command is running in .*run \(pid {os.getpid()}\)"):
            with RunDirectory(tmp_path / "run").locked():
                pass
    with RunDirectory(tmp_path / "run").locked():  # released when the first command ended
        pass


def test_a_refusal_names_each_changed_data_once_and_reads_as_sentences():
    """Second newcomer try: 'Nothing was changed. to keep...', and the task-data clause once per stage."""
    from hf_task_distill.pipeline import TASK_DATA, StageSettingsChanged

    changes = [(s, TASK_DATA, "a", "b") for s in ("teacher", "transfer", "finetune")]
    changes.append(("distill", "distill_epochs", 8.0, 3.0))
    message = str(StageSettingsChanged("runs/r", changes))
    assert message.count("changed since") == 1
    assert (
        "the task's data (its images, labels or classes) changed since stages teacher, transfer, finetune"
        in message
    )
    assert "Nothing was changed. To keep the finished result, give --distill_epochs 8.0;" in message


def test_counting_training_flops_leaves_the_model_and_the_random_state_as_they_were():
    """Found when model cards began counting FLOPs in save_model: a training-mode pass moved
    BatchNorm's running statistics towards the example batch, so the student in memory no longer
    matched the one just saved."""
    from hf_task_distill.ledger import count_flops_per_image
    from hf_task_distill.models import create_student

    student = create_student("test_resnet", ["a", "b"], image_size=32).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    assert count_flops_per_image(student, 32, training=True) > count_flops_per_image(student, 32) > 0
    assert torch.equal(torch.rand(3), expected_draw)  # no random number drawn for the caller
    assert not student.training
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key
