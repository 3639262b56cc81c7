"""``hf-task-distill push`` through the real ``huggingface_hub`` client, against the loopback Hub.

One small finished run (``finished_run``: retrieval transfer set, ONNX export) built offline with a
planted home directory, user name and run path; each push runs ``python -m hf_task_distill.cli push``
in a subprocess whose environment is a user's (``hub.client_env``: ``HF_ENDPOINT``, online, a token),
and the test asserts on what the server holds (``hub.storage``) and on the run's manifest.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import write_run_inputs

CLI = [sys.executable, "-m", "hf_task_distill.cli"]
USER = "marker" + secrets.token_hex(3)  # a user name no file would hold by chance
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _user_env(home: pathlib.Path) -> dict:
    return {"HOME": str(home), "USER": USER, "LOGNAME": USER, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, vfm_dirs):
    """A run whose every stage is complete (offline), all of it under a planted home directory."""
    home = tmp_path_factory.mktemp(f"home-{USER}")
    root = home / "projects"
    write_run_inputs(
        root, task="colours", pool="web-pool", sizes=(32, 16, 96), teacher_from=vfm_dirs["dinov2"],
        teacher="my-teacher",
    )  # fmt: skip
    run = root / "colours-run"  # named by the user: their name is in the home directory
    argv = [
        "--dataset", str(root / "colours"), "--per_class", "4",
        "--teacher", str(root / "my-teacher"), "--teacher_strategy", "full", "--teacher_epochs", "1",
        "--transfer", "retrieval", "--pool", str(root / "web-pool"), "--per_query_k", "4",
        "--leakage_threshold", "0.9999",
        "--student", str(root / "student-start"), "--pretrained_student",
        "--distill_epochs", "1", "--finetune_epochs", "1", "--baseline", "false",
        "--export_formats", "onnx", "--batch_size", "10", "--output_dir", str(run),
    ]  # fmt: skip
    env = {**os.environ, **_user_env(home)}
    done = subprocess.run([*CLI, "run", *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"home": home, "root": root, "run": run, "argv": argv, "logs": [done.stdout, done.stderr]}


def _copy(finished_run, tmp_path) -> pathlib.Path:
    """A copy of the finished run under the planted home, so that each test pushes its own."""
    run = finished_run["root"] / f"{finished_run['run'].name}-{tmp_path.name}"
    shutil.copytree(finished_run["run"], run)
    return run


def _push(hub, finished_run, run, model, dataset=None, *, token="default", flags=()):
    """``hf-task-distill push`` on ``run`` as a user runs it: a fresh process, online, the planted home."""
    home = finished_run["home"]
    env = {**hub.client_env(home / ".cache" / "huggingface", token=token), **_user_env(home)}
    argv = [*CLI, "push", "--output_dir", str(run), "--hub_model_id", model, *flags]
    argv += ["--hub_dataset_id", dataset] if dataset else []
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=300, cwd=home.parent
    )  # not under home: paths in messages show as ~/...


def _manifest(run: pathlib.Path) -> dict | None:
    path = run / "publish" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _uploads(hub, repo_type: str, repo_id: str) -> list[tuple[str, dict]]:
    """The repo's commits after the one creating it (``.gitattributes``), oldest first."""
    return list(reversed(hub.storage.history(repo_type, repo_id, "main")))[1:]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hf-task-distill: error:")]


@pytest.fixture(scope="module")
def pushed(finished_run, loopback_hub, tmp_path_factory):
    """The finished run pushed once; then the same command again."""
    hub, run = loopback_hub, _copy(finished_run, tmp_path_factory.mktemp("pushed"))
    model, dataset = "alice/colours-student", "alice/colours-transfer"
    started = time.perf_counter()
    first = _push(hub, finished_run, run, model, dataset)
    seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = _manifest(run)
    requests_before = len(hub.app.requests)
    second = _push(hub, finished_run, run, model, dataset)
    assert second.returncode == 0, second.stderr[-3000:]
    rerun_requests = hub.app.requests[requests_before:]
    return dict(
        run=run, model=model, dataset=dataset, manifest=manifest, rerun_manifest=_manifest(run),
        outputs=[first, second], rerun_requests=rerun_requests, seconds=seconds,
    )  # fmt: skip


