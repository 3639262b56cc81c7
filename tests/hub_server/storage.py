"""Repos on disk for the loopback Hub: content-addressed objects and full-snapshot commits.

Layout under ``root``::

    objects/<sha256>                      every file's bytes, once (regular and LFS alike)
    repos/<type>s/<namespace>/<name>/
        repo.json                         {"private": bool, "created": iso date}
        refs.json                         {"main": <commit id>}
        commits/<commit id>.json          {"parent", "message", "date", "files": {path: entry}}

A file entry is ``{"sha256", "size", "blob_id", "lfs"}``: ``blob_id`` is the git blob sha1 of what git
would store (the bytes for a regular file, the LFS pointer for an LFS file), as the Hub reports it. A
commit id is the sha1 of the commit record, so it changes with every commit and names one snapshot.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import pathlib
import re
import threading

REPO_TYPES = ("model", "dataset")
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".parquet", ".arrow", ".npz", ".png", ".jpg")
LFS_MIN_SIZE = 10 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


class HubError(Exception):
    """An error the server answers with: HTTP ``status``, the Hub's ``X-Error-Code`` and a message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """``(namespace, name)`` of a Hub repo id, or :class:`HubError` 400 naming what is wrong with it."""
    parts = repo_id.split("/")
    bad = len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts)
    if bad or ".." in repo_id or "--" in repo_id or repo_id.endswith(".git"):
        raise HubError(
            400,
            f"Invalid repo id {repo_id!r}: expected 'namespace/name' with letters, digits, '-', '_' or '.', "
            "no '--' or '..', at most 96 characters per part",
        )
    return parts[0], parts[1]


def repo_type_of(kind: str) -> str:
    """``model``/``dataset`` from the plural in an API URL (``models``, ``datasets``); 404 for others."""
    types = {f"{t}s": t for t in REPO_TYPES}
    if kind not in types:
        raise HubError(404, f"Unknown repo type {kind!r}", "RepoNotFound")
    return types[kind]


