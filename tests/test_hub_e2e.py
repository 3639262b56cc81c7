"""The main command, verbatim, against the loopback Hub: every id resolved over HTTP, the student pushed.

    accelerate launch examples/run_distill.py --dataset cub --teacher facebook/dinov2-large

The Hub holds a tiny DINOv2 under ``facebook/dinov2-large`` and a tiny dataset shaped like the ``cub``
preset's (same repo id, columns, splits and 200-name ``ClassLabel``), seeded so that their files exist
only inside the server's storage (by content hash): a stage that read a local path instead of the ids
would find nothing, and the request log shows each id resolved.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from conftest import tiny_processor, tiny_vit_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUB = json.loads((ROOT / "hf_task_distill" / "data" / "tasks.json").read_text())["cub"]["hub_id"]
TEACHER = "facebook/dinov2-large"
STUDENT_REPO = "user/cub-student"

# Built in a client process and pushed with datasets' own push_to_hub: Parquet shards and the README
# holding the features, as the Hub holds the real dataset. 200 classes, 2 train and 1 test image each.
PUSH_CUB = """
    import os
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    names = [f"{i + 1:03d}.Bird_{i + 1}" for i in range(200)]  # the real names keep the numeric prefix
    features = Features({"image": Image(), "label": ClassLabel(names=names), "bbox": Sequence(Value("float32"))})
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(200, 3))

    def split(per_class):
        labels = [c for c in range(200) for _ in range(per_class)]
        images = [PILImage.fromarray(np.clip(colours[c] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype("uint8"))
                  for c in labels]
        boxes = [[1.0, 1.0, 10.0, 10.0]] * len(labels)
        return Dataset.from_dict({"image": images, "label": labels, "bbox": boxes}, features=features)

    DatasetDict(train=split(2), test=split(1)).push_to_hub(os.environ["REPO"])
    print("RESULT {}")
"""

SHRINK = [  # only epochs, sizes and the baseline's extra training: the command is otherwise the user's
    "--teacher_epochs", "0.5", "--teacher_probe_epochs", "2", "--distill_epochs", "0.5",
    "--finetune_epochs", "0.5", "--no_baseline", "--student_image_size", "64", "--batch_size", "64",
]  # fmt: skip


def _seed_teacher(hub, tmp_path) -> str:
    """A tiny DINOv2 backbone and a processor configured like the real one's, under ``facebook/dinov2-large``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "seed-teacher"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**tiny_vit_kwargs(32))).save_pretrained(folder)
    processor = tiny_processor(32)
    processor.resample = 3  # bicubic, as facebook/dinov2-large's preprocessor_config
    processor.save_pretrained(folder)
    commit = hub.storage.add_folder("model", TEACHER, folder, message="tiny DINOv2")
    shutil.rmtree(folder)  # from here on the files exist only inside the server's storage
    return commit


def _client(hub, tmp_path, argv, name, timeout=900, **extra):
    env = {**hub.client_env(tmp_path / f"hf_home_{name}"), "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cwd = tmp_path / f"cwd_{name}"  # empty: no folder named like an id can stand in for it
    cwd.mkdir()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return done


def _stored(hub, record: dict, path: str) -> bytes:
    return hub.storage.object_path(record["files"][path]["sha256"]).read_bytes()


@pytest.fixture(scope="module")
def main_command(loopback_hub, tmp_path_factory):
    """The Hub seeded, then the main command run against it once; what the tests below look at."""
    hub, tmp_path = loopback_hub, tmp_path_factory.mktemp("main_command")
    teacher_commit = _seed_teacher(hub, tmp_path)
    with hub.member_of(CUB.split("/")[0]):  # pushed by the dataset's publisher
        _client(
            hub, tmp_path, [sys.executable, "-c", textwrap.dedent(PUSH_CUB)], "seed", timeout=300, REPO=CUB
        )
    assert hub.storage.resolve("dataset", CUB, "main")
    before = len(hub.app.requests)

    run = tmp_path / "run"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    command = [str(ROOT / "examples" / "run_distill.py"), "--dataset", "cub", "--teacher", TEACHER]
    push = ["--output_dir", str(run), "--push_to_hub", "--hub_model_id", STUDENT_REPO]
    start = time.perf_counter()
    _client(hub, tmp_path, launcher + command + SHRINK + push, "run")
    print(f"\nmain command against the loopback Hub: {time.perf_counter() - start:.1f} s")
    return SimpleNamespace(
        hub=hub, tmp_path=tmp_path, run=run, teacher_commit=teacher_commit, requests=hub.app.requests[before:]
    )


@pytest.mark.slow
def test_the_main_command_runs_against_the_hub_by_repo_id(main_command):
    hub, tmp_path, run, teacher_commit = (
        main_command.hub,
        main_command.tmp_path,
        main_command.run,
        main_command.teacher_commit,
    )
    requests = main_command.requests

    # model, processor and dataset resolved by id over HTTP, in the run's own (empty) cache
    at = f"/{TEACHER}/resolve/{teacher_commit}/"
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert ("GET", at + name, 200) in requests, name
    for split in ("train", "test"):
        assert any(m == "GET" and p.startswith(f"/datasets/{CUB}/resolve/") and f"/data/{split}-" in p
                   and p.endswith(".parquet") and s == 200 for m, p, s in requests), split  # fmt: skip
    cache = tmp_path / "hf_home_run" / "hub"
    assert (cache / "models--facebook--dinov2-large").is_dir()
    assert (cache / f"datasets--{CUB.replace('/', '--')}").is_dir()
    assert not list(tmp_path.glob("seed-*")) and not any((tmp_path / "cwd_run").iterdir())

    # every stage names the ids and worked on the Hub's rows: 200 classes x 2 train, x 1 test
    manifest = {
        s: json.loads((run / s / "manifest.json").read_text()) for s in ("teacher", "transfer", "evaluate")
    }
    assert manifest["teacher"]["inputs"]["teacher"] == TEACHER
    assert all(e["model"].startswith(TEACHER) for e in manifest["teacher"]["ledger"]["entries"])
    assert manifest["transfer"]["outputs"]["rows"] == 400
    assert manifest["evaluate"]["outputs"]["images"] == 200
    assert "200 images" in manifest["teacher"]["outputs"]["validation_source"]  # 20% of 2 x 200 held out

    # the student landed in user/cub-student, in one commit, the bytes of the run's publish folder
    commit, record = hub.storage.resolve("model", STUDENT_REPO, "main")
    assert ("POST", f"/api/models/{STUDENT_REPO}/commit/main", 200) in requests
    student = run / "publish" / "student"
    assert {p.name for p in student.iterdir()} <= set(record["files"])
    weights = _stored(hub, record, "model.safetensors")
    assert weights == (student / "model.safetensors").read_bytes()
    card = _stored(hub, record, "README.md").decode()
    assert TEACHER in card and CUB in card
    # lineage: the commits the run's cache resolved the ids to, the ones the server holds
    cub_commit, _ = hub.storage.resolve("dataset", CUB, "main")
    lineage = {
        s["role"]: s
        for s in json.loads((run / "publish" / "manifest.json").read_text())["outputs"]["lineage"]
    }
    assert (lineage["teacher"]["name"], lineage["teacher"]["revision"]) == (TEACHER, teacher_commit)
    assert (lineage["task data"]["name"], lineage["task data"]["revision"]) == (CUB, cub_commit)
    assert f"| teacher | [`{TEACHER}`](https://huggingface.co/{TEACHER}) | `{teacher_commit[:12]}` |" in card
    assert f"| task data | [`{CUB}`](https://huggingface.co/datasets/{CUB}) | `{cub_commit[:12]}` |" in card
    for name in record["files"]:  # the ids, never the cache folder they were read from
        assert str(tmp_path).encode() not in _stored(hub, record, name), name


PULL = """
    import json, os
    import numpy as np, timm, torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    repo, local = os.environ["REPO"], os.environ["LOCAL"]
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = {
            "transformers hub": AutoModelForImageClassification.from_pretrained(repo).eval()(pixels).logits,
            "transformers local": AutoModelForImageClassification.from_pretrained(local).eval()(pixels).logits,
            "timm hub": timm.create_model("hf-hub:" + repo, pretrained=True).eval()(pixels),
            "timm local": timm.create_model("local-dir:" + local, pretrained=True).eval()(pixels),
        }
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    predictions = {where: pipeline("image-classification", model=source)(image, top_k=3)
                   for where, source in (("hub", repo), ("local", local))}
    print("RESULT " + json.dumps(dict(logits={k: v.tolist() for k, v in logits.items()}, predictions=predictions)))
"""

EVALUATE = "import sys; from hf_task_distill.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_the_published_student_loads_back_by_repo_id(main_command):
    import torch

    hub, tmp_path, local = main_command.hub, main_command.tmp_path, main_command.run / "publish" / "student"
    before = len(hub.app.requests)
    done = _client(hub, tmp_path, [sys.executable, "-c", textwrap.dedent(PULL)], "pull", REPO=STUDENT_REPO,
                   LOCAL=str(local))  # fmt: skip
    out = json.loads([line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    logits = {k: torch.tensor(v) for k, v in out["logits"].items()}
    assert logits["transformers hub"].shape == (2, 200)
    for name in ("transformers local", "timm hub", "timm local"):
        torch.testing.assert_close(logits[name], logits["transformers hub"], rtol=1e-5, atol=1e-5, msg=name)
    hub_pred, local_pred = out["predictions"]["hub"], out["predictions"]["local"]
    assert [p["label"] for p in hub_pred] == [p["label"] for p in local_pred]
    assert all(p["label"].endswith(f"Bird_{int(p['label'][:3])}") for p in hub_pred)  # the task's names
    weights = (
        f"/{STUDENT_REPO}/resolve/{hub.storage.resolve('model', STUDENT_REPO, 'main')[0]}/model.safetensors"
    )
    assert ("GET", weights, 200) in hub.app.requests[before:]


@pytest.mark.slow
def test_evaluate_scores_a_published_student_as_its_local_folder(main_command):
    """``hf-task-distill evaluate --student user/name --dataset cub``: the published student, no training."""
    hub, tmp_path, run = main_command.hub, main_command.tmp_path, main_command.run
    results = {}
    for name, student in (("hub", STUDENT_REPO), ("local", str(run / "publish" / "student"))):
        out = tmp_path / f"evaluate-{name}"
        argv = ["evaluate", "--dataset", "cub", "--student", student, "--batch_size", "64",
                "--output_dir", str(out)]  # fmt: skip
        done = _client(hub, tmp_path, [sys.executable, "-c", EVALUATE, *argv], f"evaluate-{name}")
        assert "evaluating it as it is" in done.stderr + done.stdout
        assert "Results on the test split (200 images)" in done.stdout
        folder = out / "evaluate-student"
        results[name] = (json.loads((folder / "results.json").read_text()),
                         json.loads((folder / "confusion_matrices.json").read_text()))  # fmt: skip
        assert {p.name for p in out.iterdir()} <= {"evaluate-student", "hf-task-distill.log"}  # no stage ran
    (hub_results, hub_matrices), (local_results, local_matrices) = results["hub"], results["local"]
    assert hub_results["images"] == 200 and hub_results["split"] == "test"
    assert hub_results["results"][STUDENT_REPO] == local_results["results"][str(run / "publish" / "student")]
    assert hub_matrices["matrices"][STUDENT_REPO] == next(iter(local_matrices["matrices"].values()))
    assert sum(map(sum, hub_matrices["matrices"][STUDENT_REPO])) == 200
    # and what the run's own evaluation measured for the finetuned student it published
    pipeline_results = json.loads((run / "evaluate" / "manifest.json").read_text())["outputs"]["results"]
    assert hub_results["results"][STUDENT_REPO] == pipeline_results["student, distilled + finetuned"]


def test_evaluate_scores_a_finished_classifier_and_trains_from_anything_else(tmp_path, capsys, caplog):
    """Offline, on folders: ``--student`` that already predicts the task's classes in the task's order is
    evaluated as it is; a backbone, a timm architecture or another label space is not (the pipeline
    distils from it), and for a classifier of other classes a warning names the differences."""
    from conftest import LABELS, make_colour_dataset, save_image_folder, tiny_dinov2
    from transformers import Dinov2Model

    from hf_task_distill.cli import main
    from hf_task_distill.stages.evaluate import finished_student_labels

    for split, seed in (("train", 1), ("test", 2)):
        save_image_folder(make_colour_dataset(24, seed=seed), tmp_path / "task" / split)
    names = sorted(LABELS)  # an image folder's classes: its sub-folders, sorted
    classifier = tiny_dinov2(num_labels=len(names))
    classifier.config.id2label, classifier.config.label2id = (
        dict(enumerate(names)),
        {n: i for i, n in enumerate(names)},
    )
    classifier.save_pretrained(tmp_path / "student")
    tiny_processor().save_pretrained(tmp_path / "student")
    Dinov2Model(classifier.config).save_pretrained(tmp_path / "backbone")
    other = tiny_dinov2(num_labels=len(names))  # the same classes in another order: another label space
    other.config.id2label = dict(enumerate(reversed(names)))
    other.save_pretrained(tmp_path / "other")

    assert finished_student_labels(str(tmp_path / "student")) == names
    assert finished_student_labels("mobilevitv2_100") is None  # an architecture to train
    assert finished_student_labels(str(tmp_path / "other")) == names[::-1]
    assert finished_student_labels(str(tmp_path / "backbone")) is None  # id2label, but no head
    assert main(["evaluate", "--dataset", str(tmp_path / "task"), "--student", str(tmp_path / "student"),
                 "--batch_size", "8", "--output_dir", str(tmp_path / "run")]) == 0  # fmt: skip
    table = capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "evaluate-student" / "results.json").read_text())
    metrics = results["results"][str(tmp_path / "student")]
    assert results["images"] == 24 and f"{metrics['accuracy']:.4f}" in table
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained

    from hf_task_distill.cli import _is_finished_student, parse_config
    from hf_task_distill.pipeline import Pipeline

    fewer = tiny_dinov2(num_labels=3)  # a classifier of other classes
    fewer.config.id2label = dict(enumerate([*names[:2], "ultraviolet"]))
    fewer.save_pretrained(tmp_path / "fewer")

    def pipeline(student):
        config = parse_config("evaluate", ["--dataset", str(tmp_path / "task"), "--student", str(tmp_path / student),
                                           "--output_dir", str(tmp_path / f"run-{student}")])  # fmt: skip
        return Pipeline(config)

    caplog.set_level(logging.WARNING, logger="hf_task_distill")
    caplog.clear()
    assert not _is_finished_student(pipeline("backbone")) and not caplog.records  # a head to train
    # a finished classifier of other classes (or order) is a starting point, and the user is told so
    assert not _is_finished_student(pipeline("other"))
    assert "is a finished classifier of the same 4 classes in another order" in caplog.records[-1].message
    assert "it is not scored as it is" in caplog.records[-1].message
    assert not _is_finished_student(pipeline("fewer"))
    assert (
        f"of 3 classes where 'task' has 4 (only the student's: ['ultraviolet']; only the task's: {names[2:4]})"
        in caplog.records[-1].message
    )
