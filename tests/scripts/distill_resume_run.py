"""Distil on raw images with random views for 8 steps, checkpointing every 2; writes the final student.

``--slow`` pauses after each step so a test can SIGKILL the run between checkpoints; ``--resume``
continues from the newest complete checkpoint (the Trainer restores optimizer, scheduler, RNG and
data position).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402,F401  (offline Hub settings)
import torch  # noqa: E402
from conftest import distill_args, make_colour_dataset, tiny_dinov2, tiny_processor  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_task_distill import DistillationTrainer, PairedViews, ViewSpec, create_student  # noqa: E402
from hf_task_distill.devices import end_processes  # noqa: E402


class Pause(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    teacher = tiny_dinov2(seed=0)
    torch.manual_seed(1)
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    spec = ViewSpec.from_image_processor(tiny_processor())
    args = distill_args(
        pathlib.Path(cli.output_dir),
        output_dir=cli.output_dir,
        per_device_train_batch_size=16,
        max_steps=8,
        save_strategy="steps",
        save_steps=2,
        learning_rate=5e-3,
        temperature=2.0,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=make_colour_dataset(
            48, seed=5, labelled=False
        ),  # 3 batches an epoch: resumes mid-epoch
        views=PairedViews(spec, ViewSpec.from_model(student)),
    )
    if cli.slow:
        trainer.add_callback(Pause())
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    save_file(
        {k: v.contiguous() for k, v in student.state_dict().items()},
        os.path.join(cli.output_dir, "final.safetensors"),
    )


if __name__ == "__main__":
    main()
    end_processes()
