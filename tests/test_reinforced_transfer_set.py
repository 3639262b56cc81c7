"""Reinforced transfer sets: a teacher cache published with its transfer set, pulled by repo id and
distilled from with no teacher.

The "Hub" here is a published folder behind the package's one download boundary,
``hf_task_distill.hub.download.download_dataset_repo`` (monkeypatched to copy the requested files
out of the folder into a fresh snapshot), so these tests can later run against a loopback Hub
server unchanged but for that fixture.
"""

from __future__ import annotations

import fnmatch
import shutil

import pytest
import torch
from conftest import LABELS, distill_args, tiny_dinov2, tiny_processor

from hf_task_distill import DistillationTrainer, ViewSpec, create_student
from hf_task_distill.data.fingerprints import transfer_set_digest
from hf_task_distill.hub import download
from hf_task_distill.hub.cards import add_teacher_cache_section
from hf_task_distill.hub.publish import write_parquet_dataset
from hf_task_distill.hub.reinforced import publish_teacher_cache
from hf_task_distill.ledger import count_flops_per_image
from hf_task_distill.teacher_cache import (
    TeacherCache,
    TeacherCacheConfig,
    TeacherCacheMismatch,
    build_teacher_cache,
)

REPO = "someone/colours-reinforced"
TEACHER_VIEW = ViewSpec.from_image_processor(tiny_processor())
ROWS = 100  # more than the 64 rows the cheap fingerprint samples: the digest is what sees the rest


@pytest.fixture(scope="module")
def published(tmp_path_factory, colour_splits):
    """A transfer set saved as a run saves it, its local cache, and the folder published from both."""
    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("reinforced")
    colour_splits["transfer"].select(range(ROWS)).save_to_disk(root / "transfer")
    transfer = load_from_disk(root / "transfer")
    teacher = tiny_dinov2(seed=0)
    config = TeacherCacheConfig(num_views=2, shard_size=32, view_seed=5)
    cache = build_teacher_cache(
        teacher, transfer, root / "cache", config=config, teacher_view=TEACHER_VIEW, progress=False
    )
    repo = root / "repo"
    write_parquet_dataset(transfer, str(repo), max_shard_rows=30)  # 4 shards: their order matters
    flops = count_flops_per_image(teacher, TEACHER_VIEW.size)
    record = publish_teacher_cache(
        cache,
        str(repo),
        transfer,
        teacher="facebook/dinov2-large, finetuned",
        teacher_license="apache-2.0",
        teacher_flops_per_view=flops,
    )
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n\n# colours transfer set\n")
    add_teacher_cache_section(str(repo / "README.md"), cache, record, REPO)
    return {
        "root": root,
        "transfer": transfer,
        "cache": cache,
        "repo": repo,
        "record": record,
        "flops": flops,
    }


@pytest.fixture
def hub(published, monkeypatch, tmp_path):
    """``download_dataset_repo`` serving ``REPO`` from the published folder: each call copies the
    files its patterns allow into a new snapshot folder named like a commit (what the Hub gives)."""
    calls = []

    def fake_download(repo_id, *, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns or ())))
        if repo_id != REPO:
            raise download.HubDownloadError(f"could not download the dataset repo {repo_id} (404)")
        snapshot = tmp_path / "hub" / f"{len(calls):040x}"
        for path in published["repo"].rglob("*"):
            relative = path.relative_to(published["repo"]).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(relative, p) for p in allow_patterns or ["*"]):
                (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / relative)
        return str(snapshot)

    monkeypatch.setattr(download, "download_dataset_repo", fake_download)
    return calls


def _student(labels=None):
    torch.manual_seed(0)
    return create_student("test_resnet", labels or dict(enumerate(LABELS)), image_size=24)


