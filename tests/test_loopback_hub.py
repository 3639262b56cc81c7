"""The real huggingface_hub, transformers, timm and datasets clients against the loopback Hub.

Every client call runs in a subprocess whose environment is a user's (``HF_ENDPOINT`` pointing at the
server, online, a token, an empty ``HF_HOME``); only the HTTP boundary is stood in for.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import make_colour_dataset, tiny_dinov2, tiny_processor
from datasets import DatasetDict
from transformers import Dinov2Model, pipeline

_COMMIT = re.compile(r"[0-9a-f]{40}")


def run_client(hub, tmp_path, code: str, *, token="default", **env) -> dict:
    """Run ``code`` (which ends by printing ``RESULT <json>``) as a client process; its result dict."""
    home = tmp_path / f"hf_home_{len(list(tmp_path.glob('hf_home_*')))}"
    full_env = {**hub.client_env(home, token=token), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT ") :])


def head_of(hub, repo_type: str, repo_id: str) -> tuple[str, dict]:
    return hub.storage.resolve(repo_type, repo_id, "main")


TRANSFORMERS_ROUND_TRIP = """
    import json, os, pathlib, torch
    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    repo, folder, pixels = os.environ["REPO"], pathlib.Path(os.environ["FOLDER"]), torch.load(os.environ["PIXELS"])
    api = HfApi()
    api.create_repo(repo)
    first = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="tiny classifier")
    snapshot = pathlib.Path(snapshot_download(repo))
    files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    same_bytes = all((snapshot / f).read_bytes() == (folder / f).read_bytes() for f in os.listdir(folder))
    with torch.no_grad():
        logits = AutoModelForImageClassification.from_pretrained(repo).eval()(pixels).logits
    predictions = pipeline("image-classification", model=repo)(Image.open(os.environ["IMAGE"]))
    second = api.upload_file(path_or_fileobj=b"# card", path_in_repo="README.md", repo_id=repo)
    old_weights = hf_hub_download(repo, "model.safetensors", revision=first.oid)
    try:
        hf_hub_download(repo, "README.md", revision=first.oid)
        readme_at_first = True
    except EntryNotFoundError:
        readme_at_first = False
    try:  # a commit based on a stale parent is refused, not merged over the newer one
        api.upload_file(path_or_fileobj=b"late", path_in_repo="late.txt", repo_id=repo, parent_commit=first.oid)
        stale = None
    except HfHubHTTPError as error:
        stale = error.response.status_code
    titles = [c.title for c in api.list_repo_commits(repo)]
    seeded = AutoModel.from_pretrained("facebook/dinov2-large")  # seeded by the test, as users find it
    crop = dict(AutoImageProcessor.from_pretrained("facebook/dinov2-large").crop_size)
    unqualified = api.create_repo("no-namespace").repo_id  # the token owner's namespace
    fs = HfFileSystem()
    listing = sorted(fs.ls(repo, detail=False))
    with fs.open(f"{repo}/config.json") as f:
        config = json.load(f)
    print("RESULT " + json.dumps(dict(
        first=first.oid, second=second.oid, files=files, same_bytes=same_bytes, logits=logits.tolist(),
        old_weights_equal=pathlib.Path(old_weights).read_bytes() == (folder / "model.safetensors").read_bytes(),
        readme_at_first=readme_at_first, listing=listing, stale=stale, titles=titles, num_labels=len(config["id2label"]),
        readme=pathlib.Path(hf_hub_download(repo, "README.md")).read_text(), predictions=predictions,
        seeded=[type(seeded).__name__, seeded.config.hidden_size, crop], whoami=api.whoami()["name"],
        unqualified=unqualified,
    )))
