"""A small fake Label Studio (the calls the backend makes) and an 'external' media host, for protocol tests.

Both are real HTTP servers on 127.0.0.1 (different ports, so different hosts for the token check) and
record every request's path and Authorization header.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from dataclasses import dataclass, field

import jwt
import numpy as np
from flask import Flask, Response, jsonify, redirect, request
from PIL import Image
from werkzeug.serving import make_server

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
JWT_SECRET = "test-secret-of-at-least-32-bytes-long"


def make_pat() -> str:
    """A Personal Access Token: a long-lived refresh JWT, as Label Studio issues it."""
    return jwt.encode({"token_type": "refresh", "exp": int(time.time()) + 10 * 365 * 86400, "jti": uuid.uuid4().hex,
                       "user_id": 1}, JWT_SECRET, algorithm="HS256")


def image_bytes(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class Recorded:
    path: str
    query: str
    authorization: str | None


class _Server:
    def __init__(self, app: Flask):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class FakeLabelStudio:
    """Serves /api/tasks (annotated tasks), /data/upload/..., /data/local-files, presign, token refresh."""

    api_key: str = LEGACY_TOKEN
    files: dict[str, bytes] = field(default_factory=dict)  # "/data/upload/1/x.jpg" -> bytes
    tasks: list[dict] = field(default_factory=list)  # tasks with annotations (as /api/tasks?fields=all returns)
    requests: list[Recorded] = field(default_factory=list)
    presign_target: str | None = None  # base URL that presign redirects to
    refreshes: int = 0
    access_tokens: set[str] = field(default_factory=set)

    def start(self) -> "FakeLabelStudio":
        app = Flask("fake-ls")

        def authorised() -> bool:
            header = request.headers.get("Authorization", "")
            if header == f"Token {self.api_key}" and not self.api_key.startswith("ey"):
                return True
            if header.startswith("Bearer ") and header[7:] in self.access_tokens:
                try:
                    jwt.decode(header[7:], JWT_SECRET, algorithms=["HS256"])
                    return True
                except jwt.InvalidTokenError:
                    return False
            return False

        @app.before_request
        def record():
            self.requests.append(Recorded(request.path, request.query_string.decode(), request.headers.get("Authorization")))

        @app.post("/api/token/refresh/")
        def refresh():
            if request.json.get("refresh") != self.api_key:
                return jsonify({"detail": "bad refresh token"}), 401
            self.refreshes += 1
            access = jwt.encode({"token_type": "access", "exp": int(time.time()) + 300, "jti": uuid.uuid4().hex},
                                JWT_SECRET, algorithm="HS256")
            self.access_tokens.add(access)
            return jsonify({"access": access})

        @app.get("/api/tasks")
        def tasks():
            if not authorised():
                return jsonify({"detail": "Authentication credentials were not provided."}), 401
            page = int(request.args.get("page", 1))
            size = int(request.args.get("page_size", 100))
            chosen = [t for t in self.tasks if str(t.get("project")) == request.args.get("project")]
            chunk = chosen[(page - 1) * size: page * size]
            if not chunk and page > 1:
                return jsonify({"detail": "Invalid page."}), 404
            return jsonify({"total": len(chosen), "total_annotations": 0, "total_predictions": 0, "tasks": chunk})

        @app.get("/storage-data/uploaded/")
        def storage_proxy():
            return jsonify({"detail": "not on cloud storage"}), 400

        @app.get("/data/upload/<path:rest>")
        def upload(rest):
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            data = self.files.get("/data/upload/" + rest)
            return Response(data, mimetype="image/jpeg") if data is not None else (jsonify({"detail": "no file"}), 404)

        @app.get("/data/local-files/")
        def local_files():
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            data = self.files.get("local:" + request.args.get("d", ""))
            return Response(data, mimetype="image/jpeg") if data is not None else (jsonify({"detail": "no file"}), 404)

        @app.get("/tasks/<int:task_id>/presign/")
        def presign(task_id):
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            uri = base64.urlsafe_b64decode(request.args["fileuri"]).decode()
            name = uri.rsplit("/", 1)[-1]
            return redirect(f"{self.presign_target}/bucket/{name}?X-Signature=abc", code=303)

        self._server = _Server(app)
        self.url = self._server.url
        return self

    def close(self) -> None:
        self._server.close()

    def auth_headers_for(self, prefix: str) -> list[str | None]:
        return [r.authorization for r in self.requests if r.path.startswith(prefix)]


@dataclass
class ExternalHost:
    """Another host (e.g. a bucket): serves /bucket/<name> and /img/<name> without auth."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def start(self) -> "ExternalHost":
        app = Flask("external")

        @app.before_request
        def record():
            self.requests.append(Recorded(request.path, request.query_string.decode(), request.headers.get("Authorization")))

        @app.get("/<kind>/<name>")
        def get(kind, name):
            data = self.files.get(name)
            return Response(data, mimetype="image/jpeg") if data is not None else ("missing", 404)

        self._server = _Server(app)
        self.url = self._server.url
        return self

    def close(self) -> None:
        self._server.close()
