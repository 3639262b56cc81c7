"""Stage 1: finetune a vision foundation model on a labelled task, ready to distil from.

    accelerate launch examples/run_finetune_teacher.py \
        --model facebook/dinov2-large --dataset eurosat --per_class 10 \
        --teacher_strategy lp-ft --output_dir teachers/dinov2-large-eurosat-10shot \
        --num_train_epochs 20 --learning_rate 1e-4 --bf16

Strategies: linear, full (layer-wise lr decay), lp-ft, lora (merged after training). The output
folder holds a standard transformers classifier, its image processor and a model card.
Every TrainingArguments flag works; --help lists them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_task_distill.data import load_target_task
from hf_task_distill.teacher_finetuning import TeacherFinetuner, TeacherFinetuningArguments


@dataclass
class ScriptArguments:
    model: str = field(
        metadata={"help": "Vision foundation model: Hub id or folder (e.g. facebook/dinov2-large)."}
    )
    dataset: str = field(
        metadata={"help": "Target task: registry name (cub, eurosat, ...), Hub id or image folder."}
    )
    per_class: int | None = field(
        default=None, metadata={"help": "Label budget: images per class (paper: 5/10/25...)."}
    )
    fraction: float | None = field(
        default=None, metadata={"help": "Label budget: fraction of each class (ImageNet 1%...)."}
    )
    budget_seed: int = field(default=0, metadata={"help": "Seed of the label-budget draw."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the model's own code to run (off by default)."}
    )


def main() -> None:
    script, args = HfArgumentParser(
        (ScriptArguments, TeacherFinetuningArguments)
    ).parse_args_into_dataclasses()
    task = load_target_task(script.dataset)
    if script.per_class is not None or script.fraction is not None:
        task = task.with_label_budget(
            per_class=script.per_class, fraction=script.fraction, seed=script.budget_seed
        )
    finetuner = TeacherFinetuner(script.model, task, args, trust_remote_code=script.trust_remote_code)
    result = finetuner.train()
    if args.process_index == 0:
        folder = finetuner.save()
        print(f"teacher saved to {folder} ({result.strategy}, selected on the {result.validation_source}):")
        print(json.dumps(result.metrics, indent=2))


if __name__ == "__main__":
    main()
