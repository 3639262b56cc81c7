"""Model cards rendered from a typed ``CardData`` and a Jinja template (as setfit does), not by
string concatenation. Tokens never enter a card: only what is passed in the data is written.

Every model or dataset source a card names goes through :func:`~hf_task_distill.hub.names.public_name`
when the card is rendered (a Hub id as is, a local folder as ``"<folder> (local)"``), so no card
carries a path, user or host name of the machine that made it, whoever filled in its data."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

from .names import hub_id, public_model_name, public_name, short_name

__all__ = [
    "MiniVFMCardData",
    "StudentCardData",
    "TeacherCardData",
    "TransferSetCardData",
    "render_mini_vfm_card",
    "render_student_card",
    "render_teacher_card",
    "render_transfer_set_card",
    "add_teacher_cache_section",
    "write_teacher_card",
]


def label_budget_summary(task) -> dict[str, Any] | None:
    """The settings of a task's label budget worth printing (per_class/fraction, seed, size)."""
    if not task.label_budget:
        return None
    return {k: v for k, v in task.label_budget.items() if v is not None and k != "split"}


def descriptive_name(source: str, task_name: str, role: str) -> str:
    """A model name for a card when no Hub id is known: ``<source>-<task>-<role>``, e.g.
    ``dinov2-large-eurosat-teacher`` (folder or repo names only, nothing else of a path)."""
    parts = [short_name(source), short_name(task_name), role]
    return "-".join(re.sub(r"[^\w.-]+", "-", p).strip("-.") or "model" for p in parts)


def _template(name: str) -> str:
    return resources.files("hf_task_distill.hub").joinpath(f"templates/{name}.md").read_text(encoding="utf-8")


STRATEGY_DESCRIPTIONS = {
    "linear": "linear probe on frozen features",
    "full": "full finetuning with layer-wise learning-rate decay",
    "lp-ft": "linear probe, then full finetuning from that head",
    "lora": "LoRA adapters on the attention projections, merged into the weights",
}


@dataclass
class TeacherCardData:
    """Everything a teacher's card says. ``repo_id``: its Hub repo, when known (the usage example
    loads it; without one, the example loads the card's own folder)."""

    model_name: str
    base_model: str
    strategy: str
    task_name: str
    label_names: list[str]
    train_size: int
    validation_source: str
    metrics: dict[str, float] = field(default_factory=dict)
    label_budget: dict[str, Any] | None = None
    dataset_id: str | None = None
    license: str | None = None
    repo_id: str | None = None

    @classmethod
    def from_finetuner(cls, finetuner) -> TeacherCardData:
        """The card of a trained :class:`~hf_task_distill.teacher_finetuning.TeacherFinetuner`: named by its
        ``args.hub_model_id`` if set, else ``<base model>-<task>-teacher``."""
        task, result = finetuner.task, finetuner.result
        budget = label_budget_summary(task)
        repo_id = hub_id(getattr(finetuner.args, "hub_model_id", None))
        return cls(
            model_name=repo_id or descriptive_name(finetuner.model_name_or_path, task.name, "teacher"),
            base_model=public_name(finetuner.model_name_or_path),
            strategy=result.strategy,
            task_name=task.name,
            label_names=list(task.label_names),
            train_size=len(finetuner.train_split),
            validation_source=result.validation_source,
            metrics={
                k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and k != "epoch"
            },
            label_budget=budget,
            dataset_id=task.spec.hub_id if task.spec is not None else None,
            license=task.spec.license if task.spec is not None else None,
            repo_id=repo_id,
        )


def render_teacher_card(data: TeacherCardData):
    """A ``huggingface_hub.ModelCard`` for a finetuned teacher."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        base_model=hub_id(data.base_model),
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["hf-task-distill", "vision-foundation-model", "teacher", f"finetune-{data.strategy}"],
        datasets=[data.dataset_id] if data.dataset_id else None,
        license=data.license if data.license and " " not in data.license else None,
    )
    template = _template("teacher_card")
    fields = asdict(data)
    fields["base_model"] = public_name(data.base_model)
    fields["repo_id"] = hub_id(data.repo_id)
    fields["label_budget"] = ", ".join(f"{k}={v}" for k, v in (data.label_budget or {}).items()) or None
    fields["strategy_description"] = STRATEGY_DESCRIPTIONS.get(data.strategy, data.strategy)
    fields["num_labels"] = len(data.label_names)
    fields["label_names"] = ", ".join(data.label_names)
    return _ending_in_newline(ModelCard.from_template(card_data, template_str=template, **fields))


def write_teacher_card(data: TeacherCardData, output_dir: str | os.PathLike) -> str:
    """Write the teacher's card as ``<output_dir>/README.md``; returns its path."""
    path = os.path.join(os.fspath(output_dir), "README.md")
    render_teacher_card(data).save(path)
    return path


