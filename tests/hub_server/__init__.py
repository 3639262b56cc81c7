"""A loopback Hugging Face Hub for tests: the real client libraries on one side, repos on disk on the other.

``LoopbackHub(root).start()`` serves on a free port of 127.0.0.1 in a daemon thread; point clients at
it with :meth:`LoopbackHub.client_env`. See docs/testing.md for what it implements.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import secrets
import threading

from werkzeug.serving import make_server

from .app import HubApp
from .storage import Storage

__all__ = ["LoopbackHub"]


class LoopbackHub:
    """The server, its storage folder ``root`` and the one token that may write (``hf_`` + 32 hex)."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.token = "hf_" + secrets.token_hex(16)
        self.storage = Storage(self.root)
        self.app = HubApp(self.storage, self.token)
        self._server = None
        self._thread = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, what ``HF_ENDPOINT`` is set to."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> LoopbackHub:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the test output
        self._server = make_server("127.0.0.1", 0, self.app.flask, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)

    @contextlib.contextmanager
    def member_of(self, org: str, role: str = "write"):
        """The token's owner in organisation ``org`` while the block runs: a test seeds a repo such as
        ``facebook/dinov2-large`` through the clients as its publisher would, and the namespace is
        refused again afterwards."""
        self.app.orgs[org] = role
        try:
            yield self
        finally:
            del self.app.orgs[org]

    def client_env(self, hf_home: pathlib.Path, token: str | None = "default") -> dict:
        """The environment of a client process as on a user's machine, pointed at this server: online,
        ``HF_ENDPOINT`` set, its own ``HF_HOME`` (cache), ``HF_TOKEN`` (the server's unless ``token`` is
        given; ``None`` for none) and ``HF_HUB_DISABLE_XET=1`` (uploads take the LFS path; see docs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        for key in ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE"):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(hf_home),
            HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        )
        if token is not None:
            env["HF_TOKEN"] = self.token if token == "default" else token
        return env
