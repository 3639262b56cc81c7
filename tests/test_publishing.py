"""What a run publishes: nothing from the local machine, cards a reader can use, a push that fails
offline without losing the folders; and the demo's figures and the README's set-up notes.

One full CLI run (``private_run``) whose every local folder sits under a directory named
``MARKER-home-alice``: the teacher, the pool, the task, the starting student and the run itself.
Every file meant for publishing is scanned for that marker and for the run's absolute path, in its
raw bytes and in what its format hides from a byte scan (compressed parquet pages, PNG text chunks,
safetensors metadata).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import LABELS, check_card_metadata, write_run_inputs
from PIL import Image

from hf_task_distill.cli import main

CLI = [sys.executable, "-m", "hf_task_distill.cli"]
MARKER = "MARKER-home-alice"


# -- one run whose local paths carry a marker -----------------------------------------------------
@pytest.fixture(scope="module")
def private_run(tmp_path_factory, vfm_dirs):
    root = tmp_path_factory.mktemp(MARKER)
    write_run_inputs(
        root,
        task="colours",
        pool="web-pool",
        sizes=(32, 24, 96),
        teacher_from=vfm_dirs["dinov2"],
        teacher="my-teacher",
    )
    (root / "my-teacher" / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# my teacher\n")
    run = root / "alice-run"
    argv = [
        "--dataset", str(root / "colours"), "--per_class", "4",
        "--teacher", str(root / "my-teacher"), "--teacher_strategy", "full", "--teacher_epochs", "1",
        "--transfer", "retrieval", "--pool", str(root / "web-pool"), "--per_query_k", "4",
        "--leakage_threshold", "0.9999",
        "--student", str(root / "student-start"), "--pretrained_student",
        "--distill_epochs", "1", "--finetune_epochs", "1", "--baseline", "false", "--teacher_cache_views", "2",
        "--batch_size", "10", "--output_dir", str(run),  # 49 transfer rows: no batch of 1 for BatchNorm
    ]  # fmt: skip
    finished = subprocess.run([*CLI, "run", *argv], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return {"root": root, "run": run, "argv": argv}


def _published_files(run: pathlib.Path) -> list[pathlib.Path]:
    """Everything meant for the Hub: publish/, the teacher's saved folder, the transfer set's card and sheet."""
    # the pipeline's bookkeeping, not uploaded
    bookkeeping = {run / "publish" / "manifest.json", run / "publish" / "started.json"}
    files = [p for p in (run / "publish").rglob("*") if p.is_file() and p not in bookkeeping]
    files += [p for p in (run / "teacher" / "model").rglob("*") if p.is_file()]
    files += [run / "transfer" / "data" / name for name in ("README.md", "contact_sheet.png")]
    return files


def _hidden_text(path: pathlib.Path) -> str:
    """What a byte scan can miss: parquet values and schema metadata, PNG text, safetensors metadata."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        rows = table.drop_columns([c for c in table.column_names if c == "image"]).to_pylist()
        paths = (
            [cell["path"] for cell in table.column("image").to_pylist()]
            if "image" in table.column_names
            else []
        )
        return json.dumps([metadata, rows, paths], default=str)
    if path.suffix == ".png":
        with Image.open(path) as image:
            return json.dumps({k: str(v) for k, v in image.info.items()})
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return json.dumps(f.metadata() or {})
    return ""


def _leaks(files, needles) -> list[str]:
    found = []
    for path in files:
        raw = path.read_bytes()
        text = _hidden_text(path)
        for needle in needles:
            if needle.encode() in raw or needle in text:
                found.append(f"{path.name}: {needle}")
    return found


def test_nothing_from_the_local_machine_is_published(private_run):
    run, root = private_run["run"], private_run["root"]
    files = _published_files(run)
    names = {p.name for p in files}
    assert {"README.md", "compute_ledger.json", "results.json", "finetuning_results.json"} <= names
    assert any(p.suffix == ".parquet" for p in files) and "contact_sheet.png" in names
    needles = [MARKER, str(run), str(root), "alice-run"]
    assert not _leaks(files, needles)


