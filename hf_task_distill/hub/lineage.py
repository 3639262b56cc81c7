"""Lineage and licences of a published student: every model and dataset a run drew on, by its Hub id
and the commit the run used, with the licence its card declares, and warnings when a licence limits
what publishing the student may do.

Sources (each a :class:`Source`): the teacher (the VFM the run finetuned, or used as given), the
student's pretrained weights (when ``--pretrained_student``), the task's dataset and the retrieval
pool. A local folder is named by :func:`~hf_task_distill.hub.names.public_name` (its folder name,
marked local) with no revision; its licence is its ``README.md``'s, when it has one.

The commit of a Hub source is the one ``huggingface_hub``'s cache resolved the default branch to when
the run loaded it (``<cache>/<repo folder>/refs/main``): models are loaded through the cache by
transformers and timm, datasets by ``datasets``. The licence is the card's ``license`` field
(:func:`declared_license`), from the cached card or, online, the Hub's repo info.

Policy (pure): :func:`licence_warnings` reads licence ids (the Hub's identifiers, e.g.
``cc-by-nc-4.0``): ``-nc`` forbids commercial use, ``-nd`` derivative works (a distilled student
arguably is one), and ``other`` / ``unknown`` / none must be read by hand.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from .names import hub_id, public_name

__all__ = ["Source", "declared_license", "licence_warnings", "resolved_revision", "run_sources"]


@dataclass
class Source:
    """One model or dataset a published student comes from."""

    role: str  # "teacher", "student weights", "task data", "retrieval pool"
    name: str  # a Hub id, or a local folder's public name
    repo_type: str  # "model" or "dataset"
    hub: bool  # whether ``name`` is a Hub id
    revision: str | None = None  # the commit the run used (Hub sources)
    license: str | None = None  # the licence id its card declares

    def as_dict(self) -> dict[str, Any]:
        """The source as a JSON-ready dict (the publish manifest's ``lineage`` entries, the card's rows)."""
        return asdict(self)


def resolved_revision(repo_id: str, repo_type: str = "model", revision: str = "main") -> str | None:
    """The commit id ``huggingface_hub``'s cache resolved ``revision`` of ``repo_id`` to (what a load
    through the cache used), or ``None`` when the repo is not in the cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    ref = os.path.join(
        constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type=repo_type), "refs", revision
    )
    try:
        with open(ref, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def declared_license(source: str, repo_type: str = "model") -> str | None:
    """The ``license`` a source's card declares (a folder's ``README.md``; a Hub repo's cached card, else
    its repo info when online), or ``None`` when unknown. Never raises: an unreachable Hub is unknown."""
    from huggingface_hub import RepoCard, constants, try_to_load_from_cache

    from ..sources import is_local_path

    if is_local_path(source):
        card = os.path.join(os.fspath(source), "README.md")
    else:
        cached = try_to_load_from_cache(str(source), "README.md", repo_type=repo_type)
        card = cached if isinstance(cached, str) else None
    if card is not None and os.path.isfile(card):
        try:
            return RepoCard.load(card, repo_type=repo_type).data.to_dict().get("license") or None
        except Exception:  # noqa: BLE001 - a card without YAML, or broken YAML: licence unknown
            return None
    if is_local_path(source) or constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import HfApi

        data = HfApi().repo_info(str(source), repo_type=repo_type, timeout=10).card_data
        return (data.to_dict().get("license") if data is not None else None) or None
    except Exception:  # noqa: BLE001 - the Hub out of reach or the repo unknown: licence unknown
        return None


def describe_source(role: str, source: str, repo_type: str, license: str | None = None) -> Source:
    """A :class:`Source` for ``source`` (a Hub id or a local folder), its revision and licence looked up."""
    repo = hub_id(source)
    return Source(
        role=role,
        name=repo or public_name(source),
        repo_type=repo_type,
        hub=repo is not None,
        revision=resolved_revision(repo, repo_type) if repo else None,
        license=license or declared_license(source, repo_type),
    )


def run_sources(config, task) -> list[Source]:
    """The sources of a pipeline run (its ``PipelineConfig`` and ``TargetTask``): teacher, pretrained
    student weights, task data, and the retrieval pool when the transfer set was retrieved."""
    sources = [describe_source("teacher", config.teacher.teacher, "model")]
    student = config.student
    if student.pretrained_student and "/" in str(student.student):
        sources.append(describe_source("student weights", student.student, "model"))
    spec = getattr(task, "spec", None)
    data = spec.hub_id if spec is not None and spec.hub_id else config.task.dataset
    sources.append(
        describe_source("task data", data, "dataset", license=spec.license if spec is not None else None)
    )
    if config.transfer.transfer == "retrieval" and config.transfer.pool:
        sources.append(describe_source("retrieval pool", config.transfer.pool, "dataset"))
    return sources


#: Licence ids with terms that limit publishing a student made from the source, and what they say.
_RESTRICTIONS = (
    ("-nc", "forbids commercial use"),
    ("-nd", "forbids derivative works (a distilled student may count as one)"),
)
_UNCLEAR = {"other", "unknown"}


def licence_warnings(sources: list[Source]) -> list[str]:
    """One sentence per source whose licence limits what may be done with the student, or is not
    declared (``other``/``unknown``/none), naming the source, its role and its licence."""
    warnings = []
    for source in sources:
        licence = (source.license or "").lower()
        for marker, meaning in _RESTRICTIONS:
            if marker in licence:
                warnings.append(
                    f"the {source.role} `{source.name}` is licensed {source.license}, which {meaning}: "
                    "the student inherits the restriction; check it before publishing or using it commercially"
                )
        if not licence or licence in _UNCLEAR:
            plural = source.role.endswith("weights")  # "the student weights ... declare"
            if source.license:
                said = f"{'are' if plural else 'is'} licensed '{source.license}'"
            else:
                said = f"declare{'' if plural else 's'} no licence"
            warnings.append(
                f"the {source.role} `{source.name}` {said}: read its terms before publishing the student"
            )
    return warnings
