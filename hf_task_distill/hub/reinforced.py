"""Reinforced transfer sets: a teacher-output cache published with the transfer set it was built on.

A published transfer set folder (the dataset repo) is::

    data/train-XXXXX-of-XXXXX.parquet   the rows, image bytes embedded (``datasets.load_dataset``)
    README.md                           the dataset card (with the teacher's name, licence, FLOPs saved)
    teacher_cache/                      the teacher cache: build.json, shard-NNNNN.safetensors, cache.json

``teacher_cache/cache.json`` is the local cache's, plus a ``published`` record: the identity of the
published rows (:func:`~hf_task_distill.data.fingerprints.transfer_set_digest`, every row's image
bytes in row order, computed on the Parquet rows read back) and the teacher's provenance (its public
name, licence and forward FLOPs per view). Anyone can then distil a student with no teacher and no
teacher compute: :func:`pull_teacher_cache` downloads ``teacher_cache/`` (through
:func:`~hf_task_distill.hub.download.download_dataset_repo`), :func:`published_transfer_set` the
rows, and :meth:`TeacherCache.check <hf_task_distill.teacher_cache.TeacherCache.check>` refuses rows
whose digest differs from the published one.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from typing import Any

from ..files import write_json_atomically
from .names import public_model_name

__all__ = [
    "CACHE_FOLDER",
    "check_published_rows",
    "DATA_FILES",
    "open_teacher_cache",
    "publish_teacher_cache",
    "published_transfer_set",
    "pull_teacher_cache",
    "teacher_license",
]

#: the teacher cache's folder in a published transfer set
CACHE_FOLDER = "teacher_cache"
#: the transfer set's rows in a published transfer set (what ``write_parquet_dataset`` writes)
DATA_FILES = "data/*.parquet"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _read_parquet_rows(folder: str):
    """The rows of ``folder/data/*.parquet`` in file order, as ``datasets.load_dataset`` reads them."""
    import datasets

    files = sorted(glob.glob(os.path.join(folder, DATA_FILES)))
    if not files:
        raise FileNotFoundError(f"no {DATA_FILES} in {folder}: not a published transfer set")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def publish_teacher_cache(
    cache,
    transfer_dir: str,
    transfer,
    *,
    teacher: str,
    teacher_license: str | None = None,
    teacher_flops_per_view: float | None = None,
) -> dict[str, Any]:
    """Copy ``cache`` into ``transfer_dir/teacher_cache/``, recording the published rows' identity.

    Args:
        cache (`TeacherCache`): the cache the run built on ``transfer``.
        transfer_dir (`str`): the published transfer set folder, its ``data/*.parquet`` already written.
        transfer: the transfer set the cache was built on (the local ``datasets.Dataset``).
        teacher (`str`): the teacher as the run names it (published through
            :func:`~hf_task_distill.hub.names.public_model_name`: a local folder by its name only).
        teacher_license (`str`, *optional*): its licence (a Hub licence id), when known.
        teacher_flops_per_view (`float`, *optional*): its forward FLOPs on one view.

    Returns:
        `dict`: the ``published`` record written into ``teacher_cache/cache.json``: ``transfer_set``
        (``rows``, ``digest``, ``data_files``), ``teacher``, ``teacher_license``,
        ``teacher_flops_per_view`` and ``teacher_flops`` (per view x views x cached images: what a
        student distilled from the published cache does not spend).

    Raises:
        TeacherCacheMismatch: the cache was not built on ``transfer``.
        RuntimeError: the Parquet rows read back are not ``transfer``'s (rows, bytes or order).
    """
    from ..data.fingerprints import transfer_set_digest
    from ..teacher_cache import BUILD_FILE, COMPLETE_FILE

    cache.check(dataset=transfer, where="the transfer set being published")
    published_rows = _read_parquet_rows(transfer_dir)
    digest = transfer_set_digest(published_rows, cache.image_column)
    if digest != transfer_set_digest(transfer, cache.image_column):
        raise RuntimeError(
            f"the Parquet rows in {transfer_dir} read back differently from the transfer set the "
            "teacher cache was built on (image bytes or row order): not publishing the cache"
        )
    cache.check(dataset=published_rows, where="the published Parquet rows")
    target = os.path.join(transfer_dir, CACHE_FOLDER)
    if os.path.isdir(target):  # a publish rewritten in place: never an earlier run's shards
        shutil.rmtree(target)
    os.makedirs(target)
    for name in sorted(os.listdir(cache.directory)):
        if name == BUILD_FILE or (name.startswith("shard-") and name.endswith(".safetensors")):
            _link_or_copy(os.path.join(cache.directory, name), os.path.join(target, name))
    flops = None if teacher_flops_per_view is None else float(teacher_flops_per_view)
    record = {
        "transfer_set": {"rows": len(published_rows), "digest": digest, "data_files": DATA_FILES},
        "teacher": public_model_name(teacher),
        "teacher_license": teacher_license,
        "teacher_flops_per_view": flops,
        "teacher_flops": None if flops is None else flops * cache.num_views * len(cache),
    }
    # an unreadable row's error may name a local file: only its kind is published
    skipped = [{"row": s["row"], "error": str(s.get("error", "")).split(":")[0]} for s in cache.skipped]
    info = {**cache.info, "skipped": skipped, "published": record}
    write_json_atomically(os.path.join(target, COMPLETE_FILE), info)
    return record


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (a cache can take hundreds of GB, and its shards are only ever replaced by a
    rename, never rewritten in place), or a copy where links are not possible (another file system)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def check_published_rows(cache, dataset, where: str = "the transfer set") -> None:
    """Refuse (``TeacherCacheMismatch``) rows whose image bytes, in order, are not the ones a
    published ``cache`` was published with (its ``published["transfer_set"]["digest"]``)."""
    from ..data.fingerprints import transfer_set_digest
    from ..teacher_cache import TeacherCacheMismatch

    recorded = cache.published.get("transfer_set", {})
    digest = transfer_set_digest(dataset, cache.image_column)
    if digest != recorded.get("digest"):
        raise TeacherCacheMismatch(
            f"the teacher cache in {cache.directory} was published with a transfer set of "
            f"{recorded.get('rows')} rows whose images hash to {recorded.get('digest')!r}, but the "
            f"{len(dataset)} rows of {where} hash to {digest!r} (other images, or the same in another "
            "order): distil from the published rows (load them with datasets.load_dataset)"
        )


def pull_teacher_cache(
    repo_id: str,
    revision: str | None = None,
    *,
    num_views: int | None = None,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
):
    """The teacher cache published in the dataset repo ``repo_id``, downloaded and checked.

    Only ``teacher_cache/`` is downloaded; :func:`published_transfer_set` gets the rows (from the
    same commit). The shards are checked against the cache's fingerprint as for a local cache.

    Args:
        repo_id (`str`): the dataset repo (``owner/name``).
        revision (`str`, *optional*): a branch, tag or commit id.
        num_views, num_labels (`int`, *optional*): refuse a cache with another view or class count.
        label_names (`list[str]`, *optional*): refuse a cache whose teacher names its classes otherwise.

    Returns:
        `TeacherCache`, with ``hub_source`` set to ``(repo_id, commit or revision)``.

    Raises:
        HubDownloadError: the repo could not be downloaded.
        FileNotFoundError: the repo holds no teacher cache.
        TeacherCacheMismatch: another view count, label space, or a cache with no published record.
    """
    from ..teacher_cache import COMPLETE_FILE, TeacherCache, TeacherCacheMismatch
    from . import download

    folder = download.download_dataset_repo(repo_id, revision=revision, allow_patterns=[f"{CACHE_FOLDER}/*"])
    directory = os.path.join(folder, CACHE_FOLDER)
    if not os.path.isfile(os.path.join(directory, COMPLETE_FILE)):
        raise FileNotFoundError(
            f"the dataset repo {repo_id} has no teacher cache ({CACHE_FOLDER}/{COMPLETE_FILE}): it is a "
            "transfer set published without one; distil from it with a teacher (teacher_model=)"
        )
    cache = TeacherCache(directory)
    if not (cache.published or {}).get("transfer_set", {}).get("digest"):
        raise TeacherCacheMismatch(
            f"the teacher cache in {repo_id} has no record of the transfer set it was published with "
            "(no 'published' block in cache.json): it cannot be checked against the rows, so it is not used"
        )
    commit = os.path.basename(os.path.normpath(folder))
    cache.hub_source = (repo_id, commit if _COMMIT.match(commit) else revision)
    cache.check(
        num_views=num_views,
        num_labels=num_labels,
        label_names=label_names,
        where=f"the request for {repo_id}",
    )
    return cache


def published_transfer_set(cache):
    """The rows a pulled cache was published with (``data/*.parquet`` of the same repo and commit).

    Raises:
        ValueError: ``cache`` was not pulled from the Hub (:func:`pull_teacher_cache`).
    """
    from . import download

    source = getattr(cache, "hub_source", None)
    if source is None:
        raise ValueError(
            f"the teacher cache in {cache.directory} was not pulled from the Hub: pass the transfer set "
            "it was built on (train_dataset=)"
        )
    repo_id, revision = source
    folder = download.download_dataset_repo(repo_id, revision=revision, allow_patterns=[DATA_FILES])
    return _read_parquet_rows(folder)


def open_teacher_cache(source: str | os.PathLike):
    """A teacher cache from a folder, or from a Hub dataset repo id that is not a folder here, at the
    default branch or at the revision after ``@`` (``"me/transfer-set@<commit id>"``, the commit a
    publish manifest records; a branch or tag name serves too).

    Raises:
        FileNotFoundError: ``source`` is neither a complete cache folder nor a downloadable repo id.
    """
    from ..teacher_cache import TeacherCache
    from .download import HubDownloadError, is_repo_id

    text = os.fspath(source)
    repo_id, _, revision = text.partition("@")
    if os.path.exists(text) or not is_repo_id(repo_id) or text.endswith("@"):
        return TeacherCache(text)  # a folder that is not a complete cache says so
    try:
        return pull_teacher_cache(repo_id, revision or None)
    except HubDownloadError as err:
        raise FileNotFoundError(
            f"teacher_cache='{text}' is no folder here, and as a Hub dataset repo id: {err}"
        ) from err


def teacher_license(source: str) -> str | None:
    """The licence a teacher's model card declares (a Hub licence id), or ``None`` when unknown.

    A folder's ``README.md`` is read; for a Hub id, the card in ``huggingface_hub``'s cache, else
    (when not offline) the Hub's model info. Nothing raises: an unreachable Hub is an unknown licence.
    """
    from huggingface_hub import ModelCard, constants, try_to_load_from_cache

    from ..sources import is_local_path

    card = None
    if is_local_path(source):
        card = os.path.join(os.fspath(source), "README.md")
    else:
        cached = try_to_load_from_cache(str(source), "README.md")
        card = cached if isinstance(cached, str) else None
    if card is not None and os.path.isfile(card):
        try:
            return ModelCard.load(card).data.license or None
        except Exception:  # noqa: BLE001 - a card without YAML or with broken YAML: licence unknown
            return None
    if is_local_path(source) or constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import model_info

        data = model_info(str(source), timeout=10).card_data
        return (data.license if data is not None else None) or None
    except Exception:  # noqa: BLE001 - the Hub out of reach or the repo unknown: licence unknown
        return None
