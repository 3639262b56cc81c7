"""Lineage and licences (``hf_task_distill.hub.lineage``): the commit a Hub source was loaded at, read
from ``huggingface_hub``'s cache after a real download from the loopback Hub; licence ids read from
cards; and which licences warn."""

from __future__ import annotations

import pytest

from hf_task_distill.hub.lineage import Source, declared_license, licence_warnings, resolved_revision


def _source(licence, role="teacher", name="org/model"):
    return Source(role=role, name=name, repo_type="model", hub=True, revision=None, license=licence)


@pytest.mark.parametrize(
    ("licence", "expected"),
    [
        ("apache-2.0", []),
        ("mit", []),
        ("cc-by-nc-4.0", ["forbids commercial use"]),
        ("cc-by-nc-nd-4.0", ["forbids commercial use", "forbids derivative works"]),
        ("cc-by-nd-4.0", ["forbids derivative works"]),
        ("other", ["licensed 'other': read its terms"]),
        (None, ["declares no licence"]),
    ],
)
def test_licences_that_limit_the_student_or_are_unclear_warn_naming_the_source(licence, expected):
    warnings = licence_warnings([_source(licence)])
    assert len(warnings) == len(expected)
    for warning, phrase in zip(warnings, expected, strict=True):
        assert phrase in warning and "the teacher `org/model`" in warning


def test_a_folders_licence_is_its_readmes_and_an_unreadable_card_is_unknown(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n\n# a teacher\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert declared_license(str(tmp_path / "good")) == "cc-by-nc-4.0"
    assert declared_license(str(tmp_path / "broken")) is None
    assert declared_license(str(tmp_path)) is None  # no card at all


def test_the_revision_is_the_commit_the_cache_resolved_after_a_real_download(
    loopback_hub, tmp_path, monkeypatch
):
    """A model pushed twice to the loopback Hub and downloaded by a user's process: the cache's ``main``
    is the second commit, which ``resolved_revision`` reports; an uncached repo has none."""
    from huggingface_hub import constants
    from test_loopback_hub import run_client

    result = run_client(
        loopback_hub,
        tmp_path,
        """
        import json, os, pathlib
        from huggingface_hub import HfApi, snapshot_download
        api, repo = HfApi(), "lineage/tiny"
        api.create_repo(repo)
        folder = pathlib.Path(os.environ["WORK"])
        (folder / "config.json").write_text('{"model_type": "resnet"}')
        (folder / "README.md").write_text("---\\nlicense: cc-by-nc-4.0\\n---\\n")
        first = api.upload_folder(folder_path=folder, repo_id=repo).oid
        (folder / "config.json").write_text('{"model_type": "resnet", "v": 2}')
        second = api.upload_folder(folder_path=folder, repo_id=repo).oid
        snapshot_download(repo)
        print("RESULT " + json.dumps({"first": first, "second": second, "cache": os.environ["HF_HOME"]}))
        """,
        WORK=str(tmp_path),
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", result["cache"] + "/hub")
    assert result["first"] != result["second"]
    assert resolved_revision("lineage/tiny") == result["second"]
    assert resolved_revision("lineage/tiny", revision=result["first"]) == result["first"]  # a pinned commit
    assert resolved_revision("lineage/never-downloaded") is None
    assert declared_license("lineage/tiny") == "cc-by-nc-4.0"  # the cached card, read offline