"""


def test_transformers_model_pushes_in_one_commit_and_pulls_back_equal(loopback_hub, tmp_path):
    hub, repo = loopback_hub, "alice/tiny-dinov2"
    model = tiny_dinov2().eval()
    model.save_pretrained(tmp_path / "model")
    tiny_processor().save_pretrained(tmp_path / "model")
    image = make_colour_dataset(1, seed=9)[0]["image"]
    image.save(tmp_path / "image.png")
    local = pipeline("image-classification", model=model, image_processor=tiny_processor())(image)
    tiny_processor().save_pretrained(tmp_path / "seed")
    Dinov2Model(model.config).save_pretrained(tmp_path / "seed")
    seeded_commit = hub.storage.add_folder("model", "facebook/dinov2-large", tmp_path / "seed")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixels).logits

    out = run_client(
        hub,
        tmp_path,
        TRANSFORMERS_ROUND_TRIP,
        REPO=repo,
        FOLDER=str(tmp_path / "model"),
        PIXELS=str(tmp_path / "pixels.pt"),
        IMAGE=str(tmp_path / "image.png"),
    )

    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert out["files"] == [".gitattributes", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert out["same_bytes"]
    assert out["seeded"][:2] == ["Dinov2Model", 32]
    assert {k: v for k, v in out["seeded"][2].items() if v is not None} == {"height": 32, "width": 32}
    assert hub.storage.resolve("model", "facebook/dinov2-large", "main")[0] == seeded_commit
    assert out["whoami"] == "user" and out["unqualified"] == "user/no-namespace"
    assert [p["label"] for p in out["predictions"]] == [p["label"] for p in local]
    np.testing.assert_allclose(
        [p["score"] for p in out["predictions"]], [p["score"] for p in local], atol=1e-5
    )
    history = hub.storage.history("model", repo, "main")
    assert [c for c, _ in history[:2]] == [out["second"], out["first"]] and len(history) == 3  # + initial
    assert _COMMIT.fullmatch(out["first"]) and out["first"] != out["second"]
    stored = history[1][1]["files"]  # the upload: one commit holding both files
    assert stored["model.safetensors"]["lfs"] and not stored["config.json"]["lfs"]
    assert ("POST", f"/{repo}.git/info/lfs/objects/batch", 200) in hub.app.requests
    assert out["old_weights_equal"] and not out["readme_at_first"] and out["readme"] == "# card"
    assert out["listing"] == [
        f"{repo}/{f}"
        for f in (
            ".gitattributes",
            "README.md",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        )
    ]
    assert out["num_labels"] == model.config.num_labels
    assert out["stale"] == 412 and "late.txt" not in history[0][1]["files"]
    assert out["titles"] == ["Upload README.md with huggingface_hub", "tiny classifier", "initial commit"]


def _post(hub, path: str, body: bytes, content_type: str = "application/json", method: str = "POST"):
    """A raw request to the server (as a misbehaving client would send); ``(status, JSON body)``."""
    request = urllib.request.Request(
        f"{hub.endpoint}{path}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {hub.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_server_refuses_corrupt_lfs_uploads_and_commits_of_missing_lfs_objects(loopback_hub):
    hub, repo = loopback_hub, "alice/lfs-guard"
    hub.storage.create_repo("model", repo, private=False)
    before, _ = head_of(hub, "model", repo)
    data = b"weights" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch = json.dumps(
        {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 700}]}
    )
    status, answer = _post(hub, f"/{repo}.git/info/lfs/objects/batch", batch.encode())
    assert status == 200 and answer["transfer"] == "basic"
    href = answer["objects"][0]["actions"]["upload"]["href"]
    path = href[len(hub.endpoint) :]

    status, answer = _post(hub, path, data[:-1] + b"X", "application/octet-stream", "PUT")
    assert status == 400 and oid in answer["error"] and not hub.storage.has_object(oid)
    status, _ = _post(hub, path.split("?")[0] + "?sig=forged", data, "application/octet-stream", "PUT")
    assert status == 403 and not hub.storage.has_object(oid)
    lfs_file = {
        "key": "lfsFile",
        "value": {"path": "w.safetensors", "algo": "sha256", "oid": oid, "size": 700},
    }
    ndjson = b"".join(
        json.dumps(line).encode() + b"\n" for line in [{"key": "header", "value": {}}, lfs_file]
    )
    status, answer = _post(hub, f"/api/models/{repo}/commit/main", ndjson, "application/x-ndjson")
    assert status == 400 and "w.safetensors" in answer["error"] and head_of(hub, "model", repo)[0] == before

    status, _ = _post(hub, path, data, "application/octet-stream", "PUT")
    assert status == 200 and hub.storage.has_object(oid)
    status, answer = _post(hub, f"/api/models/{repo}/commit/main", ndjson, "application/x-ndjson")
    assert status == 200 and head_of(hub, "model", repo)[0] == answer["commitOid"] != before


TIMM_ROUND_TRIP = """
    import json, os, torch, timm
    from timm.models import push_to_hf_hub

    repo, pixels = os.environ["REPO"], torch.load(os.environ["PIXELS"])
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    push_to_hf_hub(model, repo, commit_message="timm student")
    pulled = timm.create_model("hf-hub:" + repo, pretrained=True).eval()
    with torch.no_grad():
        print("RESULT " + json.dumps(dict(pushed=model(pixels).tolist(), pulled=pulled(pixels).tolist())))