@dataclass
class TransferSetCardData:
    """Everything a transfer set's dataset card says: provenance, selection and the size at each step."""

    name: str
    task_name: str
    pool_name: str
    stats: dict[str, Any]
    per_query_k: int | None = None
    budget: int | None = None
    leakage_threshold: float = 0.95
    min_teacher_confidence: float | None = None
    has_confidence: bool = False
    pool_license: str | None = None
    pool_citation: str | None = None
    contact_sheet: str | None = None

    @classmethod
    def from_build(
        cls,
        builder,
        transfer,
        pool,
        *,
        name: str,
        task_name: str,
        contact_sheet: str | None = None,
        pool_name: str | None = None,
    ):
        """``pool_name``: the pool as the user named it (a Hub id or a folder); else the dataset's own name."""
        info = getattr(pool, "info", None)
        return cls(
            name=name,
            task_name=task_name,
            pool_name=public_name(
                pool_name
                or getattr(info, "dataset_name", None)
                or getattr(info, "builder_name", None)
                or "image pool"
            ),
            stats=builder.stats.as_dict(),
            per_query_k=builder.config.per_query_k,
            budget=builder.config.transfer_budget,
            leakage_threshold=builder.config.leakage_threshold,
            min_teacher_confidence=builder.config.min_teacher_confidence,
            has_confidence="teacher_confidence" in (transfer.column_names or []),
            pool_license=(getattr(info, "license", None) or None),
            pool_citation=(getattr(info, "citation", None) or None),
            contact_sheet=contact_sheet,
        )