def test_push_uploads_student_and_transfer_set_in_one_commit_each(pushed, loopback_hub):
    hub, run = loopback_hub, pushed["run"]
    ((student_commit, student),) = _uploads(hub, "model", pushed["model"])
    ((transfer_commit, transfer),) = _uploads(hub, "dataset", pushed["dataset"])
    local_student = run / "publish" / "student"
    expected = {str(p.relative_to(local_student)) for p in local_student.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= expected
    assert any(name.startswith("onnx/") and name.endswith(".onnx") for name in expected)
    assert set(student["files"]) == expected | {".gitattributes"}
    for name in expected:  # the same bytes, weights and ONNX through LFS
        entry = student["files"][name]
        assert hub.storage.object_path(entry["sha256"]).read_bytes() == (local_student / name).read_bytes()
    assert student["files"]["model.safetensors"]["lfs"]
    shards = [name for name in transfer["files"] if name.startswith("data/") and name.endswith(".parquet")]
    assert shards and {"README.md", "contact_sheet.png"} <= set(transfer["files"])
    assert all(transfer["files"][s]["lfs"] for s in shards)
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(
        io.BytesIO(hub.storage.object_path(transfer["files"][shards[0]]["sha256"]).read_bytes())
    )
    images = table.column("image").to_pylist()
    assert images and all(
        cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n" or cell["bytes"][:2] == b"\xff\xd8" for cell in images
    )
    # the manifest records the commit ids the server made, not only their URLs
    outputs = pushed["manifest"]["outputs"]
    assert (
        outputs["student_commit_id"] == student_commit
        and outputs["transfer_set_commit_id"] == transfer_commit
    )
    assert student_commit in outputs["student_commit"] and transfer_commit in outputs["transfer_set_commit"]


PULL_TRANSFER_SET = """
    import hashlib, json, os
    import numpy as np
    from datasets import load_dataset

    rows = load_dataset(os.environ["REPO"], split="train", revision=os.environ["COMMIT"])
    pixels = [hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest() for image in rows["image"]]
    print("RESULT " + json.dumps(dict(columns=rows.column_names, pixels=pixels, features=str(rows.features))))
"""


def test_the_pushed_transfer_set_loads_back_with_load_dataset_with_the_same_rows_and_pixels(
    pushed, loopback_hub, tmp_path
):
    import hashlib

    import numpy as np
    from datasets import load_from_disk
    from test_loopback_hub import run_client

    commit = pushed["manifest"]["outputs"]["transfer_set_commit_id"]
    out = run_client(loopback_hub, tmp_path, PULL_TRANSFER_SET, REPO=pushed["dataset"], COMMIT=commit)
    local = load_from_disk(str(pushed["run"] / "transfer" / "data"))
    assert out["columns"] == local.column_names and out["features"] == str(local.features)
    expected = [hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest() for im in local["image"]]
    assert len(expected) > 10 and out["pixels"] == expected  # every row, in order, pixel for pixel


def test_pushing_a_pushed_run_again_uploads_nothing(pushed, loopback_hub):
    hub = loopback_hub
    assert (
        len(_uploads(hub, "model", pushed["model"])) == 1
        and len(_uploads(hub, "dataset", pushed["dataset"])) == 1
    )
    writes = [(m, p) for m, p, _ in pushed["rerun_requests"] if m in ("PUT", "POST") and "whoami" not in p]
    assert not writes, writes  # the publish stage is complete with these settings: skipped
    assert pushed["rerun_manifest"] == pushed["manifest"]
    assert "stage publish: complete" in pushed["outputs"][1].stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupted_push_claims_nothing_and_the_same_command_completes_it(
    finished_run, loopback_hub, tmp_path, when
):
    """The student goes up, the transfer set's commit connection drops (``before``: the commit is lost;
    ``after``: it was made, its answer lost); the student's LFS batch request drops too (``before``).
    No manifest claims the push; the same command again leaves one upload commit per repo."""
    hub, run = loopback_hub, _copy(finished_run, tmp_path)
    model, dataset = f"alice/dropped-{when}-student", f"alice/dropped-{when}-transfer"
    published = _manifest(run)  # the offline run's publish stage: folders, no commits
    assert published is not None and "student_commit_id" not in published["outputs"]
    hub.app.drop_connection("POST", f"^/api/datasets/{dataset}/commit/main$", when=when)
    if when == "before":
        hub.app.drop_connection("POST", f"^/{model}.git/info/lfs/objects/batch$")

    failed = _push(hub, finished_run, run, model, dataset)

    assert not hub.app.pending_faults()
    assert failed.returncode == 2 and len(_errors(failed.stderr)) == 1, failed.stderr[-3000:]
    assert f"{model} was uploaded" in _errors(failed.stderr)[0] and "the same push command" in failed.stderr
    assert _manifest(run) is None  # no manifest at all, let alone one claiming the push
    assert len(_uploads(hub, "dataset", dataset)) == (1 if when == "after" else 0)

    done = _push(hub, finished_run, run, model, dataset)

    assert done.returncode == 0, done.stderr[-3000:]
    ((student_commit, _),) = _uploads(hub, "model", model)
    ((transfer_commit, transfer),) = _uploads(hub, "dataset", dataset)
    assert any(name.endswith(".parquet") for name in transfer["files"])
    outputs = _manifest(run)["outputs"]
    assert (outputs["student_commit_id"], outputs["transfer_set_commit_id"]) == (
        student_commit,
        transfer_commit,
    )


def _hold(hub, path: str):
    """Hold requests to ``path`` in the server until the returned event is set, then refuse them
    unhandled (503): a client killed while its request waits has sent it, and it never takes effect."""
    inner, arrived, release = hub.app.flask.wsgi_app, threading.Event(), threading.Event()

    def held(environ, start_response):
        if environ.get("PATH_INFO") != path:
            return inner(environ, start_response)
        arrived.set()
        release.wait(120)
        start_response("503 SERVICE UNAVAILABLE", [("Content-Length", "0")])
        return [b""]

    hub.app.flask.wsgi_app = held
    return arrived, release, lambda: setattr(hub.app.flask, "wsgi_app", inner)


def test_a_push_killed_mid_upload_claims_nothing_and_the_same_command_completes_it(
    finished_run, loopback_hub, tmp_path
):
    hub, run = loopback_hub, _copy(finished_run, tmp_path)
    model, dataset = "alice/killed-student", "alice/killed-transfer"
    arrived, release, restore = _hold(hub, f"/api/models/{model}/commit/main")
    home = finished_run["home"]
    env = {**hub.client_env(home / ".cache" / "huggingface"), **_user_env(home)}
    argv = [*CLI, "push", "--output_dir", str(run), "--hub_model_id", model, "--hub_dataset_id", dataset]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert arrived.wait(240), "the push never reached its commit"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        release.set()
        restore()
    assert _manifest(run) is None
    assert _uploads(hub, "model", model) == []  # created, nothing committed
    assert not hub.storage.repo_dir("dataset", dataset).exists()  # the push never reached it

    done = _push(hub, finished_run, run, model, dataset)

    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_uploads(hub, "model", model)) == 1 and len(_uploads(hub, "dataset", dataset)) == 1
    assert _manifest(run)["outputs"]["student_commit_id"] == _uploads(hub, "model", model)[0][0]


