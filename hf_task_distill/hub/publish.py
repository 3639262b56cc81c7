"""Publish a run: the student and (for a retrieved set) the transfer set, as folders first.

When the distill stage built a teacher cache (``--teacher_cache_views``), the transfer set is
published *reinforced*: with the cache in ``teacher_cache/`` (:mod:`~hf_task_distill.hub.reinforced`),
so that anyone can distil from it with no teacher.

The folders are exactly what is uploaded, so they can be checked offline with the real clients
(``AutoModelForImageClassification``, ``pipeline``, ``timm.create_model``, ``datasets.load_dataset``)
before anything leaves the machine. Uploads go through ``huggingface_hub``; the token is resolved
by it (``huggingface-cli login``, ``HF_TOKEN``) and never written into a folder, card or manifest.
Pickled files the Trainer writes (``training_args.bin``) are not published. When the run exports
(``--export_formats``), the export stage's ``onnx/`` folder (and, for a timm student, the
``preprocessor_config.json`` Transformers.js reads) is published with the student.

Nothing of the local machine goes into the folders: every model, dataset and pool the run used is
named by :func:`~hf_task_distill.hub.names.public_name` (a Hub id as is, a local folder by its name
marked ``(local)``), in the card, the compute ledger and ``results.json`` alike. An upload that
cannot reach the Hub raises :class:`HubUploadError`, naming the folders, which stay complete on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from .names import hub_id, public_name

logger = logging.getLogger(__name__)

__all__ = [
    "HubUploadError",
    "check_push",
    "publish_run",
    "push_targets",
    "upload_folder",
    "write_parquet_dataset",
]


class HubUploadError(OSError):
    """An upload failed (the Hub out of reach, or refusing it); the folders to upload are complete on disk.

    The message is one line: what failed and why, then which folders are ready and how to upload them later.
    """


def write_parquet_dataset(dataset, output_dir: str, max_shard_rows: int = 10_000) -> list[str]:
    """``dataset`` as ``data/train-XXXXX-of-XXXXX.parquet`` with image bytes embedded, the layout
    ``datasets.load_dataset(folder)`` and the Hub's viewer read."""
    from datasets.table import embed_table_storage

    data_dir = os.path.join(output_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    num_shards = max(1, -(-len(dataset) // max_shard_rows))
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        path = os.path.join(data_dir, f"train-{index:05d}-of-{num_shards:05d}.parquet")
        shard.to_parquet(path)
        paths.append(path)
    return paths


def upload_folder(folder: str, repo_id: str, *, repo_type: str, private: bool = False):
    """Create the repo if needed and upload ``folder`` in one commit.

    Returns ``huggingface_hub``'s ``CommitInfo``: a ``str`` (the commit URL) with ``.oid``, the
    40-hex commit id. Files whose bytes the repo already holds are not sent again, and a folder the
    repo holds as it is makes no commit (the answer is then the repo's head commit).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message="Upload with hf_task_distill",
    )


def check_push(repo_ids: dict[str, str | None]) -> dict[str, str]:
    """Before anything is uploaded: every repo id (by its flag, e.g. ``{"--hub_model_id": "me/s"}``)
    is valid, a token is found, the Hub accepts it, and it may write where the ids point.

    A repo id without an owner (``"mobilevitv2-cub"``) is the token owner's, as ``create_repo`` and the
    ``Trainer`` read it: it is returned as ``"<user>/mobilevitv2-cub"``. A namespace that is neither the
    user's nor one of their organisations, an organisation where their role is ``read``, or a read
    token, is refused here rather than by the upload (``whoami``'s ``name``, ``orgs[].roleInOrg`` and
    ``auth.accessToken.role``; a fine-grained token's scopes are left to the Hub to judge).

    Returns:
        `dict[str, str]`: the given flags' repo ids as ``owner/name`` (flags given ``None`` left out).

    Raises:
        ValueError: a malformed repo id, or a namespace the token cannot write to (naming those it can).
        HubUploadError: (one line saying how to log in) a missing, refused or read-only token.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError
    from huggingface_hub.utils import validate_repo_id

    for flag, repo_id in repo_ids.items():
        try:
            if repo_id:
                validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(
                f"{flag} '{repo_id}' is not a Hub repo id (owner/name): {_first_line(err)}"
            ) from err
    login = "log in with `hf auth login` or set HF_TOKEN to a token with write access"
    try:
        me = HfApi().whoami()  # the token as the upload will send it
    except LocalTokenNotFoundError as err:
        raise HubUploadError(f"no Hugging Face token found to upload to the Hub: {login}") from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubUploadError(f"the Hugging Face Hub refused the token ({status}): {login}") from err
        raise
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubUploadError(f"the Hugging Face token is a read token: {login}")
    return {flag: _writable_repo_id(flag, repo_id, me) for flag, repo_id in repo_ids.items() if repo_id}


def _writable_repo_id(flag: str, repo_id: str, me: dict) -> str:
    """``repo_id`` as ``owner/name`` (the user's own when it names no owner), checked against ``whoami``'s
    answer ``me``. Raises ``ValueError`` naming the namespaces the token can write to."""
    user = me.get("name")
    if "/" not in repo_id:
        return f"{user}/{repo_id}"
    owner = repo_id.split("/")[0]
    roles = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs") or []}
    names = {name.lower(): name for name in [user, *roles] if name}  # Hub names ignore case
    owner = names.get(owner.lower(), owner)
    if owner == user or roles.get(owner, "read") != "read":
        return repo_id
    writable = [user, *sorted(name for name, role in roles.items() if role != "read")]
    if owner in roles:
        why = f"your role in the organisation '{owner}' is read"
    else:
        why = f"'{owner}' is neither your user name nor one of your organisations"
    raise ValueError(
        f"{flag} '{repo_id}': the Hugging Face token of '{user}' cannot write there ({why}); it can write "
        f"under {', '.join(repr(name) for name in writable)}"
    )


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` means the Hub was not reached (offline mode, no network, a timeout)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, (OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    return any(cls.__name__ == "TransportError" for cls in type(err).__mro__)  # httpx: connect, read, timeout


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _upload_failure(
    err: BaseException, repo_id: str, pending: list[tuple[str, str, str]], done: list[str]
) -> str:
    """The one-line message of a failed upload: the cause, what is already up, the folders still to upload."""
    if _unreachable(err):
        cause = f"could not reach the Hugging Face Hub to upload {repo_id} ({_first_line(err)})"
    else:
        cause = f"the Hugging Face Hub refused the upload to {repo_id} ({_first_line(err)})"
    uploaded = f"; {', '.join(done)} was uploaded" if done else ""
    from ..files import display_path

    folders = " and ".join(display_path(folder) for folder, _, _ in pending)
    commands = "; ".join(
        f"hf upload {repo} {display_path(folder)}" + (" --repo-type dataset" if kind == "dataset" else "")
        for folder, repo, kind in pending
    )
    # an id without owner was not resolved (the Hub out of reach): its card names no repo yet, so only
    # the push command, which resolves it and rewrites the card, publishes the folders right
    alternative = f", or with `{commands}`" if all("/" in repo for _, repo, _ in pending) else ""
    return (
        f"{cause}{uploaded}. {folders} {'are' if len(pending) > 1 else 'is'} complete: upload later with "
        f"the same push command{alternative}"
    )


def push_targets(run) -> tuple[dict[str, str | None], BaseException | None]:
    """The repos a push of ``run`` (the ``run`` settings) goes to, checked by :func:`check_push` before
    anything is written: ``({"model": "owner/name", "dataset": "owner/name" or None}, None)``.

    A Hub out of reach (or answering with another error) is not raised here: the ids are returned as
    given with the error, which the push raises once the folders are written (to be uploaded later).
    Without ``push_to_hub`` the ids are returned as given, unchecked.

    Raises:
        ValueError: ``--push_to_hub`` without ``--hub_model_id``, a malformed id or a namespace the
            token cannot write to.
        HubUploadError: a missing, refused or read-only token.
    """
    given = {"model": run.hub_model_id, "dataset": run.hub_dataset_id}
    if not run.push_to_hub:
        return given, None
    if not run.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/mobilevitv2-cub)")
    try:
        ids = check_push({"--hub_model_id": run.hub_model_id, "--hub_dataset_id": run.hub_dataset_id})
    except (HubUploadError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - the Hub out of reach: raised by the push, after the folders
        return given, err
    return {"model": ids["--hub_model_id"], "dataset": ids.get("--hub_dataset_id")}, None


def _push(run, outputs: dict[str, Any], targets: dict[str, str | None], unreachable=None) -> None:
    """Upload the student (and transfer set) folders to ``targets`` (:func:`push_targets`); add each
    one's commit URL (``<key>_commit``) and commit id (``<key>_commit_id``) to ``outputs``, which become
    the manifest once every upload is done. ``unreachable``: the error that kept :func:`check_push`
    from the Hub, raised as the upload's failure naming the folders to upload later."""
    uploads = [("student", outputs["student"], targets["model"], "model")]
    if "transfer_set" in outputs and targets["dataset"]:
        uploads.append(("transfer_set", outputs["transfer_set"], targets["dataset"], "dataset"))
    if unreachable is not None:
        pending = [(f, r, t) for _, f, r, t in uploads]
        raise HubUploadError(_upload_failure(unreachable, targets["model"], pending, [])) from unreachable
    done: list[str] = []
    for index, (key, folder, repo_id, repo_type) in enumerate(uploads):
        try:
            info = upload_folder(folder, repo_id, repo_type=repo_type, private=run.hub_private)
        except Exception as err:  # noqa: BLE001 - every failure becomes one line naming the ready folders
            if isinstance(err, ValueError) and not _unreachable(err):
                raise  # a malformed repo id: the Hub's own message names it
            pending = [(f, r, t) for _, f, r, t in uploads[index:]]
            raise HubUploadError(_upload_failure(err, repo_id, pending, done)) from err
        outputs[f"{key}_commit"] = str(info)
        outputs[f"{key}_commit_id"] = getattr(info, "oid", None)
        done.append(repo_id)


def _transfer_description(outputs: dict[str, Any], cfg) -> str:
    if outputs["kind"] == "task":
        return f"the task's own {outputs['rows']:,} training images (labels unused)"
    if outputs["kind"] == "dataset":
        return f"{outputs['rows']:,} images of `{public_name(outputs['source'])}` (a generic transfer set)"
    if outputs["kind"] == "random":
        return f"{outputs['rows']:,} images drawn at random from `{public_name(cfg.pool)}` (a generic transfer set)"
    how = f"{cfg.per_query_k} per labelled image" if cfg.per_query_k else f"a budget of {cfg.transfer_budget}"
    return f"{outputs['rows']:,} images retrieved from `{public_name(cfg.pool)}` ({how})"


def _public_ledger(context):
    """The run's compute ledger with every model named for publishing (the run's own finetuned
    teacher as ``"<teacher>, finetuned"``, any other source by ``public_name``)."""
    from dataclasses import replace

    from ..ledger import ComputeLedger

    ledger = context.ledger()
    suffix = ", finetuned"  # the run's own teacher (RunContext.teacher_name)
    finetuned = os.path.abspath(context.teacher_path())  # ledgers of earlier versions named its folder

    def name(model: str) -> str:
        if model.endswith(suffix):
            return public_name(model.removesuffix(suffix)) + suffix
        if os.path.abspath(model) == finetuned and context.config.teacher.teacher_strategy != "none":
            return public_name(context.config.teacher.teacher) + suffix
        return public_name(model)

    return ComputeLedger([replace(e, model=name(e.model)) for e in ledger.entries], dict(ledger.wall_s))


def _student_card(context, model_config, ledger, targets, export=None):
    """The card data of the published student, every source named by ``public_name``/``hub_id``;
    ``targets``: the repos it is published to (:func:`push_targets`)."""
    from .cards import StudentCardData, descriptive_name, label_budget_summary
    from .lineage import licence_warnings, run_sources

    config, task = context.config, context.task
    evaluation = context.manifest("evaluate")["outputs"]
    transfer = context.manifest("transfer")["outputs"]
    teacher_outputs = context.manifest("teacher")["outputs"]
    pretrained_cfg = getattr(model_config, "pretrained_cfg", None) or {}
    architecture = getattr(model_config, "architecture", None) or model_config.model_type
    repo_id = hub_id(targets["model"])
    as_given = config.teacher.teacher_strategy == "none"  # the teacher is used as published
    lineage = run_sources(config, task)
    return StudentCardData(
        model_name=repo_id or descriptive_name(architecture, task.name, "student"),
        architecture=architecture,
        task_name=task.name,
        label_names=list(task.label_names),
        teacher_base=public_name(config.teacher.teacher),
        teacher_strategy=teacher_outputs.get("strategy", config.teacher.teacher_strategy),
        distill_loss=config.student.distill_loss,
        temperature=config.student.temperature,
        transfer_description=_transfer_description(transfer, config.transfer),
        train_size=len(task["train"]),
        image_size=int(pretrained_cfg.get("input_size", (3, 0, 0))[1])
        or int(getattr(model_config, "image_size", 0) or 0),  # a segmentation student records its own
        eval_split=evaluation["split"],
        eval_images=evaluation["images"],
        results=evaluation["results"],
        ledger=ledger.markdown(),
        base_model=pretrained_cfg.get("hf_hub_id") if config.student.pretrained_student else None,
        teacher_repo=hub_id(config.teacher.teacher) if as_given else None,
        transfer_repo=targets["dataset"] if transfer["kind"] == "retrieval" else None,
        dataset_id=task.spec.hub_id if task.spec is not None else None,
        license=task.spec.license if task.spec is not None else None,
        label_budget=label_budget_summary(task),
        repo_id=repo_id,
        task_type=task.task_type,
        library_name="timm" if model_config.model_type == "timm_wrapper" else "transformers",
        export=export,
        lineage=[source.as_dict() for source in lineage],
        licence_warnings=licence_warnings(lineage),
    )


def _add_image_processor(student_dir: str, task_type: str) -> None:
    """A segmentation student's image processor next to it (its config records the resolution), so
    that ``pipeline("image-segmentation", model=student_dir)`` loads the folder; classifiers carry
    their own already."""
    if task_type != "image-segmentation" or os.path.isfile(
        os.path.join(student_dir, "preprocessor_config.json")
    ):
        return
    from transformers import AutoConfig

    from ..models.families.transformers_segmentation import segmentation_image_processor

    size = getattr(AutoConfig.from_pretrained(student_dir), "image_size", None)
    if isinstance(size, int):
        segmentation_image_processor(size).save_pretrained(student_dir)


def _add_export(context, student_dir: str) -> dict[str, Any] | None:
    """The export stage's files next to the student (``onnx/``, and the ``preprocessor_config.json``
    Transformers.js needs for a timm student), when the run exports; returns ``onnx/export.json``'s
    record (relative file names only), or ``None``."""
    from ..files import read_json

    manifest = context.manifest("export") if context.config.run.export_formats else None
    exported = (manifest or {}).get("outputs", {}).get("model")
    target = os.path.join(student_dir, "onnx")
    if os.path.isdir(target):  # a publish rewritten in place: never an earlier run's onnx/
        shutil.rmtree(target)
    if not exported or not os.path.isdir(os.path.join(exported, "onnx")):
        return None
    shutil.copytree(os.path.join(exported, "onnx"), target, copy_function=shutil.copyfile)
    processor = os.path.join(student_dir, "preprocessor_config.json")
    if not os.path.exists(processor) and os.path.isfile(os.path.join(exported, "preprocessor_config.json")):
        shutil.copyfile(os.path.join(exported, "preprocessor_config.json"), processor)
    record = os.path.join(target, "export.json")
    return read_json(record) if os.path.isfile(record) else None


def _add_teacher_cache(context, transfer_dir: str, rows, ledger, repo_id) -> dict[str, Any] | None:
    """The distill stage's teacher cache into the published transfer set (a reinforced transfer set,
    :mod:`~hf_task_distill.hub.reinforced`), its section into the card; returns the published record,
    or ``None`` when the run built no cache (any earlier run's ``teacher_cache/`` is removed)."""
    from ..teacher_cache import TeacherCache
    from .cards import add_teacher_cache_section
    from .reinforced import CACHE_FOLDER, publish_teacher_cache, teacher_license

    folder = (context.manifest("distill") or {}).get("outputs", {}).get("teacher_cache")
    if not folder or not os.path.isdir(folder):
        shutil.rmtree(os.path.join(transfer_dir, CACHE_FOLDER), ignore_errors=True)
        return None
    cached = [
        e for e in ledger.entries if e.stage == "distill" and e.work.startswith("teacher forward (cache")
    ]
    cache = TeacherCache(folder)
    record = publish_teacher_cache(
        cache,
        transfer_dir,
        rows,
        teacher=cached[0].model if cached else public_name(context.teacher_name),
        teacher_license=teacher_license(context.config.teacher.teacher),
        teacher_flops_per_view=cached[0].flops_per_image if cached else None,
    )
    card = os.path.join(transfer_dir, "README.md")
    if os.path.isfile(card):
        add_teacher_cache_section(card, cache, record, repo_id)
    return record


def publish_run(context, directory: str) -> dict[str, Any]:
    """Write ``student/`` (and ``transfer_set/``) under ``directory``; push them if asked.

    ``context`` is the run as its stages see it (:class:`~hf_task_distill.stages.RunContext`; a
    :class:`~hf_task_distill.pipeline.Pipeline` serves too): its settings, task and finished stages.

    Raises :class:`HubUploadError` when a push fails; the folders written stay as they are.
    """
    from transformers import AutoConfig

    from .cards import render_student_card

    config = context.config
    finetuned = context.manifest("finetune")["outputs"]["model"]
    evaluation = context.manifest("evaluate")["outputs"]
    transfer = context.manifest("transfer")["outputs"]
    student_dir = os.path.join(directory, "student")
    outputs: dict[str, Any] = {"student": student_dir}
    if context.state.is_main_process:
        from ..export import export_student

        targets, unreachable = push_targets(config.run)  # a wrong id or token fails before any file
        os.makedirs(student_dir, exist_ok=True)
        export_student(
            finetuned, formats=("safetensors",), output_dir=student_dir
        )  # the files a student is published with
        _add_image_processor(student_dir, context.task.task_type)
        exported = _add_export(context, student_dir)
        ledger = _public_ledger(context)
        card = _student_card(context, AutoConfig.from_pretrained(student_dir), ledger, targets, exported)
        render_student_card(card).save(os.path.join(student_dir, "README.md"))
        outputs["lineage"] = card.lineage  # the commits this run used, in the publish manifest
        for warning in card.licence_warnings:
            logger.warning("Licence: %s", warning)
        ledger.save(os.path.join(student_dir, "compute_ledger.json"))
        public = {key: evaluation[key] for key in ("split", "images", "results")}  # no paths of this run
        with open(os.path.join(student_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(public, f, indent=2)

        if transfer["kind"] == "retrieval":
            from datasets import load_from_disk

            transfer_dir = os.path.join(directory, "transfer_set")
            rows = load_from_disk(transfer["path"])
            write_parquet_dataset(rows, transfer_dir)
            for name in ("README.md", "contact_sheet.png"):
                source = os.path.join(transfer["path"], name)
                if os.path.exists(source):
                    shutil.copyfile(source, os.path.join(transfer_dir, name))
            _add_teacher_cache(context, transfer_dir, rows, ledger, targets["dataset"])
            outputs["transfer_set"] = transfer_dir
        if config.run.push_to_hub:
            _push(config.run, outputs, targets, unreachable)
    context.state.wait_for_everyone()
    return outputs
