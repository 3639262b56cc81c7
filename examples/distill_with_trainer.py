"""Distil a finetuned teacher into a timm student with DistillationTrainer, from your own code.

    accelerate launch examples/distill_with_trainer.py \
        --teacher my-org/dinov2-large-cub-teacher --student mobilevitv2_100 \
        --dataset cub --transfer_dataset my-org/cub-retrieved-transfer-set \
        --output_dir students/mobilevitv2-cub --num_train_epochs 100 --bf16

``--teacher`` must already be finetuned on the task (a classifier whose labels are the task's).
With ``--teacher_cache_dir``, the teacher runs once on ``--num_views`` augmented views of every
transfer image (a resumable cache in that folder) and training replays them instead of running the
teacher every step: cheaper as soon as the epochs outnumber the views.
``--transfer_dataset`` is any image dataset (Hub id, folder); its labels, if any, are ignored unless
``--distill_loss kd --ce_weight`` > 0. Without it, the task's own training images are the transfer set. Every
``TrainingArguments``/``DistillationArguments`` flag works (``--help`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_task_distill import (
    DistillationArguments,
    DistillationTrainer,
    TeacherCacheConfig,
    build_teacher_cache,
    create_student,
    load_target_task,
    load_teacher,
)
from hf_task_distill.data import load_image_dataset


@dataclass
class ScriptArguments:
    teacher: str = field(metadata={"help": "Finetuned teacher: Hub id or folder of an image classifier."})
    dataset: str = field(
        metadata={"help": "Target task: a registry name (cub, eurosat, ...), Hub id or image folder."}
    )
    student: str = field(
        default="mobilevitv2_100", metadata={"help": "timm architecture or Hub id of the student."}
    )
    transfer_dataset: str | None = field(
        default=None, metadata={"help": "Unlabelled transfer set (Hub id or folder)."}
    )
    transfer_split: str = field(default="train", metadata={"help": "Split of the transfer set to use."})
    student_image_size: int | None = field(
        default=None, metadata={"help": "Student resolution (timm students)."}
    )
    pretrained_student: bool = field(
        default=False, metadata={"help": "Start the student from pretrained weights."}
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Build (or resume) a teacher-output cache here and distil from it."},
    )


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, DistillationArguments, TeacherCacheConfig))
    script, args, cache_config = parser.parse_args_into_dataclasses()
    task = load_target_task(script.dataset)
    teacher = load_teacher(script.teacher)
    student = create_student(
        script.student,
        teacher.config.id2label,
        pretrained=script.pretrained_student,
        image_size=script.student_image_size,
    )
    transfer = (
        load_image_dataset(script.transfer_dataset, split=script.transfer_split)
        if script.transfer_dataset
        else task["train"]
    )
    eval_split = "validation" if "validation" in task.splits else "test" if "test" in task.splits else None
    cache = None
    if script.teacher_cache_dir:
        from accelerate import PartialState

        cache = build_teacher_cache(
            teacher.to(PartialState().device), transfer, script.teacher_cache_dir, config=cache_config
        )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        teacher_cache=cache,
        args=args,
        train_dataset=transfer,
        eval_dataset=task[eval_split] if eval_split else None,
    )
    trainer.train()
    trainer.save_model()
    if eval_split:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
