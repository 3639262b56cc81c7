"""The loopback Hub's HTTP routes (Flask): just what huggingface_hub, transformers, timm and datasets call.

Repo ids in URLs are ``<namespace>/<name>``; dataset routes carry ``datasets/`` (file URLs) or
``/api/datasets/`` (API). Errors are JSON ``{"error": message}`` with the Hub's ``X-Error-Code`` and
``X-Error-Message`` headers, which ``huggingface_hub.utils.hf_raise_for_status`` turns into
``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError`` or ``HfHubHTTPError``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import socket
import threading

from flask import Flask, g, jsonify, request, send_file

from .storage import HubError, Storage, repo_type_of
from .uploads import UploadRoutes

_INVALID_TOKEN = "Invalid credentials in Authorization header"
#: The token's owner and the organisations it belongs to, with its role in each (as ``whoami-v2``
#: answers): repos are created and written only in a namespace where the role allows it.
USER = "user"
ORGS = {"alice": "write", "someone": "write", "lineage": "contributor", "readers": "read"}


def _tree_entries(files: dict, folder: str, recursive: bool) -> list[dict]:
    """The Hub's tree listing of ``folder`` ("" for the root): files and sub-folders, sorted by path."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    out, dirs = [], set()
    for path, entry in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        for depth in range(1, len(rest)):
            if recursive or depth == 1:
                dirs.add(prefix + "/".join(rest[:depth]))
        if recursive or len(rest) == 1:
            out.append(_file_entry(path, entry))
    out += [
        {"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in dirs
    ]
    return sorted(out, key=lambda e: e["path"])


def _file_entry(path: str, entry: dict) -> dict:
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry["blob_id"]}
    if entry["lfs"]:
        pointer_size = len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry['sha256']}\n")
        pointer_size += len(f"size {entry['size']}\n")
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return info


