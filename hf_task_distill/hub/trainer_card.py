"""The model card :class:`~hf_task_distill.DistillationTrainer` writes next to a saved student.

As in setfit (``setfit.model_card``) the card's data is filled by a ``TrainerCallback``
(:class:`ModelCardCallback`: the work done, counted as it happens, and the time it took), by the
trainer when it saves (the models' names, the loss, the last evaluation, the FLOPs per image) and
by the user (:class:`ModelCardOptions`, set with ``DistillationTrainer.create_model_card``). It is a
:class:`~hf_task_distill.hub.cards.StudentCardData` rendered by
:func:`~hf_task_distill.hub.cards.render_student_card`: the same card the pipeline publishes, with
the lines only the pipeline knows (the teacher's and the student's finetuning, the comparison
table) left out. Every model and dataset is named by :func:`~hf_task_distill.hub.names.public_name`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..ledger import ComputeLedger, LedgerEntry, describe_device
from ..models.labels import label_names_of
from .cards import StudentCardData, descriptive_name
from .names import hub_id, public_model_name, public_name

__all__ = [
    "ModelCardCallback",
    "ModelCardMixin",
    "ModelCardOptions",
    "last_evaluation",
    "student_base_model",
    "trainer_card_data",
]

#: The ledger's stage for the trainer's work (the pipeline's name for the same stage).
STAGE = "distill"


@dataclass
class ModelCardOptions:
    """What only the user knows about a student, for its card (``create_model_card`` arguments).

    Args:
        model_name: the card's title and ``model-index`` name; default: the Hub repo of
            ``args.hub_model_id``, else ``<architecture>-<dataset>-student``.
        dataset_name: the task dataset (a Hub id, or a name) the evaluation ran on: listed under
            ``datasets`` (a Hub id) and naming the ``model-index`` results.
        transfer_set: the transfer set the student learned from (a Hub id, or a name).
        teacher: the teacher's name or Hub id; default: the teacher model's ``config._name_or_path``.
        finetuned_from: the Hub id of the student's starting weights; default: read from the student.
        license: the model's license (a Hub license id such as ``apache-2.0``).
        tags: extra Hub tags.
    """

    model_name: str | None = None
    dataset_name: str | None = None
    transfer_set: str | None = None
    teacher: str | None = None
    finetuned_from: str | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=list)

    def update(self, **values: Any) -> None:
        """Set the options given (not ``None``); ``tags`` may be one string."""
        known = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise TypeError(f"unknown model card option '{name}'; known: {', '.join(sorted(known))}")
            if value is None:
                continue
            if name == "tags":
                value = [value] if isinstance(value, str) else list(value)
            elif not isinstance(value, str):
                raise TypeError(f"model card option '{name}' must be a string, got {type(value).__name__}")
            setattr(self, name, value)


class ModelCardCallback(TrainerCallback, ExportableState):
    """Counts the work a :class:`~hf_task_distill.DistillationTrainer` does, for its card's compute ledger.

    Images are counted over all processes: the trainer hands over each optimizer step's rows
    (:meth:`add_training_rows`), evaluations are counted here from their data loader. The counts are
    saved in each checkpoint's ``trainer_state.json`` (``ExportableState``) and taken back when a run
    resumes from it, so a resumed student's card counts the work since its first step.
    """

    _COUNTS = (
        "student_train_images",
        "teacher_train_images",
        "student_eval_images",
        "teacher_eval_images",
        "last_eval_images",
        "train_seconds",
    )

    def __init__(self):
        self.student_train_images = 0
        self.teacher_train_images = 0
        self.student_eval_images = 0
        self.teacher_eval_images = 0
        self.last_eval_images = 0
        self.train_seconds = 0.0
        #: input sizes ``[height, width]`` of the training batches, per model
        self.sizes: dict[str, list[int]] = {}
        self._started: float | None = None
        self._pending: list[tuple[Any, bool]] = []  # rows not read yet (device tensors: no sync per step)

    def _flush(self) -> None:
        for rows, teacher_ran in self._pending:
            rows = int(rows)
            self.student_train_images += rows
            self.teacher_train_images += rows if teacher_ran else 0
        self._pending = []

    def state(self) -> dict[str, Any]:
        """The counts so far, as ``TrainerState.stateful_callbacks`` stores them in a checkpoint."""
        self._flush()
        attributes = {name: getattr(self, name) for name in self._COUNTS}
        return {"args": {}, "attributes": {**attributes, "sizes": dict(self.sizes)}}

    def add_training_rows(self, rows, *, teacher_ran: bool, sizes: dict[str, list[int]]) -> None:
        """One optimizer step's rows over all processes (an int, or a 0-d tensor read only when the
        counts are); ``teacher_ran``: the teacher saw them too; ``sizes``: each model's input size."""
        self._pending.append((rows, teacher_ran))
        for model, size in sizes.items():
            self.sizes.setdefault(model, list(size))

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the clock; a resumed run takes its counts back from the checkpoint's state."""
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):  # resumed: the checkpoint's counts
            self._pending = []
            for name, value in saved.get("attributes", {}).items():
                if name in self._COUNTS or name == "sizes":
                    setattr(self, name, value)
        self._started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        """Add this run's training time (seconds) to the total."""
        if self._started is not None:
            self.train_seconds += time.perf_counter() - self._started
            self._started = None

    def on_evaluate(self, args, state, control, metrics=None, eval_dataloader=None, **kwargs):
        """Count the evaluation's forward passes (the evaluation split's rows)."""
        dataset = getattr(eval_dataloader, "dataset", None)
        try:
            rows = len(dataset)
        except TypeError:  # an iterable dataset: its size is not known
            return
        self.last_eval_images = rows
        self.student_eval_images += rows
        if any(key.endswith("_agreement") for key in metrics or {}):  # the teacher's logits were there
            self.teacher_eval_images += rows

    def ledger(self, names: dict[str, str], flops_per_image) -> ComputeLedger:
        """The work as a :class:`~hf_task_distill.ledger.ComputeLedger`: ``names`` maps ``"student"``
        and ``"teacher"`` to the names to print, ``flops_per_image(model, training)`` gives FLOPs."""
        self._flush()
        ledger = ComputeLedger(wall_s={STAGE: round(self.train_seconds, 3)})
        work = (
            ("teacher", "teacher forward", self.teacher_train_images, False),
            ("student", "student training", self.student_train_images, True),
            ("teacher", "teacher forward (evaluation)", self.teacher_eval_images, False),
            ("student", "student forward (evaluation)", self.student_eval_images, False),
        )
        device = describe_device()
        for model, what, images, training in work:
            if images:
                flops = flops_per_image(model, training)
                ledger.add(LedgerEntry(STAGE, what, names[model], int(images), flops, device))
        return ledger


