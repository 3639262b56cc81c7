"""Loading models never runs code or unpickles data the user did not opt into."""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest
import torch
from conftest import tiny_dinov2, tiny_processor

from hf_task_distill import load_teacher
from hf_task_distill.retrieval import ImageEncoder

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hf_task_distill"


def _repo_with_remote_code(folder: pathlib.Path) -> pathlib.Path:
    """A classifier repo whose config names an architecture transformers does not know, implemented by
    a module in the repo that leaves a marker file when it is imported."""
    tiny_dinov2().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "sneaky_vit"
    config["auto_map"] = {
        "AutoConfig": "sneaky.SneakyConfig",
        "AutoModel": "sneaky.SneakyModel",
        "AutoModelForImageClassification": "sneaky.SneakyClassifier",
    }
    (folder / "config.json").write_text(json.dumps(config))
    marker = folder / "CODE_RAN"
    (folder / "sneaky.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model\n"
        "class SneakyConfig(Dinov2Config):\n    model_type = 'sneaky_vit'\n"
        "class SneakyModel(Dinov2Model):\n    config_class = SneakyConfig\n"
        "class SneakyClassifier(Dinov2ForImageClassification):\n    config_class = SneakyConfig\n"
    )
    return marker


@pytest.mark.parametrize(
    "load",
    [load_teacher, ImageEncoder.from_pretrained],
    ids=["teacher", "retrieval-encoder"],
)
def test_code_in_a_model_repo_runs_only_with_trust_remote_code(tmp_path, load):
    marker = _repo_with_remote_code(tmp_path / "repo")
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
