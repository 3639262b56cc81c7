"""Loading models never runs code or unpickles data the user did not opt into."""

from __future__ import annotations

import os
import pathlib
import re

import pytest
import torch
from conftest import repo_with_remote_code, tiny_dinov2

from hf_task_distill import load_teacher
from hf_task_distill.retrieval import ImageEncoder

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hf_task_distill"


@pytest.mark.parametrize(
    "load",
    [load_teacher, ImageEncoder.from_pretrained],
    ids=["teacher", "retrieval-encoder"],
)
def test_code_in_a_model_repo_runs_only_with_trust_remote_code(tmp_path, load):
    marker = repo_with_remote_code(tmp_path / "repo")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load(str(tmp_path / "repo"))
    assert not marker.exists()  # refused before anything from the repo was imported
    load(str(tmp_path / "repo"), trust_remote_code=True)
    assert marker.exists()  # the flag, and only the flag, lets it run


def _pickle_checkpoint(folder: pathlib.Path, payload: bool) -> pathlib.Path:
    model = tiny_dinov2()
    model.config.architectures = ["Dinov2ForImageClassification"]
    model.config.save_pretrained(folder)
    marker = folder / "UNPICKLED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = dict(model.state_dict())
    if payload:
        state["payload"] = Payload()
    torch.save(state, folder / "pytorch_model.bin")
    return marker


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path):
    marker = _pickle_checkpoint(tmp_path / "repo", payload=True)
    with pytest.raises(OSError, match="has no safetensors weights.*unpickling can run code"):
        load_teacher(str(tmp_path / "repo"))
    assert not marker.exists()
    # opting in still goes through torch.load(weights_only=True): the payload is refused, never run
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_teacher(str(tmp_path / "repo"), use_safetensors=False)
    assert not marker.exists()


def test_an_honest_pickle_checkpoint_loads_when_the_user_opts_in(tmp_path):
    _pickle_checkpoint(tmp_path / "repo", payload=False)
    teacher = load_teacher(str(tmp_path / "repo"), use_safetensors=False)
    assert teacher.config.num_labels == 4


def test_the_package_never_unpickles():
    """Every torch.load passes weights_only=True, every np.load allow_pickle=False; nothing imports pickle."""
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert not re.search(
            r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", source, re.M
        ), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", source):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        for line in source.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path}: {line.strip()}"
        assert "pickle.load" not in source, path


def test_safetensors_checkpoints_still_load(tmp_path):
    tiny_dinov2().save_pretrained(tmp_path / "repo")
    assert os.path.exists(tmp_path / "repo" / "model.safetensors")
    assert load_teacher(str(tmp_path / "repo")).config.num_labels == 4


def _hostile(dataset, names):
    """``dataset`` with every image's recorded file path set to one of ``names`` (bytes kept)."""
    from datasets import Image as ImageFeature

    raw = dataset.cast_column("image", ImageFeature(decode=False))
    return raw.map(
        lambda row, i: {"image": {"bytes": row["image"]["bytes"], "path": names[i % len(names)]}},
        with_indices=True,
    )


def test_names_from_a_dataset_never_become_paths_outside_the_output_folder(tmp_path, vfm_dirs):
    """Label names, image paths, task and dataset names with ``..``, absolute paths and separators flow
    through teacher finetuning, retrieval, the transfer set and the teacher cache; every file written
    stays inside the output folder (no output file name is derived from a dataset's content)."""
    from conftest import make_colour_dataset, tiny_encoder
    from datasets import ClassLabel, DatasetDict

    from hf_task_distill import TeacherCacheConfig, build_teacher_cache
    from hf_task_distill.data import load_target_task
    from hf_task_distill.hub.cards import TransferSetCardData
    from hf_task_distill.retrieval import RetrievalTransferSetBuilder, contact_sheet, save_transfer_set
    from hf_task_distill.teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments

    evil = [
        "../../escaped-a.png",
        "/tmp/escaped-b.png",
        "..\\..\\escaped-c.png",
        "sub/../../../escaped-d.png",
    ]
    labels = ["../../escaped-label", "/tmp/escaped-label", "..\\escaped-label", "ok"]
    splits = {}
    for split, (n, seed) in {"train": (24, 1), "validation": (12, 2)}.items():
        data = _hostile(make_colour_dataset(n, seed=seed), evil)
        splits[split] = data.cast_column("label", ClassLabel(names=labels))
    task = load_target_task(DatasetDict(splits), name="../../escaped-task")
    out = tmp_path / "out"
    args = TeacherFinetuningArguments(
        output_dir=str(out / "teacher"), strategy="linear", probe_epochs=3, report_to="none", use_cpu=True
    )
    finetuner = TeacherFinetuner(str(vfm_dirs["dinov2"]), task, args)
    teacher = finetuner.train().model
    finetuner.save(out / "teacher" / "model")

    pool = _hostile(make_colour_dataset(40, seed=3, labelled=False), evil)
    builder = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=4, leakage_threshold=0.9999)
    transfer, _ = builder.build(pool, task["train"], embeddings_dir=out / "embeddings")
    card = TransferSetCardData.from_build(
        builder, transfer, pool, name="../../escaped-set", task_name=task.name
    )
    save_transfer_set(transfer, out / "transfer", card, contact_sheet(task["train"], transfer))
    build_teacher_cache(
        teacher, transfer, out / "cache", config=TeacherCacheConfig(num_views=1), progress=False
    )

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(out in p.parents for p in written)
    assert not [p for p in written if "escaped" in p.name]
    assert not list(pathlib.Path("/tmp").glob("escaped-*")) and not list(tmp_path.parent.glob("escaped-*"))
    assert "../../escaped-task" in (out / "teacher" / "model" / "README.md").read_text()  # text, not a path