class HubApp(UploadRoutes):
    """A Flask app over a :class:`Storage`; ``token`` is the one write token (and the key that signs
    LFS upload URLs, which the client PUTs to without an Authorization header, like S3's)."""

    def __init__(self, storage: Storage, token: str):
        self.storage, self.token = storage, token
        self.orgs = dict(ORGS)  # the token owner's organisations and roles (LoopbackHub.member_of adds one)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answer, for tests
        self._faults: list[tuple[str, re.Pattern, str]] = []
        self._faults_lock = threading.Lock()  # requests are served in parallel threads
        self.flask = app = Flask("loopback_hub")
        app.before_request(lambda: self._inject("before"))
        app.after_request(self._log)
        app.register_error_handler(HubError, self._error)
        app.register_error_handler(
            404, lambda e: self._error(HubError(404, f"Not implemented: {request.path}"))
        )
        app.post("/api/repos/create")(self.create_repo)
        app.post("/api/validate-yaml")(self.validate_yaml)
        app.get("/api/whoami-v2")(self.whoami)
        base = "/api/<kind>/<ns>/<name>"
        app.get(base, endpoint="info")(self.info)
        app.get(base + "/revision/<path:revision>", endpoint="info_rev")(self.info)
        app.get(base + "/tree/<revision>", endpoint="tree")(self.tree)
        app.get(base + "/tree/<revision>/<path:folder>", endpoint="tree_path")(self.tree)
        app.post(base + "/paths-info/<revision>", endpoint="paths_info")(self.paths_info)
        app.post(base + "/preupload/<revision>", endpoint="preupload")(self.preupload)
        app.post(base + "/commit/<revision>", endpoint="commit")(self.commit)
        app.get(base + "/commits/<revision>", endpoint="commits")(self.commits)
        for prefix, kind in (("", "models"), ("/datasets", "datasets")):
            app.route(
                f"{prefix}/<ns>/<name>/resolve/<revision>/<path:filename>",
                methods=["GET", "HEAD"],
                endpoint=f"resolve_{kind}",
                defaults={"kind": kind},
            )(self.resolve)
            app.post(
                f"{prefix}/<ns>/<name>.git/info/lfs/objects/batch",
                endpoint=f"lfs_batch_{kind}",
                defaults={"kind": kind},
            )(self.lfs_batch)
        app.put("/lfs-upload/<oid>")(self.lfs_upload)
        app.post("/lfs-verify/<oid>")(self.lfs_verify)

    def drop_connection(self, method: str, path_pattern: str, when: str = "before") -> None:
        """Drop the connection of the next ``method`` request whose path matches ``path_pattern`` (a
        regex, ``re.search``): ``before`` it is handled (the request is lost) or ``after`` (it took
        effect, the answer is lost). One request each call; what an unreliable network does to a push."""
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        self._faults.append((method.upper(), re.compile(path_pattern), when))

    def pending_faults(self) -> list[str]:
        """The ``drop_connection`` faults no request has met yet, as ``"METHOD pattern when"``."""
        return [f"{m} {p.pattern} {w}" for m, p, w in self._faults]

    def _inject(self, when: str):
        """Shut the connection down if a fault matches; ``before``: answer nothing (skip the handler)."""
        with self._faults_lock:
            met = [
                f
                for f in self._faults
                if f[0] == request.method and f[1].search(request.path) and f[2] == when
            ]
            if met:
                self._faults.remove(met[0])
        if not met:
            return None
        request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
        g.dropped = True
        return ("", 500) if when == "before" else None

    def _log(self, response):
        if not g.get("dropped"):
            self._inject("after")
        status = -1 if g.get("dropped") else response.status_code  # -1: the client got no answer
        self.requests.append((request.method, request.path, status))
        return response

    # -- auth ----------------------------------------------------------------------------------
    def _bearer(self) -> str | None:
        header = request.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else None

    def _require_token(self) -> None:
        if self._bearer() != self.token:
            raise HubError(401, _INVALID_TOKEN)

    def _require_write(self, ns: str) -> None:
        """The token, and a namespace it may write to (its user's, or an organisation where its role is
        not ``read``); the Hub answers 403 otherwise."""
        self._require_token()
        if ns != USER and self.orgs.get(ns, "read") == "read":
            raise HubError(
                403, f'You don\'t have the rights to create or write to a repo under the namespace "{ns}"'
            )

    def _check_read(self, repo_type: str, repo_id: str) -> None:
        """A wrong token is refused everywhere (as on the Hub); a private repo needs the right one."""
        given = self._bearer()
        if given is not None and given != self.token:
            raise HubError(401, _INVALID_TOKEN)
        if self.storage.repo(repo_type, repo_id)["private"] and given != self.token:
            raise HubError(401, f"Repository Not Found: {repo_id}", "RepoNotFound")

    def _error(self, error: HubError):
        response = jsonify({"error": error.message})
        response.status_code = error.status
        response.headers["X-Error-Message"] = error.message
        if error.code:
            response.headers["X-Error-Code"] = error.code
        return response

    # -- repos ---------------------------------------------------------------------------------
    def create_repo(self):
        body = request.get_json(force=True)
        repo_type = body.get("type") or "model"
        namespace = body.get("organization") or USER
        self._require_write(namespace)
        repo_id = f"{namespace}/{body.get('name', '')}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{request.host_url}{prefix}{repo_id}"
        try:
            self.storage.create_repo(repo_type, repo_id, bool(body.get("private")))
        except HubError as error:
            response = self._error(error)
            if (
                error.status == 409
            ):  # the Hub's 409 names the repo: `create_repo(exist_ok=True)` reads its url
                response.set_data(json.dumps({"error": error.message, "url": url}))
            return response
        return jsonify({"url": url, "name": repo_id, "id": repo_id})

    def whoami(self):
        """The token's owner: :data:`USER` (the namespace a repo id without one is created in), and
        its organisations (:data:`ORGS`, and any the test made it a member of)."""
        self._require_token()
        return jsonify(
            {
                "type": "user",
                "name": USER,
                "fullname": "Loopback User",
                "orgs": [
                    {"type": "org", "name": name, "roleInOrg": role} for name, role in self.orgs.items()
                ],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            }
        )

    def info(self, kind, ns, name, revision="main"):
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        self._check_read(repo_type, repo_id)
        commit_id, record = self.storage.resolve(repo_type, repo_id, revision)
        private = self.storage.repo(repo_type, repo_id)["private"]
        return jsonify(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": ns,
                "sha": commit_id,
                "private": private,
                "gated": False,
                "disabled": False,
                "lastModified": record["date"],
                "createdAt": record["date"],
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(record["files"])],
            }
        )

    def commits(self, kind, ns, name, revision):
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        self._check_read(repo_type, repo_id)
        history = self.storage.history(repo_type, repo_id, revision)
        return jsonify(
            [
                {"id": c, "title": r["message"], "message": r["message"], "date": r["date"], "authors": []}
                for c, r in history
            ]
        )

    # -- listing -------------------------------------------------------------------------------
    def tree(self, kind, ns, name, revision, folder=""):
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        self._check_read(repo_type, repo_id)
        _, record = self.storage.resolve(repo_type, repo_id, revision)
        recursive = request.args.get("recursive", "false").lower() in ("true", "1")
        entries = _tree_entries(record["files"], folder, recursive)
        if folder.strip("/") and not entries:
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
        return jsonify(entries)

    def paths_info(self, kind, ns, name, revision):
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        self._check_read(repo_type, repo_id)
        _, record = self.storage.resolve(repo_type, repo_id, revision)
        files, out = record["files"], []
        for path in request.form.getlist("paths") or (request.get_json(silent=True) or {}).get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(_file_entry(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append(
                    {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
                )
        return jsonify(out)

    def resolve(self, kind, ns, name, revision, filename):
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        self._check_read(repo_type, repo_id)
        commit_id, record = self.storage.resolve(repo_type, repo_id, revision)
        entry = record["files"].get(filename)
        if entry is None:
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound")
        etag = entry["sha256"] if entry["lfs"] else entry["blob_id"]
        response = send_file(
            self.storage.object_path(entry["sha256"]),
            mimetype="application/octet-stream",
            conditional=True,
            etag=etag,
            download_name=posixpath.basename(filename),
        )
        response.headers["X-Repo-Commit"] = commit_id
        if entry["lfs"]:
            response.headers["X-Linked-Etag"] = f'"{etag}"'
            response.headers["X-Linked-Size"] = str(entry["size"])
        return response
