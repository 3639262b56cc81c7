"""Shared fixtures: offline Hub, tiny locally built teacher/student models, small generated images.

No test reaches the network: the Hub is switched to offline mode and its cache points at a temporary
folder before transformers, datasets or huggingface_hub are imported.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import tempfile
import zlib

_HF_HOME = tempfile.mkdtemp(prefix="hf_task_distill_tests_hf_home_")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(2)

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (210, 200, 40)}
LABELS = list(COLOURS)


def colour_image(label: int, rng: np.random.Generator, size=(40, 36)) -> Image.Image:
    """A noisy image whose class is its dominant colour: solvable from any crop."""
    width, height = size
    base = np.array(COLOURS[LABELS[label]], dtype=np.float32)
    noise = rng.normal(0, 35, size=(height, width, 3))
    blob = np.zeros((height, width, 1), dtype=np.float32)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    yy, xx = np.mgrid[0:height, 0:width]
    blob[..., 0] = ((yy - cy) ** 2 + (xx - cx) ** 2 < (min(width, height) / 3) ** 2) * rng.normal(0, 40)
    pixels = np.clip(base + noise + blob, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_colour_dataset(n: int, seed: int, *, labelled: bool = True, sizes=((40, 36), (48, 40), (36, 44))):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), size=n)
    images = [colour_image(int(y), rng, sizes[i % len(sizes)]) for i, y in enumerate(labels)]
    if not labelled:
        return Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS)})
    return Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


def save_image_folder(dataset, folder, *, labelled: bool = True) -> None:
    """Write a colour dataset as an image folder (one sub-folder per class when labelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(dataset):
        target = folder / LABELS[row["label"]] if labelled else folder
        target.mkdir(exist_ok=True)
        row["image"].save(target / f"{i:04d}.png")


def write_run_inputs(
    root, *, task: str, pool: str, sizes=(48, 24, 120), seed: int = 21, teacher_from=None, teacher: str = ""
) -> None:
    """What a pipeline test runs on, as a user has it on disk: a labelled task folder ``root/task``
    (train/ and test/, one sub-folder per class), an unlabelled pool folder ``root/pool``, a timm
    student checkpoint ``root/student-start``, and (``teacher_from``) a copy of a teacher folder."""
    import shutil

    from hf_task_distill.models import create_student

    train, test, pool_size = sizes
    save_image_folder(make_colour_dataset(train, seed=seed), root / task / "train")
    save_image_folder(make_colour_dataset(test, seed=seed + 1), root / task / "test")
    save_image_folder(make_colour_dataset(pool_size, seed=seed + 2), root / pool, labelled=False)
    if teacher_from is not None:
        shutil.copytree(teacher_from, root / teacher)
    create_student("test_resnet", LABELS, image_size=32).save_pretrained(root / "student-start")


def kill_after_first_checkpoint(
    argv: list[str], checkpoints: pathlib.Path, log_path, timeout: float = 300
) -> bool:
    """Start ``argv``, SIGKILL it once a complete Trainer checkpoint is in ``checkpoints``; whether it
    had already ended by itself (a test wants ``False``: the kill came mid-stage)."""
    import signal
    import subprocess
    import time

    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None:
            if any((c / "trainer_state.json").exists() for c in checkpoints.glob("checkpoint-*")):
                break
            time.sleep(0.05)
        ended = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
    return ended


def tiny_vit_kwargs(image_size: int = 32) -> dict:
    """A 2-layer, 32-wide ViT: the shape of every tiny 'foundation model' in the tests."""
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=8,
    )


def distill_args(tmp_path, **overrides):
    """DistillationArguments for short CPU runs in tests."""
    from hf_task_distill import DistillationArguments

    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=32,
        learning_rate=2e-3,
        num_train_epochs=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    base.update(overrides)
    return DistillationArguments(**base)


def tiny_dinov2(num_labels: int = len(LABELS), image_size: int = 32, seed: int = 0):
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(seed)
    config = Dinov2Config(
        **tiny_vit_kwargs(image_size),
        num_labels=num_labels,
        id2label=dict(enumerate(LABELS[:num_labels])),
        label2id={n: i for i, n in enumerate(LABELS[:num_labels])},
    )
    return Dinov2ForImageClassification(config)