def _server_files(hub, tmp_path) -> list[pathlib.Path]:
    """Every file of every commit of every repo our pushes made, written out under its own name."""
    out = []
    for record in hub.storage.root.glob("repos/*/alice/*/commits/*.json"):
        commit = json.loads(record.read_text())
        folder = tmp_path / "server" / record.parent.parent.name / record.stem
        for name, entry in commit["files"].items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub.storage.object_path(entry["sha256"]), target)
            out.append(target)
        out.append(record)  # the commit record itself: its message
    return out


def test_nothing_of_the_machine_or_the_token_reaches_the_hub_or_the_logs(pushed, loopback_hub, tmp_path):
    hub, run = loopback_hub, pushed["run"]
    home = str(run.parents[1])
    needles = [str(run), home, USER, socket.gethostname(), hub.token]
    files = _server_files(hub, tmp_path)
    assert {p.name for p in files} >= {"model.safetensors", "contact_sheet.png", "README.md"}
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".onnx" for p in files)
    found = [f"{p.relative_to(tmp_path)}: {n}" for p in files for n in needles if _holds(p, n)]
    assert not found, found
    logs = {"hf-task-distill.log": (run / "hf-task-distill.log").read_text()}
    for i, done in enumerate(pushed["outputs"]):
        logs[f"push {i} stdout"], logs[f"push {i} stderr"] = done.stdout, done.stderr
    assert "stage publish" in logs["hf-task-distill.log"]
    leaks = [
        f"{where}: {line}"
        for where, text in logs.items()
        for line in text.splitlines()
        for n in needles
        if _in_text(n, line)
    ]
    assert not leaks, "\n".join(leaks[:8])
    assert "~/projects/colours-run-pushed0" in logs["push 0 stdout"]  # the run, named without the home


