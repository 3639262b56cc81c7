"""scikit-learn's handwritten digits as a target task that needs no network.

1,797 real 8x8 scans (UCI optical recognition of handwritten digits, shipped inside scikit-learn),
upscaled to RGB images so any image model can take them. The offline demo and the tests use it;
it is small, real, and labelled.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_task"]


def _digit_images(pixels: np.ndarray, image_size: int) -> list:
    import torch
    from PIL import Image
    from torch.nn import functional as F

    scans = torch.from_numpy(pixels.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    large = F.interpolate(scans, size=(image_size, image_size), mode="bilinear", align_corners=False)
    grey = (large.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    return [Image.fromarray(np.repeat(g[:, :, None], 3, axis=2)) for g in grey]


def load_digits_task(image_size: int = 32, test_fraction: float = 0.3, seed: int = 0):
    """A ``TargetTask`` with ``train`` and ``test`` splits, stratified and seeded.

    Needs scikit-learn (``pip install scikit-learn``; the ``dev`` and ``demo`` extras include it).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from err
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    from ..data.budget import stratified_holdout_indices
    from ..data.task import TargetTask

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_holdout_indices(labels, test_fraction, seed=seed)
    names = [str(d) for d in range(10)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    images = _digit_images(digits.data, image_size)

    def split(indices: np.ndarray) -> Dataset:
        rows = sorted(indices.tolist())
        return Dataset.from_dict(
            {"image": [images[i] for i in rows], "label": labels[rows].tolist()}, features=features
        )

    splits = DatasetDict({"train": split(train_idx), "test": split(test_idx)})
    return TargetTask(name="digits", splits=splits, label_names=names)
