"""Run a short distillation on pre-rendered tensors and write the loss curve and student weights.

Launched by tests/test_multiprocess.py both as one process and with
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
    cli = parser.parse_args()

    torch.manual_seed(0)
    teacher = tiny_dinov2()
    torch.manual_seed(1)
    student = create_student("test_convnext", teacher.config.id2label, image_size=32)
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
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=_tensor_dataset(128, seed=5)
    )
    trainer.train()
    if trainer.is_world_process_zero():
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        parts = [e.get("loss_ce") for e in trainer.state.log_history if "loss" in e]
        with open(os.path.join(cli.output_dir, "result.json"), "w") as f:
            json.dump({"world_size": trainer.args.world_size, "losses": losses, "loss_ce": parts}, f)
        torch.save(
            {k: v.cpu() for k, v in student.state_dict().items()}, os.path.join(cli.output_dir, "student.pt")
        )


if __name__ == "__main__":
    main()
    end_processes()