def test_local_sources_are_named_by_their_folder_and_marked_local(private_run):
    from huggingface_hub import ModelCard

    run = private_run["run"]
    card = ModelCard.load(run / "publish" / "student" / "README.md")
    assert "`my-teacher (local)`" in card.text  # the teacher: its folder name, marked local
    assert "web-pool (local)" in card.text  # the pool, in the transfer description
    assert not any(tag.startswith("teacher:") for tag in card.data.tags)  # a folder has no Hub id to tag
    ledger = json.loads((run / "publish" / "student" / "compute_ledger.json").read_text())
    models = {entry["model"] for entry in ledger["entries"]}
    assert "my-teacher (local)" in models and "student-start (local)" in models
    transfer_card = (run / "publish" / "transfer_set" / "README.md").read_text()
    assert "Embedding model: `my-teacher (local)`" in transfer_card
    results = json.loads((run / "teacher" / "model" / "finetuning_results.json").read_text())
    assert results["base_model"] == "my-teacher (local)"


def test_the_student_card_lists_its_lineage_with_licences_and_warns_on_an_undeclared_one(private_run):
    run = private_run["run"]
    card = (run / "publish" / "student" / "README.md").read_text()
    section = card[card.index("## Lineage and licences") : card.index("## Use")]
    # local sources: their public names, no revision, the licence their README declares
    assert "| teacher | `my-teacher (local)` | local | apache-2.0 |" in section
    assert "| student weights | `student-start (local)` | local | not declared |" in section
    assert "| task data | `colours (local)` | local | not declared |" in section
    assert "| retrieval pool | `web-pool (local)` | local | not declared |" in section
    assert "> **Licence**: the task data `colours (local)` declares no licence" in section
    assert "the teacher" not in section.split("> **Licence**")[1]  # apache-2.0 warns of nothing
    manifest = json.loads((run / "publish" / "manifest.json").read_text())
    roles = [(s["role"], s["name"], s["license"]) for s in manifest["outputs"]["lineage"]]
    assert roles[0] == ("teacher", "my-teacher (local)", "apache-2.0") and len(roles) == 4


def test_cards_have_a_real_title_and_examples_a_reader_can_run(private_run):
    import re

    run = private_run["run"]
    teacher = (run / "teacher" / "model" / "README.md").read_text()
    student = (run / "publish" / "student" / "README.md").read_text()
    assert "# my-teacher-colours-teacher\n" in teacher  # not the Trainer's output folder, `checkpoints`
    assert "checkpoints" not in teacher
    assert "# test_resnet-colours-student\n" in student  # not the run folder's name
    for card in (teacher, student):
        # without a Hub id the examples load the folder the card is in, and say where the repo id goes
        assert set(re.findall(r'model="([^"]*)"', card)) == {"."}
        assert "<user>/" in card
    assert 'timm.create_model("local-dir:.", pretrained=True)' in student
    # the trainer's and the pipeline's cards come from one renderer and pass the same checks
    check_card_metadata(run / "teacher" / "model" / "README.md")
    metadata = check_card_metadata(run / "publish" / "student" / "README.md")
    assert metadata["model-index"][0]["name"] == "test_resnet-colours-student"
    distilled = run / "distill" / "model" / "README.md"  # DistillationTrainer.save_model's own card
    check_card_metadata(distilled)
    text = distilled.read_text()
    # the run's finetuned teacher, named as the ledger names it (distilled from the cache: no model to read)
    assert "**Teacher**: `my-teacher (local), finetuned`" in text
    # the trainer counts the images the pipeline's ledger records for the stage
    ledger = json.loads((run / "publish" / "student" / "compute_ledger.json").read_text())["entries"]
    images = next(e["images"] for e in ledger if (e["stage"], e["work"]) == ("distill", "student training"))
    assert re.search(rf"^\| distill \| student training \| test_resnet \| {images} \|", text, re.MULTILINE)
    assert not _leaks([distilled], [MARKER, str(run), "alice-run"])
    cards = sorted(run.rglob("README.md"))
    assert len(cards) >= 3  # teacher, student, transfer set(s)
    for card in cards:  # a text file ends with one newline (Jinja drops the template's)
        text = card.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), card.relative_to(run)