def _in_text(needle: str, text: str) -> bool:
    """``needle`` in ``text``; a short one (a host name such as ``vm``) as a whole word only."""
    return (
        needle in text
        if len(needle) >= 8
        else re.search(rf"(?<![\w.-]){re.escape(needle)}(?![\w-])", text) is not None
    )


def _holds(path: pathlib.Path, needle: str) -> bool:
    """Whether the file's bytes (as text, for a short needle, which binary weights hold by chance) or
    what its format hides (parquet values, PNG text, safetensors metadata) hold ``needle``."""
    from test_publishing import _hidden_text

    raw = path.read_bytes()
    if len(needle) >= 8 and needle.encode() in raw:
        return True
    text = path.suffix in (".json", ".md", ".txt", "")  # weights, ONNX, images: a short needle by chance
    return (text and _in_text(needle, raw.decode("utf-8", "replace"))) or _in_text(needle, _hidden_text(path))


CARDS = """
    import json, os
    from huggingface_hub import DatasetCard, ModelCard

    model, dataset = ModelCard.load(os.environ["MODEL"]), DatasetCard.load(os.environ["DATASET"])
    model.validate()  # the Hub's own check: POST /api/validate-yaml
    dataset.validate()
    try:
        ModelCard("---\\n- not a mapping\\n---\\n# card").validate()
        broken = None
    except ValueError as error:
        broken = str(error)
    print("RESULT " + json.dumps(dict(model=str(model), dataset=str(dataset), broken=broken)))
"""


