"""Stage 5, ``evaluate``: every model of the run on the task's test split (validation if none)."""

from __future__ import annotations

import os

from ._settings import TASK
from .base import Stage, StageResult, register_stage


@register_stage
class EvaluateStage(Stage):
    """Every model of the run on the test split; output the metrics and ``confusion_matrices.json``."""

    name = "evaluate"
    command = "evaluate"
    command_help = "Everything up to evaluation on the test split; prints the results table."
    settings_read = TASK  # which models it evaluates: its upstream stages
    recomputed_freely = True

    def upstream(self, config):
        return ("teacher", "distill", "finetune") + (("baseline",) if config.student.baseline else ())

    def task_splits(self, config, eval_split):
        return (eval_split,)

    def report(self, outputs):
        """The results table: one row per model, the task type's metrics as columns."""
        from ..tasks import get_task_type

        if "results" not in outputs:
            return []
        task_type = get_task_type(outputs.get("task_type", "image-classification"))
        lines = [
            "",
            f"Results on the {outputs['split']} split ({outputs['images']} images):",
            "",
            "| model | " + " | ".join(task_type.metric_titles) + " |",
            "|---|" + "---:|" * len(task_type.metric_names),
        ]
        for name, metrics in outputs["results"].items():
            values = " | ".join(f"{metrics[k]:.4f}" for k in task_type.metric_names)
            lines.append(f"| {name} | {values} |")
        return lines

    def run(self, context, directory):
        """Metrics of every model, and their confusion matrices in ``confusion_matrices.json`` (rows:
        true class, columns: predicted, both in the task's order)."""
        from ..files import write_json_atomically

        if not context.state.is_main_process:
            return StageResult(
                {}
            )  # only the main process writes the manifest: the others would repeat its work
        from ..tasks import get_task_type

        task_type = get_task_type(context.task.task_type)
        dataset, names = context.task[context.eval_split], list(context.task.label_names)
        results, details = {}, {}
        for label, path in _models(context).items():
            results[label], detail = _evaluate_one(context, label, path, dataset)
            if detail is not None:
                details[label] = detail
        # classification: confusion_matrices.json {"labels", "matrices"}; segmentation: per_class_iou.json
        name, key = task_type.details_file
        path = os.path.join(directory, f"{name}.json")
        write_json_atomically(path, {"labels": names, key: details}, indent=None)
        outputs = {
            "split": context.eval_split,
            "images": len(dataset),
            "results": results,
            name: path,
            "task_type": task_type.name,
        }
        return StageResult(outputs)


def _models(context) -> dict[str, str]:
    """The run's models by the name the results table gives them."""
    models = {}
    if context.config.teacher.teacher_strategy != "none" or context.distillation_uses_teacher_predictions:
        models["teacher"] = context.teacher_path()  # not a backbone that only lent its features
    if context.manifest("baseline") is not None and context.config.student.baseline:
        models["student, labels only"] = context.outputs("baseline")["model"]
    models["student, distilled"] = context.outputs("distill")["model"]
    models["student, distilled + finetuned"] = context.outputs("finetune")["model"]
    return models


def _evaluate_one(context, label: str, path: str, dataset):
    """One model's metrics and report details (:meth:`TaskType.evaluate <hf_task_distill.tasks.TaskType.evaluate>`)."""
    from ..tasks import get_task_type

    task_type = get_task_type(context.task.task_type)
    model = task_type.load_model(path, trust_remote_code=context.config.teacher.trust_remote_code)
    where = f"the {context.eval_split} split of '{context.task.name}' ({label})"
    return task_type.evaluate(
        model, dataset, task=context.task, batch_size=context.config.run.batch_size, where=where
    )


def finished_student_labels(name: str, task_type_name: str = "image-classification") -> list[str] | None:
    """The class names of ``name`` (a Hub id or folder) when it is a finished model of the task type
    (its ``config.json`` names a head class of the type's auto class, e.g. ``...ForImageClassification``,
    ``TimmWrapperForImageClassification``), else ``None``.

    Reads only ``config.json`` (``id2label``; a timm checkpoint's ``label_names``), through
    ``AutoConfig``: a timm architecture name (``mobilevitv2_100``) or a backbone without a head is not a
    finished model. Errors other than "no such model config" propagate (a wrong token, a private
    repo: the user must see them).
    """
    from transformers import AutoConfig

    from ..sources import is_local_path, resolve_model_source
    from ..tasks import get_task_type
    from ..tasks.base import _auto_class_names

    source = resolve_model_source(name)
    if not is_local_path(source) and "/" not in source:
        return None  # a timm architecture or a canonical backbone name: something to train
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError):
        return None  # not a transformers/timm model folder or repo: the pipeline reports it
    heads = _auto_class_names(get_task_type(task_type_name).model_class())
    if not heads.intersection(config.architectures or ()):
        return None  # a backbone (or another task's model): something to train a head on
    names = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    generic = all(str(label) == f"LABEL_{i}" for i, label in enumerate(names))
    return None if generic else names


def evaluate_finished_student(context, directory: str) -> dict:
    """Evaluate ``--student`` as it is (a published or local finished classifier of the task) on the
    task's evaluation split: no teacher, no training. Writes ``results.json`` and the details file
    (``confusion_matrices.json``) in ``directory``.

    Returns:
        The outputs :meth:`EvaluateStage.report` prints: ``split``, ``images``, ``results`` (one row
        named by ``--student``), ``task_type``.
    """
    from ..files import write_json_atomically
    from ..tasks import get_task_type

    student = context.config.student.student
    task_type = get_task_type(context.task.task_type)
    dataset = context.task[context.eval_split]
    metrics, detail = _evaluate_one(context, student, student, dataset)
    name, key = task_type.details_file
    outputs = {
        "split": context.eval_split,
        "images": len(dataset),
        "results": {student: metrics},
        "task_type": task_type.name,
    }
    if context.state.is_main_process:  # one writer under `accelerate launch`
        os.makedirs(directory, exist_ok=True)
        details = {"labels": list(context.task.label_names), key: {student: detail}}
        write_json_atomically(os.path.join(directory, f"{name}.json"), details, indent=None)
        write_json_atomically(os.path.join(directory, "results.json"), outputs)
    context.state.wait_for_everyone()
    return outputs