"""


def test_timm_model_pushes_and_creates_from_hf_hub_id(loopback_hub, tmp_path):
    hub, repo = loopback_hub, "alice/tiny-timm"
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(pixels, tmp_path / "pixels.pt")

    out = run_client(hub, tmp_path, TIMM_ROUND_TRIP, REPO=repo, PIXELS=str(tmp_path / "pixels.pt"))

    pushed, pulled = torch.tensor(out["pushed"]), torch.tensor(out["pulled"])
    assert pushed.shape == (2, 4) and pushed.std() > 0
    torch.testing.assert_close(pulled, pushed, rtol=1e-5, atol=1e-5)
    _, head = head_of(hub, "model", repo)
    assert {"config.json", "model.safetensors"} <= set(head["files"])
    assert head["files"]["model.safetensors"]["lfs"]


DATASET_ROUND_TRIP = """
    import hashlib, json, os
    import numpy as np
    from datasets import load_dataset, load_from_disk

    repo = os.environ["REPO"]
    load_from_disk(os.environ["LOCAL"]).push_to_hub(repo)
    pulled = load_dataset(repo)
    rows = {split: [(row["label"], hashlib.sha256(np.asarray(row["image"]).tobytes()).hexdigest(),
                     row["image"].size) for row in pulled[split]] for split in pulled}
    print("RESULT " + json.dumps(dict(rows=rows, features=str(pulled["train"].features))))
"""


def test_dataset_push_to_hub_then_load_dataset_gives_same_rows_and_pixels(loopback_hub, tmp_path):
    hub, repo = loopback_hub, "alice/tiny-colours"
    local = DatasetDict(train=make_colour_dataset(8, seed=5), test=make_colour_dataset(4, seed=6))
    local.save_to_disk(tmp_path / "local")
    expected = {
        split: [
            [
                row["label"],
                hashlib.sha256(np.asarray(row["image"]).tobytes()).hexdigest(),
                list(row["image"].size),
            ]
            for row in local[split]
        ]
        for split in local
    }

    out = run_client(hub, tmp_path, DATASET_ROUND_TRIP, REPO=repo, LOCAL=str(tmp_path / "local"))

    assert out["rows"] == expected
    assert "ClassLabel(names=['red', 'green', 'blue', 'yellow']" in out["features"]
    _, head = head_of(hub, "dataset", repo)
    shards = [p for p in head["files"] if p.endswith(".parquet")]
    assert {p.split("/")[-1].split("-")[0] for p in shards} == {"train", "test"}
    assert all(head["files"][p]["lfs"] for p in shards) and "README.md" in head["files"]


REFUSED_WRITES = """
    import json, os
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    def attempt(call):
        try:
            call()
            return None
        except (HfHubHTTPError, HFValidationError) as error:
            return [type(error).__name__, getattr(error.response, "status_code", None) if hasattr(error, "response")
                    else None, str(error)]

    api = HfApi()
    repo = os.environ["REPO"]
    print("RESULT " + json.dumps(dict(
        create=attempt(lambda: api.create_repo("mallory/new-repo")),
        upload=attempt(lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)),
        invalid=attempt(lambda: HfApi(token=os.environ.get("GOOD")).create_repo("alice/bad name!")),
        foreign=attempt(lambda: HfApi(token=os.environ["GOOD"]).create_repo("mallory/new-repo")),
        read_only=attempt(lambda: HfApi(token=os.environ["GOOD"]).create_repo("readers/new-repo")),
        private=attempt(lambda: HfApi(token=False).model_info(os.environ["PRIVATE"])),
        private_with_token=HfApi(token=os.environ["GOOD"]).model_info(os.environ["PRIVATE"]).private,
    )))