def test_the_transfer_set_is_published_with_its_teacher_cache(private_run, monkeypatch):
    """A run with a teacher cache publishes a reinforced transfer set: the distill stage's shards,
    byte for byte, with the published rows' digest, the teacher's name, licence and FLOPs."""
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    from hf_task_distill.data.fingerprints import transfer_set_digest
    from hf_task_distill.hub import download
    from hf_task_distill.teacher_cache import TeacherCache

    run = private_run["run"]
    published = run / "publish" / "transfer_set"
    local = run / "distill" / "teacher_cache"
    shards = sorted(p.name for p in local.glob("shard-*.safetensors"))
    assert shards and shards == sorted(p.name for p in (published / "teacher_cache").glob("shard-*"))
    assert all((local / n).read_bytes() == (published / "teacher_cache" / n).read_bytes() for n in shards)
    ledger = json.loads((run / "publish" / "student" / "compute_ledger.json").read_text())["entries"]
    (teacher,) = [e for e in ledger if e["work"] == "teacher forward (cache of 2 views)"]
    monkeypatch.setattr(download, "download_dataset_repo", lambda repo_id, **kwargs: str(published))
    cache = TeacherCache.from_hub("me/colours-transfer", num_views=2)
    record = cache.published
    assert record["teacher"] == teacher["model"] == "my-teacher (local), finetuned"
    assert record["teacher_license"] == "apache-2.0"
    assert record["teacher_flops"] == pytest.approx(teacher["flops_per_image"] * teacher["images"])
    rows = cache.published_transfer_set()
    transfer = load_from_disk(run / "transfer" / "data")
    assert transfer_set_digest(rows, "image") == transfer_set_digest(transfer, "image")
    assert record["transfer_set"] == {"rows": len(transfer), "digest": transfer_set_digest(rows, "image"),
                                      "data_files": "data/*.parquet"}  # fmt: skip
    card = DatasetCard.load(published / "README.md")
    assert "Teacher: `my-teacher (local), finetuned`" in card.text and "`apache-2.0`" in card.text
    assert f"**{record['teacher_flops']:.3g}**" in card.text and "reinforced" in card.data.tags