def is_lfs(path: str, sample: bytes, size: int) -> bool:
    """The preupload's rule: LFS for the Hub's default LFS suffixes, binary samples and big files."""
    return path.endswith(LFS_SUFFIXES) or b"\0" in sample or size >= LFS_MIN_SIZE


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Storage:
    """Thread-safe store of repos, commits and objects under ``root`` (see the module docstring)."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- objects -------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> pathlib.Path:
        return self.root / "objects" / sha256

    def has_object(self, sha256: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{64}", sha256)) and self.object_path(sha256).is_file()

    def put_object(self, data: bytes, expected_sha256: str | None = None) -> str:
        """Store ``data``; 400 when it does not hash to ``expected_sha256`` (a corrupt LFS upload)."""
        sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise HubError(
                400, f"Uploaded content hashes to {sha256}, not the announced oid {expected_sha256}"
            )
        path = self.object_path(sha256)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha256

    # -- repos ---------------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> pathlib.Path:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Unsupported repo type {repo_type!r}: the loopback Hub serves {REPO_TYPES}")
        namespace, name = check_repo_id(repo_id)
        return self.root / "repos" / f"{repo_type}s" / namespace / name

    def repo(self, repo_type: str, repo_id: str) -> dict:
        """The repo's record (``private``, ``created``), or 404 ``RepoNotFound``."""
        folder = self.repo_dir(repo_type, repo_id)
        if not (folder / "refs.json").is_file():
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        return json.loads((folder / "repo.json").read_text())

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> None:
        """A new repo whose ``main`` holds one commit with the Hub's default ``.gitattributes``; 409 if it exists."""
        folder = self.repo_dir(repo_type, repo_id)
        with self._lock:
            if (folder / "refs.json").exists():
                raise HubError(409, "You already created this model repo", "RepoAlreadyExists")
            (folder / "commits").mkdir(parents=True)
            (folder / "repo.json").write_text(json.dumps({"private": private, "created": _now()}))
            files = {".gitattributes": self._entry(GITATTRIBUTES.encode(), lfs=False)}
            commit = self._write_commit(folder, None, "initial commit", files)
            (folder / "refs.json").write_text(json.dumps({"main": commit}))

    def _entry(self, data: bytes, lfs: bool) -> dict:
        sha256 = self.put_object(data)
        blob = lfs_pointer(sha256, len(data)) if lfs else data
        return {"sha256": sha256, "size": len(data), "blob_id": git_blob_id(blob), "lfs": lfs}

    def _write_commit(self, folder: pathlib.Path, parent: str | None, message: str, files: dict) -> str:
        record = {"parent": parent, "message": message, "date": _now(), "files": files}
        body = json.dumps(record, sort_keys=True).encode()
        commit_id = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        (folder / "commits" / f"{commit_id}.json").write_bytes(body)
        return commit_id

    # -- revisions and commits -----------------------------------------------------------------
    def resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict]:
        """``(commit id, commit record)`` of a branch name or full commit id; 404 ``RevisionNotFound``."""
        self.repo(repo_type, repo_id)
        folder = self.repo_dir(repo_type, repo_id)
        refs = json.loads((folder / "refs.json").read_text())
        commit_id = refs.get(revision)
        if commit_id is None and _COMMIT_ID.fullmatch(revision):
            commit_id = revision
        path = folder / "commits" / f"{commit_id}.json"
        if commit_id is None or not path.is_file():
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit_id, json.loads(path.read_text())

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        operations: list[dict],
        message: str,
        parent_commit: str | None = None,
    ) -> str:
        """Apply ``operations`` (``{"key": "file"|"lfsFile"|"deletedFile"|"deletedFolder", "value": ...}``)
        to ``branch`` as one new snapshot; its commit id. 412 when ``parent_commit`` is not the head,
        400 when an LFS file was never uploaded, 404 when a deleted path does not exist."""
        with self._lock:
            head, record = self.resolve(repo_type, repo_id, branch)
            if branch == head:
                raise HubError(
                    400, f"Cannot commit to a commit id ({branch}): name a branch", "RevisionNotFound"
                )
            if parent_commit is not None and parent_commit != head:
                raise HubError(
                    412, f"A commit has happened since. Parent {parent_commit} is not the head {head}"
                )
            files = dict(record["files"])
            for op in operations:
                self._apply(files, op["key"], op["value"])
            folder = self.repo_dir(repo_type, repo_id)
            commit_id = self._write_commit(folder, head, message, files)
            refs = json.loads((folder / "refs.json").read_text())
            refs[branch] = commit_id
            (folder / "refs.json").write_text(json.dumps(refs))
            return commit_id

    def _apply(self, files: dict, key: str, value: dict) -> None:
        path = value["path"].strip("/")
        if key == "file":
            files[path] = self._entry(base64.b64decode(value["content"]), lfs=False)
        elif key == "lfsFile":
            sha256 = value["oid"]
            if not self.has_object(sha256):
                raise HubError(400, f"LFS file {path!r} (oid {sha256}) was not uploaded before the commit")
            size = self.object_path(sha256).stat().st_size
            files[path] = {
                "sha256": sha256,
                "size": size,
                "blob_id": git_blob_id(lfs_pointer(sha256, size)),
                "lfs": True,
            }
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def add_folder(
        self, repo_type: str, repo_id: str, folder: pathlib.Path, message: str = "add folder"
    ) -> str:
        """Commit every file under ``folder`` to ``main`` (creating a public repo if needed), with the
        preupload's LFS rule, without HTTP: how a test seeds the Hub with what a user would find there
        (e.g. a tiny model under a real model's id). The new commit id."""
        try:
            self.repo(repo_type, repo_id)
        except HubError:
            self.create_repo(repo_type, repo_id, private=False)
        operations = []
        for path in sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file()):
            data, name = path.read_bytes(), path.relative_to(folder).as_posix()
            if is_lfs(name, data[:512], len(data)):
                operations.append({"key": "lfsFile", "value": {"path": name, "oid": self.put_object(data)}})
            else:
                operations.append({"key": "file", "value": {"path": name, "content": base64.b64encode(data)}})
        return self.commit(repo_type, repo_id, "main", operations, message)

    def history(self, repo_type: str, repo_id: str, revision: str) -> list[tuple[str, dict]]:
        """``[(commit id, record), ...]`` from ``revision`` back to the first commit."""
        commit_id, record = self.resolve(repo_type, repo_id, revision)
        out = [(commit_id, record)]
        while record["parent"] is not None:
            commit_id, record = self.resolve(repo_type, repo_id, record["parent"])
            out.append((commit_id, record))
        return out