def tiny_processor(image_size: int = 32):
    from transformers import BitImageProcessor

    return BitImageProcessor(
        size={"shortest_edge": image_size + 4},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


@pytest.fixture(scope="session")
def colour_splits():
    return {
        "train": make_colour_dataset(160, seed=1),
        "transfer": make_colour_dataset(256, seed=2, labelled=False),
        "test": make_colour_dataset(96, seed=3),
    }


@pytest.fixture(scope="session")
def trained_teacher_dir(tmp_path_factory, colour_splits):
    """A tiny DINOv2 classifier trained on the colour task, saved with its image processor."""
    from hf_task_distill import DistillationTrainer, PairedViews, ViewSpec

    folder = tmp_path_factory.mktemp("teacher")
    model = tiny_dinov2()
    spec = ViewSpec.from_image_processor(tiny_processor())
    views = PairedViews(teacher=spec, student=spec)
    args = distill_args(folder / "run", loss_name="ce", num_train_epochs=8, learning_rate=3e-3)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=colour_splits["train"], views=views)
    trainer.train()
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def tiny_clip_config(image_size: int = 32):
    from transformers import CLIPConfig

    vision = tiny_vit_kwargs(image_size)
    text = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


@pytest.fixture(scope="session")
def vfm_dirs(tmp_path_factory):
    """Headless 'foundation model' checkpoints, as users start from: a DINOv2 backbone and a CLIP model."""
    from transformers import CLIPImageProcessor, CLIPModel, Dinov2Model

    root = tmp_path_factory.mktemp("vfm")
    torch.manual_seed(0)
    Dinov2Model(tiny_dinov2().config).save_pretrained(root / "dinov2")
    tiny_processor().save_pretrained(root / "dinov2")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip"
    )
    return {"dinov2": root / "dinov2", "clip": root / "clip"}