def test_the_published_rows_are_the_transfer_set_and_another_order_is_not(published):
    from datasets import load_dataset

    transfer, cache = published["transfer"], published["cache"]
    # what a user gets from datasets.load_dataset(repo_id): teacher_cache/ is not read as data
    pulled = load_dataset(str(published["repo"]), split="train")
    assert pulled.column_names == transfer.column_names and len(pulled) == ROWS
    digest = transfer_set_digest(pulled, "image")
    assert digest == transfer_set_digest(transfer, "image") == published["record"]["transfer_set"]["digest"]
    cache.check(dataset=pulled)  # the sampled fingerprint survives Parquet too
    for row in (0, 31, 99):
        assert pulled[row]["image"].tobytes() == transfer[row]["image"].tobytes()
    swapped = _unsampled_swap(pulled)
    assert transfer_set_digest(swapped, "image") != digest


def test_publishing_refuses_parquet_rows_that_are_not_the_cached_set(published, tmp_path):
    transfer, cache = published["transfer"], published["cache"]
    write_parquet_dataset(_unsampled_swap(transfer), str(tmp_path / "repo"))
    with pytest.raises(RuntimeError, match="read back differently .* not publishing the cache"):
        publish_teacher_cache(cache, str(tmp_path / "repo"), transfer, teacher="t")
    assert not (tmp_path / "repo" / "teacher_cache").exists()
    with pytest.raises(TeacherCacheMismatch, match="transfer set"):  # a cache of other rows altogether
        publish_teacher_cache(cache, str(published["repo"]), transfer.select(range(50)), teacher="t")


def _unsampled_swap(rows):
    """``rows`` with two rows swapped that the cheap fingerprint does not sample."""
    from hf_task_distill.data.fingerprints import dataset_fingerprint

    expected, unseen = dataset_fingerprint(rows, "image"), []
    for i in range(1, ROWS):  # row i replaced by row i - 1: the fingerprint changes iff it samples i
        if dataset_fingerprint(rows.select([*range(i), i - 1, *range(i + 1, ROWS)]), "image") == expected:
            unseen.append(i)
    a, b = unseen[:2]
    swapped = rows.select([b if r == a else a if r == b else r for r in range(ROWS)])
    assert dataset_fingerprint(swapped, "image") == expected
    return swapped