"""


@pytest.mark.parametrize("token", ["hf_not_the_right_token", None], ids=["wrong-token", "no-token"])
def test_writes_without_the_token_are_refused_clearly_and_store_nothing(loopback_hub, tmp_path, token):
    hub = loopback_hub
    repo, private = f"alice/guarded-{token is None}", f"alice/secret-{token is None}"
    hub.storage.create_repo("model", repo, private=False)
    hub.storage.create_repo("model", private, private=True)
    before, _ = head_of(hub, "model", repo)

    out = run_client(hub, tmp_path, REFUSED_WRITES, token=token, REPO=repo, PRIVATE=private, GOOD=hub.token)

    for call in ("create", "upload"):
        kind, status, message = out[call]
        assert status == 401 and "Invalid credentials in Authorization header" in message, out[call]
    assert out["invalid"][0] == "HFValidationError" and "alice/bad name!" in out["invalid"][2]
    for call, namespace in (("foreign", "mallory"), ("read_only", "readers")):  # the right token
        kind, status, message = out[call]
        assert status == 403 and f'to a repo under the namespace "{namespace}"' in message, out[call]
    assert out["private"][0] == "RepositoryNotFoundError" and out["private_with_token"] is True
    assert head_of(hub, "model", repo)[0] == before
    assert not (hub.root / "repos" / "models" / "mallory").exists()
    assert not (hub.root / "repos" / "models" / "readers").exists()
    assert not hub.storage.has_object(hashlib.sha256(b"x").hexdigest())


@pytest.mark.parametrize("name", ["bad--name", "a..b", "-lead", "x" * 97, "name.git"])
def test_server_refuses_invalid_repo_ids_as_the_hub_does(loopback_hub, name):
    request = urllib.request.Request(
        f"{loopback_hub.endpoint}/api/repos/create",
        data=json.dumps({"name": name, "organization": "alice", "type": "model"}).encode(),
        headers={"Authorization": f"Bearer {loopback_hub.token}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400 and name in json.loads(refused.value.read())["error"]
    assert not (loopback_hub.root / "repos" / "models" / "alice" / name).exists()


INTERRUPTED_PUSH = """
    import json, os
    from huggingface_hub import HfApi

    api, repo = HfApi(), os.environ["REPO"]
    api.create_repo(repo)
    outcomes = []
    for attempt in range(2):
        try:
            info = api.upload_folder(folder_path=os.environ["FOLDER"], repo_id=repo, commit_message="student")
            outcomes.append(["ok", info.oid])
        except Exception as error:  # what a dropped connection surfaces as, whatever its class
            outcomes.append(["failed", type(error).__name__])
    print("RESULT " + json.dumps(dict(outcomes=outcomes)))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_push_whose_connection_drops_fails_and_its_rerun_completes_in_one_commit(
    loopback_hub, tmp_path, when
):
    """``before``: the commit request is lost; ``after``: the commit is made but its answer is lost, and
    the rerun finds every file unchanged (preupload's oids) and makes no second commit."""
    hub, repo = loopback_hub, f"alice/interrupted-{when}"
    tiny_dinov2(seed=11 if when == "before" else 12).save_pretrained(
        tmp_path / "model"
    )  # bytes new to the server
    hub.app.drop_connection("POST", f"^/api/models/{repo}/commit/main$", when=when)
    hub.app.drop_connection("PUT", "^/lfs-upload/")  # the LFS PUT is retried by the client itself

    out = run_client(hub, tmp_path, INTERRUPTED_PUSH, REPO=repo, FOLDER=str(tmp_path / "model"))

    (first, _), (second, oid) = out["outcomes"]
    assert first == "failed" and second == "ok", out
    history = hub.storage.history("model", repo, "main")
    assert [c for c, _ in history] == [oid, history[-1][0]]  # initial commit + exactly one upload
    assert set(history[0][1]["files"]) == {".gitattributes", "config.json", "model.safetensors"}
    puts = [status for method, path, status in hub.app.requests if method == "PUT" and repo not in path]
    commits = [status for _, path, status in hub.app.requests if path == f"/api/models/{repo}/commit/main"]
    assert puts[-2:] == [-1, 200]  # dropped, retried; the rerun finds the object stored and sends none
    assert commits == ([-1, 200] if when == "before" else [-1])
    assert not hub.app.pending_faults()