def make_texture_dataset(n: int, seed: int):
    """Stripes (horizontal, vertical), checks, or flat noise, all with the same mean colour.

    A frozen random backbone's pooled features barely separate them (the mean is identical); a
    finetuned patch embedding learns the oriented filters easily.
    """
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    images, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 4))
        ph = rng.integers(0, 8, 2)
        rows = np.sign(np.sin((yy + ph[0]) * np.pi / 4))
        cols = np.sign(np.sin((xx + ph[1]) * np.pi / 4))
        pattern = [rows, cols, rows * cols, np.zeros((32, 32))][label]
        pixels = 128 + 40 * pattern[..., None] + rng.normal(0, 20, (32, 32, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
        labels.append(label)
    features = Features(
        {"image": ImageFeature(), "label": ClassLabel(names=["rows", "columns", "checks", "flat"])}
    )
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


THEME_COLOURS = [
    (220, 30, 30),
    (30, 200, 40),
    (30, 40, 220),
    (220, 210, 30),
    (200, 30, 200),
    (30, 200, 210),
    (240, 140, 20),
    (120, 60, 20),
    (250, 250, 250),
    (20, 20, 20),
]


def _theme_image(theme: int, rng: np.random.Generator) -> Image.Image:
    """The theme's colour as background, plus a random patch and texture that make each image its own."""
    pixels = np.array(THEME_COLOURS[theme], dtype=np.float32) + rng.normal(0, 18, size=(32, 32, 3))
    top, left = rng.integers(0, 20, 2)
    height, width = rng.integers(8, 13, 2)
    pixels[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_themed_pool(per_theme: int = 12, distractors: int = 40, seed: int = 0):
    """A pool whose right answers are known: images of 10 colour themes plus grey-noise distractors.

    Returns the pool (with a hidden ``theme`` column, -1 for distractors), queries (theme 3, not in
    the pool) and a test split of theme 3 whose slightly perturbed copies are planted in the pool
    (``planted`` lists their pool rows).
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    images, themes = [], []
    for theme in range(len(THEME_COLOURS)):
        for _ in range(per_theme):
            images.append(_theme_image(theme, rng))
            themes.append(theme)
    for _ in range(distractors):
        images.append(Image.fromarray(rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)))
        themes.append(-1)
    test = [_theme_image(3, rng) for _ in range(4)]
    planted = []
    for image in test:  # near-duplicates: the test image plus faint noise
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-2, 3, (32, 32, 3)), 0, 255)
        planted.append(len(images))
        images.append(Image.fromarray(noisy.astype(np.uint8)))
        themes.append(3)
    features = Features({"image": ImageFeature(), "theme": Value("int64")})
    pool = Dataset.from_dict({"image": images, "theme": themes}, features=features)
    queries = Dataset.from_dict(
        {"image": [_theme_image(3, rng) for _ in range(3)]}, features=Features({"image": ImageFeature()})
    )
    test_split = Dataset.from_dict({"image": test}, features=Features({"image": ImageFeature()}))
    return {"pool": pool, "queries": queries, "test": test_split, "planted": planted}


def tiny_encoder():
    """A frozen random 2-layer DINOv2 as the retrieval encoder (deterministic weights)."""
    from transformers import Dinov2Model

    from hf_task_distill.data import ViewSpec
    from hf_task_distill.retrieval import ImageEncoder

    torch.manual_seed(0)
    model = Dinov2Model(tiny_dinov2().config)
    return ImageEncoder(model, ViewSpec.from_image_processor(tiny_processor()), name="tiny-dinov2")


class _PixelModel(torch.nn.Module):
    """Embeds an image as its normalised pixels: near-duplicates score ~1, other images of a theme less."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the encoder a device

    def forward(self, pixel_values):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        flat = pixel_values.flatten(1)
        return BaseModelOutputWithPooling(last_hidden_state=flat[:, None], pooler_output=flat)


def pixel_encoder():
    from hf_task_distill.data import ViewSpec
    from hf_task_distill.retrieval import ImageEncoder

    return ImageEncoder(_PixelModel(), ViewSpec(size=(16, 16), crop_pct=1.0), name="pixels")


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with a few bytes of data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def repo_with_remote_code(folder: pathlib.Path) -> pathlib.Path:
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


def check_card_metadata(path, pipeline_tag: str = "image-classification") -> dict:
    """Assert what huggingface_hub checks of a model card's YAML metadata offline, and return it.

    ``RepoCard.validate`` asks the Hub; offline the checks are the client's own: the block parses
    (``metadata_load``, plain YAML), ``ModelCard.load`` accepts it (an unreadable ``model-index``
    raises), ``ModelCardData`` rebuilds the same dict from it, and the ``model-index`` round-trips
    through ``model_index_to_eval_results``/``eval_results_to_model_index``. ``base_model`` and
    ``datasets`` must be Hub ids (``owner/name``), which the Hub resolves into links.
    """
    import re

    import yaml
    from huggingface_hub import ModelCard, ModelCardData, metadata_load
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    text = pathlib.Path(path).read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path}: no YAML block first"
    metadata = metadata_load(path)
    assert metadata == yaml.safe_load(text.split("---\n")[1])
    card = ModelCard.load(path)
    assert card.data.to_dict() == metadata
    assert ModelCardData(**metadata).to_dict() == metadata
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        assert name == card.data.model_name and results
        assert eval_results_to_model_index(name, results) == metadata["model-index"]
    hub_ids = [metadata.get("base_model")] + list(metadata.get("datasets") or [])
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", i) for i in hub_ids if i is not None), hub_ids
    assert metadata["pipeline_tag"] == pipeline_tag
    assert metadata["library_name"] in ("timm", "transformers")
    return metadata


def tiny_segformer(num_labels: int, seed: int = 0, label_names=None):
    """A 2-stage, ~7k-parameter SegFormer (``[B, num_labels, H/4, W/4]`` logits), in eval mode."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    names = (
        {}
        if label_names is None
        else {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
    )
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=num_labels,
        **names,
    )
    return SegformerForSemanticSegmentation(config).eval()


@pytest.fixture(scope="session")
def loopback_hub(tmp_path_factory):
    """A Hub-protocol server on 127.0.0.1 (``tests/hub_server``), repos stored in a temp folder.

    Client code runs in a subprocess with ``hub.client_env(hf_home)`` (``HF_ENDPOINT``, online, the
    server's token), exactly as on a user's machine: this process is offline and its
    ``huggingface_hub.constants`` were read at import. ``hub.token`` may write; ``hub.storage`` is
    what the server holds; ``hub.app.requests`` lists every ``(method, path, status)`` it answered.
    """
    from hub_server import LoopbackHub

    hub = LoopbackHub(tmp_path_factory.mktemp("loopback_hub")).start()
    yield hub
    hub.stop()
