"""Does the mini-VFM know the segmentation world's characters? Zero-shot, by polarity.

Crops the top object's frame from test images of the segmentation world, resizes it to the mini-VFM's
32 px and asks the mini-VFM's own 269-way head, restricted to the task's classes, which class it is.
Light characters on a dark ground are the look of the glyph "web" it was pretrained on; dark on light
it has never seen. The accuracy says how much a teacher built on this backbone can know before any
segmentation label (chance: 1 / number of classes).

    python benchmarks/miniature/segmentation_polarity.py --images 300
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image


def zero_shot_accuracy(polarity: str, images: int, seed: int = 0) -> float:
    """Share of ``images`` test images whose top object the mini-VFM names right (task classes only)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_task_distill.demo.miniature import mini_vfm_path
    from hf_task_distill.demo.segmentation import SegmentationWorldConfig, segmentation_world_example

    model = AutoModelForImageClassification.from_pretrained(mini_vfm_path()).eval()
    processor = AutoImageProcessor.from_pretrained(mini_vfm_path())
    config = SegmentationWorldConfig(polarity=polarity)
    vfm_ids = [model.config.label_names.index(c) for c in config.classes]
    right = []
    for index in range(images):
        example = segmentation_world_example(index, "test", seed, config)
        top = example["objects"][-1]
        crop = example["image"].crop(top["box"]).resize((32, 32), Image.Resampling.BICUBIC)
        pixels = torch.as_tensor(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)
        mean = torch.tensor(processor.data_config["mean"]).view(3, 1, 1)
        std = torch.tensor(processor.data_config["std"]).view(3, 1, 1)
        with torch.no_grad():
            logits = model(((pixels - mean) / std)[None]).logits[0, vfm_ids]
        right.append(int(logits.argmax()) + 1 == top["class_id"])
    return float(np.mean(right))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    result = {p: zero_shot_accuracy(p, args.images) for p in ("light-on-dark", "dark-on-light")}
    print(json.dumps({"test_images": args.images, "zero_shot_top_object_accuracy": result}, indent=1))


if __name__ == "__main__":
    main()