def test_pushed_cards_validate_on_the_hub_and_render_lineage_results_and_licence(
    pushed, loopback_hub, tmp_path
):
    from conftest import check_card_metadata
    from test_loopback_hub import run_client

    hub = loopback_hub
    out = run_client(hub, tmp_path, CARDS, MODEL=pushed["model"], DATASET=pushed["dataset"])
    assert out["broken"]  # the same check refuses a card whose metadata is not a mapping
    assert any(path == "/api/validate-yaml" and status == 200 for _, path, status in hub.app.requests)
    card = tmp_path / "README.md"
    card.write_text(out["model"])
    metadata = check_card_metadata(card)
    assert (
        metadata["datasets"] == [pushed["dataset"]]
        and f"transfer-set:{pushed['dataset']}" in metadata["tags"]
    )
    results = json.loads((pushed["run"] / "publish" / "student" / "results.json").read_text())["results"]
    (index,) = metadata["model-index"]
    accuracy = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}["accuracy"]
    assert index["name"] == pushed["model"] and accuracy == pytest.approx(
        results["student, distilled + finetuned"]["accuracy"]
    )
    text = out["model"]
    assert re.search(
        r"^## How it was made\n\n1\. \*\*Teacher\*\*: `my-teacher \(local\)`", text, re.M
    )  # lineage
    assert re.search(r"^## Results on the test split \(\d+ images\)$", text, re.M)
    assert re.search(r"^\| student, distilled \+ finetuned \| [\d.]+ \|", text, re.M)
    assert re.search(r"^## Lineage and licences\n\n\| role \| source \| revision \| licence \|", text, re.M)
    assert re.search(
        r"^> \*\*Licence\*\*: the teacher `my-teacher \(local\)` declares no licence", text, re.M
    )
    assert re.search(r"^## License and provenance$", out["dataset"], re.M)
    assert re.search(r"did not declare a license", out["dataset"])


def test_a_command_that_does_not_push_keeps_the_pushed_publish_and_its_commit_ids(
    pushed, finished_run, tmp_path
):
    run = _copy({**finished_run, "run": pushed["run"]}, tmp_path)
    home = finished_run["home"]
    env = {**os.environ, **_user_env(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*CLI, "run", "--output_dir", str(run)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage publish: complete" in done.stderr and "stage publish: redoing" not in done.stderr
    assert _manifest(run) == pushed["rerun_manifest"]  # the commit ids of the push are still recorded
    assert _manifest(run)["outputs"]["student_commit_id"]


def test_ids_name_their_namespace_in_any_case_as_the_hub_does():
    from hf_task_distill.hub.publish import _writable_repo_id

    me = {
        "name": "user",
        "orgs": [{"name": "alice", "roleInOrg": "write"}, {"name": "readers", "roleInOrg": "read"}],
    }
    assert _writable_repo_id("--hub_model_id", "ALICE/s", me) == "ALICE/s"
    assert _writable_repo_id("--hub_model_id", "User/s", me) == "User/s"
    with pytest.raises(ValueError, match=r"your role in the organisation 'readers' is read"):
        _writable_repo_id("--hub_model_id", "Readers/s", me)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("invalid repo id", r"--hub_model_id 'alice/bad name!' is not a Hub repo id \(owner/name\)"),
        ("no token", r"no Hugging Face token found .*: log in with `hf auth login` or set HF_TOKEN"),
        ("wrong token", r"the Hugging Face Hub refused the token \(401\): log in with `hf auth login` or set HF_TOKEN"),
        ("unfinished run", r"push publishes a finished run, and the run in ~/projects/\S+ has not completed stages finetune, evaluate: finish it"),
        ("foreign namespace", r"--hub_model_id 'mallory/refused-foreign-namespace': the Hugging Face token of 'user' cannot write there \('mallory' is neither your user name nor one of your organisations\); it can write under 'user', 'alice', 'lineage', 'someone'$"),
        ("read-only organisation", r"--hub_model_id 'readers/refused-read-only-organisation': .* cannot write there \(your role in the organisation 'readers' is read\)"),
    ],
    ids=["invalid-repo-id", "no-token", "wrong-token", "unfinished-run", "foreign-namespace", "read-only-org"],
)  # fmt: skip
def test_a_push_that_cannot_succeed_says_why_in_one_line_and_uploads_nothing(
    finished_run, loopback_hub, tmp_path, case, expected
):
    hub, run = loopback_hub, _copy(finished_run, tmp_path)
    owner = {"foreign namespace": "mallory", "read-only organisation": "readers"}.get(case, "alice")
    model = "alice/bad name!" if case == "invalid repo id" else f"{owner}/refused-{case.replace(' ', '-')}"
    token = {"no token": None, "wrong token": "hf_" + secrets.token_hex(16)}.get(case, "default")
    if case == "unfinished run":
        for stage in ("finetune", "evaluate"):
            (run / stage / "manifest.json").unlink()
    before, published = len(hub.app.requests), _manifest(run)
    assert published is not None  # the run's own publish folders, written without a push

    done = _push(hub, finished_run, run, model, "alice/refused-transfer", token=token)

    errors = _errors(done.stderr)
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(expected, errors[0]), errors[0]
    writes = [(m, p) for m, p, _ in hub.app.requests[before:] if p != "/api/whoami-v2"]
    assert not writes, writes  # not even a repo created
    assert not (hub.storage.root / "repos" / "models" / owner / model.split("/")[1]).exists()
    assert _manifest(run) == published  # refused before the publish stage was touched
    if case == "unfinished run":
        assert (
            not (run / "finetune" / "manifest.json").exists()
            and not (run / "evaluate" / "manifest.json").exists()
        )


