"""Run a short distillation on pre-rendered tensors and write the loss curve and student weights.

Launched by tests/test_multiprocess.py (and, with ``--task segmentation``: tiny SegFormers on masks,
by tests/test_segmentation_losses.py) both as one process and with
``accelerate launch --multi_gpu --num_processes 2`` (two CPU ranks over gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402,F401  (offline Hub settings)
import torch  # noqa: E402
from conftest import tiny_dinov2  # noqa: E402
from test_trainer import _tensor_dataset  # noqa: E402

from hf_task_distill import DistillationArguments, DistillationTrainer, create_student  # noqa: E402
from hf_task_distill.devices import end_processes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    cli = parser.parse_args()

    trainer_class = DistillationTrainer
    if cli.task == "segmentation":
        from test_segmentation_losses import MaskDataset, RecordingTrainer, tiny_segformer

        teacher, student = tiny_segformer(0), tiny_segformer(1, batch_norm=False)
        dataset, trainer_class = MaskDataset(128, seed=5), RecordingTrainer
    else:
        torch.manual_seed(0)
        teacher = tiny_dinov2()
        torch.manual_seed(1)
        student = create_student("test_convnext", teacher.config.id2label, image_size=32)
        dataset = _tensor_dataset(128, seed=5)
    args = DistillationArguments(
        output_dir=cli.output_dir,
        per_device_train_batch_size=cli.per_device_batch,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=cli.steps,
        distill_loss="kd",  # KL plus label cross-entropy (function_matching, the default, takes no labels)
        temperature=2.0,
        ce_weight=0.7,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_drop_last=True,
    )
    trainer = trainer_class(model=student, teacher_model=teacher, args=args, train_dataset=dataset)
    trainer.train()
    result = {"world_size": trainer.args.world_size}
    if cli.task == "segmentation":  # each rank's labelled pixels per step, as [rank 0, rank 1] pairs
        from accelerate.utils import gather_object

        by_rank = [[sum(step) for step in trainer.labelled_pixels]]
        by_rank = gather_object(by_rank) if trainer.args.world_size > 1 else by_rank
        result["labelled_pixels_by_rank"] = [list(step) for step in zip(*by_rank, strict=True)]
    if trainer.is_world_process_zero():
        result["losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result["loss_ce"] = [e.get("loss_ce") for e in trainer.state.log_history if "loss" in e]
        with open(os.path.join(cli.output_dir, "result.json"), "w") as f:
            json.dump(result, f)
        torch.save(
            {k: v.cpu() for k, v in student.state_dict().items()}, os.path.join(cli.output_dir, "student.pt")
        )


if __name__ == "__main__":
    main()
    end_processes()
