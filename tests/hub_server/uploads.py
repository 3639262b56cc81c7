"""The loopback Hub's write routes: pre-upload, NDJSON commit, Git LFS batch (``basic``) and card check.

A mixin of :class:`hub_server.app.HubApp`, which provides ``storage``, ``token``, ``_require_token`` and ``_require_write``.
"""

from __future__ import annotations

import base64
import hmac
import json

from flask import jsonify, request

from .storage import HubError, check_repo_id, is_lfs, repo_type_of


class UploadRoutes:
    """Route handlers that write; every one needs the token (an LFS PUT carries a signed URL instead)."""

    def validate_yaml(self):
        """The card's YAML block must parse to a mapping (the Hub checks more: its metadata schema)."""
        import yaml

        content = request.get_json(force=True).get("content", "")
        if not content.startswith("---"):
            return jsonify({"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(content.split("---")[1])
        except yaml.YAMLError as error:
            return jsonify({"errors": [{"message": f"Invalid YAML: {error}"}]}), 400
        if metadata is not None and not isinstance(metadata, dict):
            return jsonify({"errors": [{"message": "YAML metadata is not a mapping"}]}), 400
        return jsonify({"warnings": []})

    def preupload(self, kind, ns, name, revision):
        """Upload mode per file: ``lfs`` for binary, big or LFS-tracked files, else ``regular``; never Xet."""
        self._require_write(ns)
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        _, record = self.storage.resolve(repo_type, repo_id, revision)
        out = []
        for item in request.get_json(force=True)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = is_lfs(item["path"], sample, item["size"])
            old = record["files"].get(item["path"])
            oid = None if old is None else (old["sha256"] if old["lfs"] else old["blob_id"])
            out.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return jsonify({"files": out})

    def commit(self, kind, ns, name, revision):
        self._require_write(ns)
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        lines = [json.loads(line) for line in request.get_data().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        operations = [line for line in lines if line["key"] != "header"]
        commit_id = self.storage.commit(
            repo_type,
            repo_id,
            revision,
            operations,
            header.get("summary") or "commit",
            header.get("parentCommit"),
        )
        prefix = "" if repo_type == "model" else "datasets/"
        url = f"{request.host_url}{prefix}{repo_id}/commit/{commit_id}"
        return jsonify({"success": True, "commitOid": commit_id, "commitUrl": url})

    def _signature(self, oid: str) -> str:
        return hmac.new(self.token.encode(), oid.encode(), "sha256").hexdigest()

    def lfs_batch(self, kind, ns, name):
        """Git LFS batch API, ``basic`` transfer: a signed PUT URL per object not yet stored."""
        self._require_write(ns)
        repo_type, repo_id = repo_type_of(kind), f"{ns}/{name}"
        check_repo_id(repo_id)
        self.storage.repo(repo_type, repo_id)
        objects = []
        for obj in request.get_json(force=True)["objects"]:
            oid, out = obj["oid"], {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.storage.has_object(oid):
                base = request.host_url.rstrip("/")
                out["actions"] = {
                    "upload": {"href": f"{base}/lfs-upload/{oid}?sig={self._signature(oid)}"},
                    "verify": {"href": f"{base}/lfs-verify/{oid}"},
                }
            objects.append(out)
        return jsonify({"transfer": "basic", "objects": objects})

    def lfs_upload(self, oid):
        if not hmac.compare_digest(request.args.get("sig", ""), self._signature(oid)):
            raise HubError(403, "Upload URL signature is not valid")
        self.storage.put_object(request.get_data(), expected_sha256=oid)
        return "", 200

    def lfs_verify(self, oid):
        self._require_token()
        if not self.storage.has_object(oid):
            raise HubError(404, f"LFS object {oid} was not uploaded", "EntryNotFound")
        return jsonify({"success": True})