def render_transfer_set_card(data: TransferSetCardData):
    """A ``huggingface_hub.DatasetCard`` for a retrieved transfer set."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        task_categories=["image-classification"],
        tags=["hf-task-distill", "transfer-set", "knowledge-distillation", "retrieval"],
        size_categories=[_size_category(int(data.stats.get("final", 0)))],
    )
    template = _template("transfer_set_card")
    fields = asdict(data)
    fields["pool_name"] = public_name(data.pool_name)
    fields["stats"] = {**data.stats, "encoder": public_name(data.stats.get("encoder"))}
    fields["selection"] = (
        f"top {data.per_query_k} neighbours per query, union without duplicates"
        if data.per_query_k is not None
        else f"a budget of {data.budget} images spread evenly over the query classes"
    )
    return _ending_in_newline(DatasetCard.from_template(card_data, template_str=template, **fields))


def add_teacher_cache_section(card_path: str, cache, record: dict[str, Any], repo_id: str | None) -> None:
    """Add to a published transfer set's card (``README.md``) what its teacher cache is: the teacher
    and its licence, views, storage, the teacher FLOPs a student distilled from it saves, and how.

    Args:
        card_path: the transfer set's ``README.md`` (a ``DatasetCard``), rewritten in place.
        cache (`TeacherCache`): the published cache.
        record: :func:`~hf_task_distill.hub.reinforced.publish_teacher_cache`'s ``published`` record.
        repo_id: the dataset repo (the usage example's ``teacher_cache=``); ``None``: a placeholder.

    The card's YAML gains the tags ``reinforced`` and ``teacher-outputs``, and a ``configs`` entry
    naming ``data/`` as the rows, so that ``datasets.load_dataset`` never reads ``teacher_cache/``.
    """
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(card_path)
    card.data.tags = [*(getattr(card.data, "tags", None) or []), "reinforced", "teacher-outputs"]
    card.data.configs = [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}
    ]
    names = [cache.id2label[i] for i in sorted(cache.id2label)]
    storage = (
        f"float16 logits of all {cache.num_labels} classes"
        if cache.top_k is None
        else f"the top {cache.top_k} float16 logits per view and the remaining probability mass"
    )
    if cache.grid is not None:  # a dense (segmentation) cache: per cell of a reduced grid
        storage += f", per cell of a {cache.grid[0]}x{cache.grid[1]} grid"
    fields = {
        **record,
        "teacher": public_model_name(record["teacher"]),
        "rows": record["transfer_set"]["rows"],
        "digest": record["transfer_set"]["digest"],
        "num_views": cache.num_views,
        "num_labels": cache.num_labels,
        "seed": cache.fingerprint["seed"],
        "storage": storage,
        "label_preview": ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""),
        "repo_id": hub_id(repo_id) or "<user>/<this-dataset>",
    }
    from jinja2 import Template

    section = Template(_template("teacher_cache_section")).render(**fields)
    card.text = card.text.rstrip("\n") + "\n" + section
    _ending_in_newline(card).save(card_path)


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


@dataclass
class StudentCardData:
    """Everything a student's card says: lineage, results and the compute it cost.

    One card for whoever made the student. Its fields are grouped by who fills them (as setfit's
    ``SetFitModelCardData`` is): :class:`~hf_task_distill.DistillationTrainer` fills the first group
    from the models and its own state when it saves (``save_model``), the user may set the second
    (``trainer.create_model_card(...)``), and the pipeline's publish step fills the third, which
    adds the teacher's finetuning, the student's finetuning and the comparison table. A field left
    ``None`` leaves its line out of the card.

    ``ledger`` is rendered as given (a markdown table): name its models with ``public_name`` first.
    ``repo_id``: the student's Hub repo, when known (the usage examples load it; without one, they
    load the card's own folder)."""

    # -- filled by DistillationTrainer (from the models, its arguments and its state) ----------------
    model_name: str
    architecture: str
    label_names: list[str]
    teacher_base: str | None = None
    distill_loss: str = "function_matching"
    temperature: float = 1.0
    transfer_description: str | None = None
    image_size: int = 0
    ledger: str = ""
    base_model: str | None = None
    #: the last evaluation's metrics (``eval_`` prefix dropped), for a card without ``results``
    metrics: dict[str, float] = field(default_factory=dict)
    eval_images: int | None = None
    #: ``"timm"`` (the usage examples show timm too) or ``"transformers"``
    library_name: str = "timm"
    #: the student's task type (:mod:`hf_task_distill.tasks`): the card's ``pipeline_tag``, tags and metrics
    task_type: str = "image-classification"
    # -- given by the user (``DistillationTrainer.create_model_card``) or the pipeline's config ------
    dataset_id: str | None = None
    transfer_repo: str | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    repo_id: str | None = None
    # -- filled by the pipeline's publish step ---------------------------------------------------------
    task_name: str | None = None
    teacher_strategy: str | None = None
    train_size: int | None = None
    eval_split: str | None = None
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    teacher_repo: str | None = None
    label_budget: dict[str, Any] | None = None
    student_result: str = "student, distilled + finetuned"
    #: the ``onnx/export.json`` record published with the student (:mod:`hf_task_distill.export.onnx`):
    #: the card's export section (files, parity, latency, the input it expects); ``None``: no section
    export: dict[str, Any] | None = None
    #: every model and dataset the run drew on (:class:`~hf_task_distill.hub.lineage.Source` as
    #: dicts: role, name, repo_type, hub, revision, license): the card's lineage table
    lineage: list[dict[str, Any]] = field(default_factory=list)
    #: sentences on licences that limit the student (:func:`~hf_task_distill.hub.lineage.licence_warnings`)
    licence_warnings: list[str] = field(default_factory=list)


def _student_eval_results(data: StudentCardData) -> list:
    """``EvalResult`` s of the student's metrics (the pipeline's table row, else the last evaluation);
    none when no dataset is named, as the ``model-index`` needs one."""
    from huggingface_hub import EvalResult

    from ..tasks import get_task_type

    task_type = get_task_type(data.task_type)
    mine = data.results.get(data.student_result) or data.metrics
    dataset_type = hub_id(data.dataset_id) or data.task_name or public_name(data.dataset_id)
    if not dataset_type:
        return []
    return [
        EvalResult(
            task_type=task_type.name,
            dataset_type=dataset_type,
            dataset_name=data.task_name or dataset_type,
            dataset_split=data.eval_split,
            metric_type=metric,
            metric_value=float(mine[metric]),
        )
        for metric in task_type.metric_names
        if metric in mine
    ]


def _student_card_data(data: StudentCardData):
    """The card's YAML metadata: Hub ids only (``base_model``, ``datasets``, ``teacher:`` tags)."""
    from huggingface_hub import ModelCardData

    from ..tasks import get_task_type

    task_type = get_task_type(data.task_type)
    teacher_id, transfer_id = hub_id(data.teacher_base), hub_id(data.transfer_repo)
    datasets_used = [d for d in (hub_id(data.dataset_id), transfer_id) if d]
    eval_results = _student_eval_results(data)
    return ModelCardData(
        model_name=data.model_name,
        base_model=hub_id(data.base_model),
        library_name=data.library_name,
        pipeline_tag=task_type.name,
        tags=[
            "hf-task-distill",
            "knowledge-distillation",
            *task_type.card_tags(),
            "transformers",
            *([f"teacher:{teacher_id}"] if teacher_id else []),  # a local folder has no id to tag
            *([f"transfer-set:{transfer_id}"] if transfer_id else []),
            *data.tags,
        ],
        datasets=datasets_used or None,
        license=data.license if data.license and " " not in data.license else None,
        eval_results=eval_results or None,
    )


def render_student_card(data: StudentCardData):
    """A ``huggingface_hub.ModelCard`` for a distilled student, with a ``model-index`` of its metrics
    when a dataset is named (``dataset_id`` or ``task_name``)."""
    from huggingface_hub import ModelCard

    from ..tasks import get_task_type

    template = _template("student_card")
    fields = asdict(data)
    for name in ("base_model", "dataset_id"):
        fields[name] = public_name(fields[name])
    fields["teacher_base"] = public_model_name(data.teacher_base)  # "<teacher>, finetuned" kept
    fields["teacher_repo"], fields["transfer_repo"] = hub_id(data.teacher_repo), hub_id(data.transfer_repo)
    fields["repo_id"] = hub_id(data.repo_id)
    fields["label_budget"] = ", ".join(f"{k}={v}" for k, v in (data.label_budget or {}).items()) or None
    fields["num_labels"] = len(data.label_names)
    fields["label_names"] = ", ".join(data.label_names)
    task_type = get_task_type(data.task_type)  # the results table's columns
    fields["metric_names"], fields["metric_titles"] = (
        list(task_type.metric_names),
        list(task_type.metric_titles),
    )
    fields["export"] = export_card_fields(data.export) if data.export else None
    missing = {n: [k for k in task_type.metric_names if k not in m] for n, m in data.results.items()}
    if any(missing.values()):
        raise ValueError(f"results lack the {task_type.name} metrics {missing}")
    card = ModelCard.from_template(_student_card_data(data), template_str=template, **fields)
    return _ending_in_newline(card)


#: How the card names the runtimes of an export's latency table (``export.json``'s rows).
RUNTIME_TITLES = {
    "pytorch": "PyTorch eager",
    "onnxruntime": "ONNX Runtime, fp32",
    "onnxruntime_int8": "ONNX Runtime, int8",
}
#: What each file of ``onnx/`` is.
ONNX_FILE_TITLES = {
    "model.onnx": "fp32",
    "model_quantized.onnx": "int8 (ONNX Runtime quantization)",
}
#: How the card describes each int8 method (``export.json``'s ``quantization.method``).
INT8_METHODS = {
    "static": "static: per-channel int8 weights, uint8 activations with ranges calibrated on {images} "
    "{source} images (QDQ)",
    "dynamic": "dynamic: uint8 weights, activation ranges computed per batch at run time",
}


def int8_method(record: dict[str, Any]) -> str | None:
    """How an export's int8 model was quantized, in words (``None`` without one); a record written
    before the method was recorded was dynamic."""
    if "int8" not in record["parity"]:
        return None
    how = record.get("quantization", {"method": "dynamic"})
    sample = how.get("calibration_sample") or {}
    source = "transfer-set" if sample.get("source") == "dataset" else sample.get("source", "")
    return INT8_METHODS[how["method"]].format(images=how.get("calibration_images"), source=source)


def export_card_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The export section's values from an ``onnx/export.json`` record: its files and sizes, the
    input the graph expects, parity, int8's change, the latency table and the machine it ran on.

    Args:
        record (`dict`): what :class:`~hf_task_distill.export.OnnxFormat` measured.

    Returns:
        `dict`: ``files`` (rows: path, what, MB), ``input`` (shape, size, mean, std, interpolation,
        crop_pct, eval_mode and ``resize``, the shorter side before the centre crop), ``output_shape``, ``parity`` (the record's), ``int8`` and ``int8_method`` (or ``None``), ``latency``
        (rows: runtime, batch-1 median and p90 in ms, batch-32 images/s, speed-ups), ``machine`` (one
        line) and ``exporter`` (versions).
    """
    view = record["input"]["view"]
    latency = record["latency"]
    rows = []
    for key, title in RUNTIME_TITLES.items():
        if key not in latency["batch_1"]:
            continue
        one, many = latency["batch_1"][key], latency[f"batch_{_throughput_batch(latency)}"][key]
        rows.append(
            {
                "runtime": title,
                "median_ms": one["median_ms"],
                "p90_ms": one["p90_ms"],
                "images_per_s": many["images_per_s"],
                "speedup_1": one.get("speedup_vs_pytorch", 1.0),
                "speedup_many": many.get("speedup_vs_pytorch", 1.0),
            }
        )
    machine = record["machine"]
    return {
        "format": record["format"],
        "files": [
            {"path": f"onnx/{name}", "what": ONNX_FILE_TITLES.get(name, name), "mb": size / 1e6}
            for name, size in record["files"].items()
        ],
        # timm's and ViewSpec's evaluation resize: the shorter side to floor(size / crop_pct), then the crop
        "input": {
            **view,
            "shape": record["input"]["shape"],
            "resize": math.floor(min(view["size"]) / view["crop_pct"]),
        },
        "output_shape": record["output"]["shape"],
        "parity": record["parity"],
        "int8": record["parity"].get("int8"),
        "int8_method": int8_method(record),
        "latency": rows,
        "batch": _throughput_batch(latency),
        "machine": f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['threads']} threads, "
        f"{machine['system']} {machine['machine']}), onnxruntime {machine['onnxruntime']}, torch {machine['torch']}",
        "exporter": record.get("exporter", {}),
        "parameters": record.get("parameters"),
        "flops_per_image": record.get("flops_per_image"),
    }


def _throughput_batch(latency: dict[str, Any]) -> int:
    """The largest batch the latency table timed (32)."""
    return max(int(key.removeprefix("batch_")) for key in latency)


@dataclass
class MiniVFMCardData:
    """What the shipped mini-VFM's card says: how it was pretrained and how well."""

    architecture: str
    model_args: dict[str, Any]
    image_size: int
    parameters: int
    num_classes: int
    train_images: int
    validation_images: int
    pool_seed: int
    validation_seed: int
    epochs: float
    batch_size: int
    learning_rate: float
    weight_decay: float
    crop_min_scale: float
    seed: int
    validation_accuracy: float
    validation_balanced_accuracy: float
    wall_s: float
    device: str | None = None

    @classmethod
    def from_pretraining(cls, config, architecture, label_names) -> MiniVFMCardData:
        """The card data of a mini-VFM pretrained with ``config`` (:class:`~hf_task_distill.demo.miniature.MiniVFMPretraining`)."""
        from ..ledger import describe_device

        settings = {k: v for k, v in asdict(config).items() if k != "results"}
        return cls(
            architecture=architecture.name,
            model_args={
                k: list(v) if isinstance(v, tuple) else v for k, v in architecture.model_args.items()
            },
            image_size=architecture.image_size,
            device=describe_device(),
            **settings,
            **{k: v for k, v in config.results.items() if k in {f.name for f in fields(cls)}},
        )


def render_mini_vfm_card(data: MiniVFMCardData):
    """A ``huggingface_hub.ModelCard`` for the shipped mini-VFM."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["hf-task-distill", "mini-vfm", "synthetic-data"],
        license="apache-2.0",
    )
    return _ending_in_newline(
        ModelCard.from_template(card_data, template_str=_template("mini_vfm_card"), **asdict(data))
    )


def _ending_in_newline(card):
    """Jinja drops a template's final newline; a text file (and ``git diff``) expects one."""
    if not card.content.endswith("\n"):
        card.content = card.content + "\n"
    return card
