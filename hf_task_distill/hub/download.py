"""The one place the package downloads a dataset repo from the Hub (``huggingface_hub.snapshot_download``).

Everything that pulls a published transfer set or teacher cache by repo id goes through
:func:`download_dataset_repo`, so that tests can stand a local folder (or a loopback Hub server,
through ``HF_ENDPOINT``) in for the Hub at this one boundary.
"""

from __future__ import annotations

import os

__all__ = ["HubDownloadError", "download_dataset_repo", "is_repo_id"]


class HubDownloadError(OSError):
    """A dataset repo could not be downloaded (the Hub out of reach, the repo or revision missing)."""


def is_repo_id(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a well-formed Hub repo id (``owner/name`` or ``name``) and not a folder here."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = os.fspath(text)
    if os.path.exists(text):
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def download_dataset_repo(
    repo_id: str, *, revision: str | None = None, allow_patterns: list[str] | None = None
) -> str:
    """The local snapshot folder of the dataset repo ``repo_id`` (the files matching ``allow_patterns``).

    Args:
        repo_id (`str`): the dataset repo, ``owner/name``.
        revision (`str`, *optional*): a branch, tag or commit id; the default branch when ``None``.
        allow_patterns (`list[str]`, *optional*): glob patterns of the files to download (all when ``None``).

    Returns:
        `str`: the folder holding the downloaded files at their repo paths (``huggingface_hub``'s
        cache; for a Hub download its name is the commit id that was resolved).

    Raises:
        ValueError: ``repo_id`` is not a valid repo id.
        HubDownloadError: the Hub could not be reached, or it has no such repo or revision.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"'{repo_id}' is not a valid Hub dataset repo id (owner/name): {err}") from err
    try:
        return snapshot_download(
            repo_id, repo_type="dataset", revision=revision, allow_patterns=allow_patterns
        )
    except Exception as err:  # noqa: BLE001 - offline, missing repo/revision, refused: one clear line
        at = f" at revision {revision}" if revision else ""
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubDownloadError(
            f"could not download the dataset repo {repo_id}{at} from the Hugging Face Hub "
            f"({type(err).__name__}: {first})"
        ) from err