def student_base_model(model) -> str | None:
    """The Hub id of the weights ``model`` started from, or ``None`` (random initialisation, a local
    folder). A timm student keeps its weights' ``hf_hub_id`` in ``pretrained_cfg`` only when it was
    created with them (:func:`~hf_task_distill.models.create_student`); another model is named by the
    ``config._name_or_path`` that ``from_pretrained`` sets, as transformers' own cards do."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "timm_wrapper":
        pretrained_cfg = getattr(config, "pretrained_cfg", None)
        return hub_id(pretrained_cfg.get("hf_hub_id")) if isinstance(pretrained_cfg, dict) else None
    return hub_id(getattr(config, "_name_or_path", None))


def _architecture(model) -> str:
    config = getattr(model, "config", None)
    return (
        getattr(config, "architecture", None) or getattr(config, "model_type", None) or type(model).__name__
    )


def last_evaluation(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of the last evaluation in ``TrainerState.log_history`` (``eval_`` dropped, no timings)."""
    for entry in reversed(log_history):
        metrics = {
            key.removeprefix("eval_"): float(value)
            for key, value in entry.items()
            if key.startswith("eval_")
            and not key.endswith(("_runtime", "_per_second"))
            and isinstance(value, (int, float))
        }
        if metrics:
            return metrics
    return {}


def trainer_card_data(
    trainer, options: ModelCardOptions, flops_per_image, *, teacher=None
) -> StudentCardData:
    """The card data of ``trainer`` 's student, from its models, arguments, state and ``options``.

    Args:
        trainer: a :class:`~hf_task_distill.DistillationTrainer`.
        options: what the user said (:class:`ModelCardOptions`).
        flops_per_image: ``(model, training) -> float``, ``model`` being ``"student"`` or ``"teacher"``.
        teacher: the teacher model (unwrapped), if the trainer has one: named by its ``config._name_or_path``.
    """
    from ..tasks import task_type_of

    student = trainer.accelerator.unwrap_model(trainer.model)
    architecture = _architecture(student)
    source = options.teacher or getattr(getattr(teacher, "config", None), "_name_or_path", None)
    teacher_name = public_model_name(source) if source else None  # "<teacher>, finetuned" kept
    base_model = options.finetuned_from or student_base_model(student)
    work = trainer.model_card_callback
    names = {"student": public_name(base_model or architecture), "teacher": teacher_name or "teacher"}
    views = getattr(trainer, "views", None)
    size = work.sizes.get("student") or (list(views.student.size) if views is not None else [])
    repo_id = hub_id(trainer.args.hub_model_id)
    return StudentCardData(
        model_name=options.model_name
        or repo_id
        or descriptive_name(architecture, options.dataset_name or "distilled", "student"),
        architecture=architecture,
        label_names=label_names_of(student.config) or [str(i) for i in range(student.config.num_labels)],
        teacher_base=teacher_name,
        distill_loss=trainer.args.distill_loss,
        temperature=trainer.args.temperature,
        transfer_description=_transfer_description(trainer.train_dataset, options.transfer_set),
        image_size=int(size[0]) if len(size) == 2 and size[0] == size[1] else 0,
        ledger=work.ledger(names, flops_per_image).markdown(),
        base_model=base_model,
        metrics=last_evaluation(trainer.state.log_history),
        eval_images=work.last_eval_images or None,
        library_name="timm"
        if getattr(student.config, "model_type", None) == "timm_wrapper"
        else "transformers",
        task_type=task_type_of(student).name,
        dataset_id=options.dataset_name,
        transfer_repo=options.transfer_set,
        license=options.license,
        tags=list(options.tags),
        repo_id=repo_id,
    )