def test_a_model_id_without_owner_is_pushed_to_the_token_owner_and_named_in_full(
    finished_run, loopback_hub, tmp_path
):
    hub, run = loopback_hub, _copy(finished_run, tmp_path)
    model, dataset = f"bare-{tmp_path.name[-12:]}", f"bare-transfer-{tmp_path.name[-12:]}"

    done = _push(hub, finished_run, run, model, dataset)

    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_uploads(hub, "model", f"user/{model}")) == 1  # whoami's name, as create_repo reads it
    assert len(_uploads(hub, "dataset", f"user/{dataset}")) == 1
    outputs = _manifest(run)["outputs"]
    assert f"/user/{model}/commit/" in outputs["student_commit"]
    assert f"/datasets/user/{dataset}/commit/" in outputs["transfer_set_commit"]
    card = (run / "publish" / "student" / "README.md").read_text()
    assert re.search(rf"^model-index:\n- name: user/{model}$", card, re.M), card[:800]
    assert re.search(rf"^- user/{dataset}$", card, re.M)  # the card's datasets: the full id
    assert re.search(rf"^# user/{model}$", card, re.M)  # the title
    assert f'timm.create_model("hf-hub:user/{model}", pretrained=True)' in card  # usage that works


def test_run_with_push_to_hub_and_a_wrong_token_fails_before_the_teacher_is_finetuned(
    finished_run, loopback_hub, tmp_path
):
    hub, home = loopback_hub, finished_run["home"]
    argv = list(finished_run["argv"])
    out = finished_run["root"] / f"never-run-{tmp_path.name}"
    argv[argv.index("--output_dir") + 1] = str(out)
    env = {
        **hub.client_env(home / ".cache" / "huggingface", token="hf_" + secrets.token_hex(16)),
        **_user_env(home),
    }
    command = [*CLI, "run", *argv, "--push_to_hub", "--hub_model_id", "alice/never-trained"]

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=home.parent)

    errors = _errors(done.stderr)
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "the Hugging Face Hub refused the token (401)" in errors[0]
    assert not (out / "teacher" / "manifest.json").exists() and not (out / "teacher" / "model").exists()
    assert "stage teacher" not in done.stderr


def test_messages_name_local_folders_without_the_home_directory(tmp_path, monkeypatch):
    from hf_task_distill.files import display_path

    home = tmp_path / f"home-{USER}"
    (home / "work" / "runs").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # not under home: home's folders as ~/...
    assert display_path(home / "work" / "runs") == "~/work/runs" and display_path(home) == "~"
    assert display_path(tmp_path / "elsewhere") == "elsewhere"
    assert display_path("/") == "/"
    monkeypatch.chdir(home / "work")  # inside home: relative to the working directory
    assert display_path(home / "work" / "runs") == "runs" and display_path(home / "other") == "~/other"
