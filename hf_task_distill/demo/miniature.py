"""An offline miniature of the paper's setting, small enough for a CPU.

The "web" is a pool of printed characters of many alphabets rendered from the fonts inside
matplotlib (:mod:`hf_task_distill.demo.glyphs`); the "vision foundation model" is a small timm ResNet
pretrained on it (supervised on character identity) and shipped with the package; the target task is
scikit-learn's handwritten digits, which the mini-VFM never saw. Everything runs through the
project's public API, so the miniature exercises the same code paths as a real run with DINOv2.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..sources import mini_vfm_path  # the shipped folder, resolved where every model name is

__all__ = [
    "MINI_STUDENT",
    "MINI_VFM",
    "MiniVFMPretraining",
    "mini_vfm_path",
    "pretrain_mini_vfm",
]


@dataclass(frozen=True)
class _Architecture:
    name: str
    model_args: dict[str, Any]
    image_size: int = 32

    def create(self, labels):
        from ..models import create_student

        return create_student(self.name, labels, model_args=dict(self.model_args), image_size=self.image_size)


#: The mini-VFM: timm's ResNet-10-T at a quarter of its width (1.3M parameters), 32 px.
MINI_VFM = _Architecture("resnet10t", {"channels": (32, 64, 128, 256)})
#: The miniature's student: the same family at an eighth of the width (0.34M parameters).
MINI_STUDENT = _Architecture("resnet10t", {"channels": (16, 32, 64, 128)})


@dataclass
class MiniVFMPretraining:
    """How the mini-VFM is pretrained: every number its card reports comes from here."""

    train_images: int = 30_000
    validation_images: int = 3_000
    pool_seed: int = 0
    validation_seed: int = 1
    epochs: float = 8.0
    learning_rate: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.05
    crop_min_scale: float = 0.7
    seed: int = 0
    results: dict[str, Any] = field(default_factory=dict)


def _glyph_task(config: MiniVFMPretraining):
    from datasets import DatasetDict

    from ..data import load_target_task
    from .glyphs import GlyphPoolConfig, make_glyph_pool

    splits = DatasetDict(
        {
            "train": make_glyph_pool(GlyphPoolConfig(num_images=config.train_images, seed=config.pool_seed)),
            "validation": make_glyph_pool(
                GlyphPoolConfig(num_images=config.validation_images, seed=config.validation_seed)
            ),
        }
    )
    return load_target_task(splits, image_column="image", label_column="label", name="glyphs")


def pretrain_mini_vfm(
    output_dir: str | os.PathLike, config: MiniVFMPretraining | None = None
) -> dict[str, Any]:
    """Pretrain the mini-VFM on rendered glyphs with :class:`~hf_task_distill.teacher_finetuning.TeacherFinetuner`
    (full training, validation on glyphs of another seed) and save it with its card to ``output_dir``.

    Returns the validation metrics and wall time, which are also written to the card.
    """
    import tempfile

    from ..hub.cards import MiniVFMCardData, render_mini_vfm_card
    from ..teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments

    config = config or MiniVFMPretraining()
    output_dir = os.fspath(output_dir)
    started = time.perf_counter()
    task = _glyph_task(config)
    with (
        tempfile.TemporaryDirectory(prefix="mini_vfm_init_") as init,
        tempfile.TemporaryDirectory(prefix="mini_vfm_checkpoints_") as checkpoints,
    ):
        MINI_VFM.create(task.label_names).save_pretrained(init)
        args = TeacherFinetuningArguments(
            output_dir=checkpoints,
            teacher_strategy="full",
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            teacher_layer_decay=1.0,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=256,
            crop_min_scale=config.crop_min_scale,
            hflip_probability=0.0,  # a mirrored character is another character
            seed=config.seed,
            report_to="none",
            save_total_limit=1,
            logging_strategy="epoch",
        )
        finetuner = TeacherFinetuner(init, task, args)
        result = finetuner.train()
        result.model.save_pretrained(output_dir)
        finetuner.processor.save_pretrained(output_dir)
    wall_s = time.perf_counter() - started
    config.results = {
        "validation_accuracy": float(result.metrics["accuracy"]),
        "validation_balanced_accuracy": float(result.metrics["balanced_accuracy"]),
        "wall_s": round(wall_s, 1),
        "num_classes": task.num_labels,
        "parameters": sum(p.numel() for p in result.model.parameters()),
    }
    card = MiniVFMCardData.from_pretraining(config, MINI_VFM, task.label_names)
    render_mini_vfm_card(card).save(os.path.join(output_dir, "README.md"))
    from ..files import write_json_atomically

    write_json_atomically(os.path.join(output_dir, "pretraining.json"), asdict(config))
    return config.results