# -- pushing with the Hub out of reach ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["offline-mode", "no-connection"])
def test_a_push_without_the_hub_says_so_and_keeps_the_folders(
    private_run, tmp_path, monkeypatch, capsys, how
):
    import httpx2 as httpx
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    run = tmp_path / "copy"
    shutil.copytree(private_run["run"], run)
    argv = [a if a != str(private_run["run"]) else str(run) for a in private_run["argv"]]
    argv += ["--hub_model_id", "me/colours-student", "--hub_dataset_id", "me/colours-transfer"]

    def refuse(request):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    monkeypatch.setenv("HF_TOKEN", "hf_" + "0" * 32)  # a user who logged in, then lost the Hub

    if how == "no-connection":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        huggingface_hub.set_client_factory(
            lambda: httpx.Client(
                transport=httpx.MockTransport(refuse), event_hooks={"request": [hf_request_event_hook]}
            )
        )
    try:
        assert main(["push", *argv]) == 2
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("hf-task-distill: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    err = errors[0]
    assert "could not reach the Hugging Face Hub" in err
    assert ("offline mode" in err) == (how == "offline-mode")
    assert ("name resolution" in err) == (how == "no-connection")
    student, transfer = run / "publish" / "student", run / "publish" / "transfer_set"
    assert f"{student} and {transfer} are complete" in err and "the same push command" in err
    assert f"hf upload me/colours-student {student}" in err
    # the folders the message points at are there, whole, and now name their Hub repos
    assert (student / "model.safetensors").exists() and list((transfer / "data").glob("*.parquet"))
    assert 'model="me/colours-student"' in (student / "README.md").read_text()
    assert not _leaks(_published_files(run), [MARKER, str(run)])


def test_an_unreachable_hub_with_an_id_without_owner_offers_only_the_push_command():
    from hf_task_distill.hub.publish import _upload_failure

    pending = [("/r/publish/student", "colours-student", "model")]  # whoami could not resolve the owner
    message = _upload_failure(ConnectionError("no route"), "colours-student", pending, [])
    assert message.startswith("could not reach the Hugging Face Hub to upload colours-student (no route)")
    assert message.endswith("is complete: upload later with the same push command")  # not `hf upload`
    resolved = _upload_failure(ConnectionError("no route"), "me/s", [("/r/s", "me/s", "model")], [])
    assert resolved.endswith("or with `hf upload me/s /r/s`")


def test_a_failed_upload_names_what_went_up_and_what_is_left(monkeypatch):
    """The student went up, the transfer set did not: the message says so and gives its command;
    a Hub that answers with an error is a refusal, not an unreachable Hub."""
    from types import SimpleNamespace

    import httpx2 as httpx
    from huggingface_hub.errors import HfHubHTTPError

    from hf_task_distill.hub import HubUploadError, publish

    def upload(folder, repo_id, *, repo_type, private):
        if repo_type == "dataset":
            request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
            raise HfHubHTTPError(
                "403 Forbidden: you cannot write to me", response=httpx.Response(403, request=request)
            )
        return "https://huggingface.co/me/s/commit/1"

    monkeypatch.setattr(publish, "upload_folder", upload)
    run = SimpleNamespace(hub_private=False)
    outputs = {"student": "/r/publish/student", "transfer_set": "/r/publish/transfer_set"}
    with pytest.raises(HubUploadError) as failure:  # the ids as check_push resolved them
        publish._push(run, outputs, {"model": "me/s", "dataset": "me/t"})
    message = str(failure.value)
    assert message.startswith("the Hugging Face Hub refused the upload to me/t (403 Forbidden")
    assert "me/s was uploaded" in message and "/r/publish/transfer_set is complete" in message
    assert "hf upload me/t /r/publish/transfer_set --repo-type dataset" in message
    assert "/r/publish/student is" not in message and "\n" not in message
    assert isinstance(failure.value, OSError)  # the CLI prints it as one error line


# -- naming sources for publishing ------------------------------------------------------------------
def test_public_name_keeps_hub_ids_and_reduces_local_paths_to_their_folder(tmp_path, monkeypatch):
    import getpass
    import socket

    from hf_task_distill.demo.miniature import mini_vfm_path
    from hf_task_distill.hub.names import hub_id, public_name

    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    monkeypatch.setattr(socket, "gethostname", lambda: "alices-laptop.example.org")
    folder = tmp_path / MARKER / "my-teacher"
    folder.mkdir(parents=True)
    cases = {
        "facebook/dinov2-large": "facebook/dinov2-large",
        "resnet18": "resnet18",
        "hf-hub:timm/resnet18.a1_in1k": "hf-hub:timm/resnet18.a1_in1k",
        str(folder): "my-teacher (local)",
        str(folder) + "/": "my-teacher (local)",
        "/home/bob/models/vit-b/": "vit-b (local)",  # need not exist to be a path
        "~/models/vit-b": "vit-b (local)",
        "./runs/cub": "cub (local)",
        "runs/cub/teacher/model": "model (local)",
        "C:\\Users\\bob\\teacher": "teacher (local)",
        "local-dir:/home/bob/student": "student (local)",
        "/home/alice": "folder (local)",  # a folder named after the user or the host hides that name
        "/srv/alices-laptop-models": "folder (local)",
        mini_vfm_path(): "mini-vfm (shipped with hf_task_distill)",
        None: None,
    }
    for source, expected in cases.items():
        assert public_name(source) == expected, source
        assert public_name(public_name(source)) == expected  # idempotent: safe to apply twice
    assert hub_id("facebook/dinov2-large") == "facebook/dinov2-large" and hub_id("hf-hub:timm/r") == "timm/r"
    assert hub_id(str(folder)) is None and hub_id("my-teacher (local)") is None and hub_id("resnet18") is None


def test_cards_name_sources_publicly_whoever_fills_in_their_data(tmp_path):
    """The render functions themselves pass every source through public_name: a caller that fills
    the card data with raw paths (the library API, not the pipeline) publishes no path either."""
    from hf_task_distill.hub import StudentCardData, TeacherCardData, TransferSetCardData
    from hf_task_distill.hub.cards import render_student_card, render_teacher_card, render_transfer_set_card

    home = str(tmp_path / MARKER)
    teacher = TeacherCardData(
        model_name="t", base_model=f"{home}/vit", strategy="full", task_name="colours", label_names=LABELS,
        train_size=8, validation_source="hold-out",
    )  # fmt: skip
    student = StudentCardData(
        model_name="s", architecture="resnet18", task_name="colours", label_names=LABELS,
        teacher_base=f"{home}/vit", teacher_strategy="none", distill_loss="kl", temperature=1.0,
        transfer_description="some images", train_size=8, image_size=32, eval_split="test", eval_images=4,
        results={}, base_model=f"{home}/resnet18-start", teacher_repo=f"{home}/vit",
        transfer_repo=f"{home}/transfer", dataset_id=f"{home}/colours",
    )  # fmt: skip
    transfer = TransferSetCardData(
        name="x", task_name="colours", pool_name=f"{home}/pool", stats={"encoder": f"{home}/vit", "final": 3}
    )
    cards = [
        str(render_teacher_card(teacher)),
        str(render_student_card(student)),
        str(render_transfer_set_card(transfer)),
    ]
    assert not [card for card in cards if MARKER in card or home in card]
    assert "`vit (local)`" in cards[0] and "`vit (local)`" in cards[1] and "`pool (local)`" in cards[2]
    assert "base_model:" not in cards[0] and "base_model:" not in cards[1]  # metadata takes Hub ids only


# -- the demo's figures --------------------------------------------------------------------------------
RESULTS = {
    "teacher": {"accuracy": 0.9, "balanced_accuracy": 0.85, "macro_f1": 0.8},
    "student, distilled": {"accuracy": 0.7, "balanced_accuracy": 0.65, "macro_f1": 0.6},
    "student, distilled + finetuned": {"accuracy": 0.95, "balanced_accuracy": 0.94, "macro_f1": 0.93},
}


def test_the_figures_draw_the_numbers_they_are_given():
    from hf_task_distill.plots import confusion_matrix_figure, results_figure

    axes = results_figure(RESULTS).axes[0]
    bars = {c.get_label(): [round(b.get_width(), 6) for b in c] for c in axes.containers}
    assert bars == {
        "accuracy": [0.9, 0.7, 0.95],
        "balanced accuracy": [0.85, 0.65, 0.94],
        "macro F1": [0.8, 0.6, 0.93],
    }  # one bar per model and metric, models in the order given
    assert [t.get_text() for t in axes.get_yticklabels()] == list(RESULTS)

    matrix = [[5, 1, 0], [2, 3, 0], [0, 0, 4]]
    axes = confusion_matrix_figure(["cat", "dog", "owl"], matrix, title="student").axes[0]
    assert np.array_equal(axes.images[0].get_array(), matrix)  # rows true, columns predicted
    assert [t.get_text() for t in axes.get_xticklabels()] == ["cat", "dog", "owl"]
    assert "accuracy 0.800" in axes.get_title()  # 12 of 15 on the diagonal
    many = confusion_matrix_figure([str(i) for i in range(50)], np.eye(50, dtype=int)).axes[0]
    assert not many.get_xticklabels() and not many.texts  # 50 classes: colours only, no unreadable text


def test_the_demo_writes_a_results_chart_and_a_confusion_matrix(tmp_path, caplog):
    from hf_task_distill.demo import figures_summary

    labels = ["0", "1", "2"]
    (tmp_path / "evaluate").mkdir()
    matrices = {"student, distilled + finetuned": [[9, 1, 0], [0, 10, 0], [1, 0, 9]]}
    (tmp_path / "evaluate" / "confusion_matrices.json").write_text(
        json.dumps({"labels": labels, "matrices": matrices})
    )
    summary = figures_summary(str(tmp_path), RESULTS)
    for name in ("results.png", "confusion_matrix.png"):
        assert str(tmp_path / name) in summary
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200

    (tmp_path / "evaluate" / "confusion_matrices.json").unlink()
    (tmp_path / "confusion_matrix.png").unlink()
    with caplog.at_level("INFO", logger="hf_task_distill.plots"):
        summary = figures_summary(str(tmp_path), RESULTS)  # an evaluate stage that wrote no matrices
    assert "results.png" in summary and "confusion_matrix.png" not in summary
    assert "confusion_matrices.json does not exist" in caplog.text


def test_the_demo_without_matplotlib_says_how_to_get_the_figures(tmp_path, monkeypatch):
    from hf_task_distill.demo import figures_summary

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    summary = figures_summary(str(tmp_path), RESULTS)
    assert summary.startswith("Figures skipped:") and "pip install 'hf-task-distill[demo]'" in summary
    assert not list(tmp_path.iterdir())


# -- the README ----------------------------------------------------------------------------------------
def test_the_readme_says_how_long_the_tests_take_and_how_to_save_the_cuda_download():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    setup = " ".join(readme.split("## Set up", 1)[1].split("\n## ", 1)[0].split())  # one line
    assert "10-20 minutes on 2 CPU cores" in setup
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in setup


def test_the_published_student_is_the_safetensors_export_of_the_finetuned_model(private_run, tmp_path):
    """Publishing writes the student through the export registry's safetensors format: the same
    files, byte for byte, plus the card, the compute ledger and the results."""
    import filecmp
    import os

    from hf_task_distill.export import export_student

    run = private_run["run"]
    exported = export_student(run / "finetune" / "model", output_dir=tmp_path / "exported")["safetensors"]
    published = run / "publish" / "student"
    names = {os.path.basename(f) for f in exported}
    assert {"config.json", "model.safetensors"} <= names
    assert {p.name for p in published.iterdir()} == names | {
        "README.md",
        "compute_ledger.json",
        "results.json",
    }
    assert all(filecmp.cmp(f, published / os.path.basename(f), shallow=False) for f in exported)