def test_a_student_from_the_pulled_set_equals_one_from_the_local_cache(published, hub, tmp_path):
    local = DistillationTrainer(
        model=_student(),
        teacher_cache=published["cache"].directory,
        train_dataset=published["transfer"],
        args=distill_args(tmp_path / "local", num_train_epochs=2, per_device_train_batch_size=25),
    )
    pulled = DistillationTrainer(  # nothing but the repo id: no teacher, no transfer set given
        model=_student(),
        teacher_cache=REPO,
        args=distill_args(tmp_path / "pulled", num_train_epochs=2, per_device_train_batch_size=25),
    )
    assert pulled._teacher is None and pulled.teacher_cache.hub_source[0] == REPO
    patterns = [p for _, _, p in hub]
    assert patterns == [("teacher_cache/*",), ("data/*.parquet",)]
    assert hub[1][1] == f"{1:040x}"  # the rows come from the commit the cache was downloaded at
    for epoch in (0, 1):
        for dataset in (local.train_dataset, pulled.train_dataset):
            dataset.set_epoch(epoch)
        for i in range(0, ROWS, 7):
            a, b = local.train_dataset[i], pulled.train_dataset[i]
            assert torch.equal(a["pixel_values"], b["pixel_values"]), (epoch, i)
            assert torch.equal(a["teacher_logits"], b["teacher_logits"]), (epoch, i)
    local.train()
    pulled.train()
    card = pulled.create_model_card()  # the card names the teacher and the set it came from
    assert "**Teacher**: `facebook/dinov2-large, finetuned`" in card.text
    assert f"transfer-set:{REPO}" in card.data.tags and REPO in card.data.datasets
    a, b = local.model.state_dict(), pulled.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = _student().state_dict()
    assert not all(torch.equal(a[k], before[k]) for k in a)  # training moved the weights
    views = torch.stack([local.train_dataset[i]["pixel_values"] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(
            local.model.eval()(pixel_values=views).logits, pulled.model.eval()(pixel_values=views).logits
        )


def test_a_revision_after_the_repo_id_pulls_the_cache_and_rows_at_that_revision(published, hub, tmp_path):
    trainer = DistillationTrainer(model=_student(), teacher_cache=f"{REPO}@v1.0", args=distill_args(tmp_path))
    commit = f"{1:040x}"  # what the download of revision v1.0 resolved to
    assert [(repo, revision) for repo, revision, _ in hub] == [(REPO, "v1.0"), (REPO, commit)]
    assert trainer.teacher_cache.hub_source == (REPO, commit) and len(trainer.train_dataset) == ROWS
    with pytest.raises(FileNotFoundError, match=rf"{REPO}@"):  # no revision after '@': not a repo id
        DistillationTrainer(model=_student(), teacher_cache=f"{REPO}@", args=distill_args(tmp_path))


def test_a_cache_for_another_label_space_or_view_count_is_refused(published, hub, tmp_path):
    args = distill_args(tmp_path)
    with pytest.raises(TeacherCacheMismatch, match="view count: cache has 2, expected 4"):
        TeacherCache.from_hub(REPO, num_views=4)
    with pytest.raises(TeacherCacheMismatch, match=f"number of labels: cache has 4, expected 3.*{REPO}"):
        DistillationTrainer(model=_student(dict(enumerate(LABELS[:3]))), teacher_cache=REPO, args=args)
    renamed = dict(enumerate(["red", "green", "blue", "purple"]))
    with pytest.raises(TeacherCacheMismatch, match="label names: .*3: 'yellow' vs 'purple'"):
        DistillationTrainer(model=_student(renamed), teacher_cache=REPO, args=args)
    assert LABELS[3] == "yellow"
    # rows in another order, where the 64-row fingerprint does not look: the digest refuses them
    rows = TeacherCache.from_hub(REPO).published_transfer_set()
    swapped = _unsampled_swap(rows)
    with pytest.raises(TeacherCacheMismatch, match="other images, or the same in another order"):
        DistillationTrainer(model=_student(), teacher_cache=REPO, train_dataset=swapped, args=args)
    # placeholder class names (LABEL_i) are not compared: a student made with a class count is taught
    trainer = DistillationTrainer(model=_student(4), teacher_cache=REPO, args=args)
    assert len(trainer.train_dataset) == ROWS


def test_a_repo_without_a_cache_or_a_source_that_is_neither_is_refused(published, hub, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no folder here, and as a Hub dataset repo id: .*404"):
        DistillationTrainer(model=_student(), teacher_cache="someone/unknown", args=distill_args(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a complete teacher cache"):
        DistillationTrainer(
            model=_student(), teacher_cache=str(tmp_path / "a" / "b" / "c"), args=distill_args(tmp_path)
        )
    bare = published["root"] / "bare"
    shutil.copytree(published["repo"] / "data", bare / "data")
    hub_calls = len(hub)
    from hf_task_distill.hub.reinforced import pull_teacher_cache

    monkeypatch.setattr(download, "download_dataset_repo", lambda repo_id, **kwargs: str(bare))
    with pytest.raises(FileNotFoundError, match="has no teacher cache .*published without one"):
        pull_teacher_cache(REPO)
    assert len(hub) == hub_calls
    # a cache that carries no record of its published rows (a local cache uploaded by hand)
    unrecorded = published["root"] / "unrecorded"
    shutil.copytree(published["cache"].directory, unrecorded / "teacher_cache")
    monkeypatch.setattr(download, "download_dataset_repo", lambda repo_id, **kwargs: str(unrecorded))
    with pytest.raises(TeacherCacheMismatch, match="no record of the transfer set it was published with"):
        pull_teacher_cache(REPO)


def test_the_card_names_the_teacher_its_licence_and_the_flops_saved(published):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(published["repo"] / "README.md")
    text = card.text
    record, flops = published["record"], published["flops"]
    assert record["teacher_flops"] == pytest.approx(flops * 2 * ROWS)  # per view x views x images
    assert "Teacher: `facebook/dinov2-large, finetuned`" in text
    assert "Teacher licence: `apache-2.0`" in text
    assert f"**{record['teacher_flops']:.3g}** ({flops:.3g} per view x 2 views x 100 images)" in text
    assert "Views per image: 2 (view seed 5)" in text and "float16 logits of all 4 classes" in text
    assert f'TeacherCache.from_hub("{REPO}")' in text and record["transfer_set"]["digest"] in text
    assert card.data.license == "cc-by-4.0"  # the images' licence is the card's, kept
    assert {"reinforced", "teacher-outputs"} <= set(card.data.tags)
    assert card.data.configs[0]["data_files"][0]["path"] == "data/*.parquet"


PULL_AND_DISTIL = """
    import json, os, sys
    sys.path.insert(0, os.environ["TESTS"])
    user_environment = dict(os.environ)
    import torch
    from conftest import LABELS, distill_args  # conftest switches to offline: undo it before any Hub client
    os.environ.clear()
    os.environ.update(user_environment)
    from datasets import load_dataset
    from hf_task_distill import DistillationTrainer, create_student
    from hf_task_distill.data.fingerprints import transfer_set_digest

    repo, out = os.environ["REPO"], os.environ["OUT"]
    torch.manual_seed(0)
    student = create_student("test_resnet", dict(enumerate(LABELS)), image_size=24)
    trainer = DistillationTrainer(  # the repo id alone: no teacher, no transfer set
        model=student,
        teacher_cache=repo,
        args=distill_args(__import__("pathlib").Path(out), num_train_epochs=2, per_device_train_batch_size=25),
    )
    trainer.train()
    torch.save(trainer.model.state_dict(), os.path.join(out, "weights.pt"))
    rows = load_dataset(repo, split="train")
    print("RESULT " + json.dumps({"digest": transfer_set_digest(rows, "image"), "rows": len(rows),
                                  "teacher": trainer._teacher is None}))
"""


def test_a_reinforced_set_pushed_and_pulled_over_http_distils_the_local_caches_student(
    published, loopback_hub, tmp_path
):
    """The published folder goes up with ``upload_folder`` and comes back through ``snapshot_download``
    and ``load_dataset`` over HTTP (the loopback Hub, real clients in a user's process): the student
    distilled from it with no teacher equals the one distilled from the local cache."""
    import os

    from test_loopback_hub import run_client

    repo = "someone/colours-reinforced-http"
    pushed = run_client(
        loopback_hub,
        tmp_path,
        """
        import json, os
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(os.environ["REPO"], repo_type="dataset")
        info = api.upload_folder(folder_path=os.environ["FOLDER"], repo_id=os.environ["REPO"], repo_type="dataset")
        print("RESULT " + json.dumps({"commit": info.oid}))
        """,
        REPO=repo,
        FOLDER=str(published["repo"]),
    )
    commit, record = loopback_hub.storage.resolve("dataset", repo, "main")
    assert commit == pushed["commit"] and any(
        name.startswith("teacher_cache/shard-") for name in record["files"]
    )
    out = tmp_path / "pulled"
    out.mkdir()
    tests = os.path.dirname(os.path.abspath(__file__))
    result = run_client(loopback_hub, tmp_path, PULL_AND_DISTIL, REPO=repo, OUT=str(out), TESTS=tests)
    assert result == {"digest": published["record"]["transfer_set"]["digest"], "rows": ROWS, "teacher": True}
    local = DistillationTrainer(
        model=_student(),
        teacher_cache=published["cache"].directory,
        train_dataset=published["transfer"],
        args=distill_args(tmp_path / "local", num_train_epochs=2, per_device_train_batch_size=25),
    )
    local.train()
    pulled, mine = torch.load(out / "weights.pt"), local.model.state_dict()
    assert pulled.keys() == mine.keys() and all(torch.equal(pulled[k], mine[k]) for k in mine)
    downloads = [p for m, p, s in loopback_hub.app.requests if m == "GET" and "/resolve/" in p and repo in p]
    assert any("teacher_cache/" in p for p in downloads) and any(p.endswith(".parquet") for p in downloads)