def _transfer_description(dataset, transfer_set: str | None) -> str | None:
    """``"4,096 images of `me/transfer`"``; ``None`` when neither the size nor a name is known."""
    try:
        rows = f"{len(dataset):,} images"
    except TypeError:  # no dataset, or an iterable one
        rows = "the images"
    if transfer_set:
        return f"{rows} of `{public_name(transfer_set)}`"
    return rows if rows != "the images" else None


class ModelCardMixin:
    """For a ``transformers.Trainer`` of a student: ``save_model`` writes the student's card.

    The card (``README.md``, a ``huggingface_hub.ModelCard``) goes next to the saved weights, from
    the process that saves them (``args.should_save``); checkpoints get none (they are not meant for
    publishing, and their folders are rotated away). The trainer names its teacher with
    :attr:`card_teacher_model`, hands its training rows to :attr:`model_card_callback` and has the
    ``args`` of :class:`~hf_task_distill.DistillationArguments` (``distill_loss``, ``temperature``).
    """

    #: The teacher the card names and counts FLOPs of (``None``: no teacher model).
    card_teacher_model = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: what the user said for the card (:meth:`create_model_card`); the rest is read at saving
        self.model_card_options = ModelCardOptions()
        self._card_flops: dict[tuple, float] = {}
        self.add_callback(ModelCardCallback())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """``Trainer.save_model``, then the model card (``README.md``) next to the weights, on the
        process that saves, and never in a checkpoint."""
        saved = super().save_model(output_dir, _internal_call)
        if not getattr(self, "_writing_checkpoint", False):
            self.create_model_card(output_dir=output_dir)
        return saved

    @property
    def model_card_callback(self) -> ModelCardCallback:
        """The callback counting this trainer's work for the card (a resumed run may replace it)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, ModelCardCallback))

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        *,
        transfer_set: str | None = None,
        teacher: str | None = None,
        finetuned_from: str | None = None,
        license: str | None = None,
        dataset: str | None = None,
        output_dir: str | None = None,
    ):
        """Write the student's model card, ``README.md``, to ``output_dir`` (default ``args.output_dir``).

        ``save_model`` calls it, so every saved student carries its card (``push_to_hub`` too). The
        options given here are kept for every later card; the rest is read from the trainer: the
        student's architecture, classes and starting weights (``base_model``: their Hub id; none
        from random initialisation), the teacher (its ``config._name_or_path``), the loss and its
        temperature, the last evaluation's metrics (a ``model-index`` once a dataset is named), and
        a compute ledger of the images the student trained on and the teacher's forward passes,
        with FLOPs counted on the real models. Local folders are named ``"<folder> (local)"``
        (:func:`~hf_task_distill.hub.public_name`). Every process must call it (FLOPs are counted
        on each); the process that saves writes the file.

        Args:
            model_name: the card's title (default: ``args.hub_model_id``'s repo, else
                ``<architecture>-<dataset>-student``).
            dataset_name: the task dataset evaluated on (a Hub id is listed under ``datasets``);
                ``dataset`` is the same, as ``Trainer.push_to_hub`` passes it.
            tags: extra Hub tags.
            transfer_set: the transfer set's Hub id or name.
            teacher: the teacher's Hub id or name, when its config does not say it.
            finetuned_from: the Hub id of the student's starting weights, when the student does not say it.
            license: a Hub license id (``apache-2.0``).
            output_dir: where to write ``README.md``.

        Returns:
            The ``huggingface_hub.ModelCard`` written.
        """
        import os

        from .cards import render_student_card

        self.model_card_options.update(
            model_name=model_name,
            dataset_name=dataset_name or dataset,
            tags=tags,
            transfer_set=transfer_set,
            teacher=teacher,
            finetuned_from=finetuned_from,
            license=license,
        )
        data = trainer_card_data(
            self, self.model_card_options, self._flops_per_image, teacher=self.card_teacher_model
        )
        card = render_student_card(data)
        if self.args.should_save:
            directory = os.fspath(output_dir or self.args.output_dir)
            os.makedirs(directory, exist_ok=True)
            card.save(os.path.join(directory, "README.md"))
        return card

    def _flops_per_image(self, model: str, training: bool) -> float:
        """FLOPs of one image through the student or the teacher at the size it was trained at
        (:func:`~hf_task_distill.ledger.count_flops_per_image`), counted once per size."""
        from ..ledger import count_flops_per_image

        size = self.model_card_callback.sizes.get(model) or getattr(self.views, model).size
        key = (model, tuple(size), training)
        if key not in self._card_flops:
            module = self.model if model == "student" else self.card_teacher_model
            module = self.accelerator.unwrap_model(module)
            self._card_flops[key] = count_flops_per_image(module, tuple(size), training=training)
        return self._card_flops[key]
