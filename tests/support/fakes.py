"""A small fake Label Studio (the calls the backend makes) and an 'external' media host, for protocol tests.

Both are real HTTP servers on 127.0.0.1 (different ports, so different hosts for the token check) and
record every request's path and Authorization header.
"""

from __future__ import annotations

import base64
import io
import json
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
    return jwt.encode(
        {"token_type": "refresh", "exp": int(time.time()) + 10 * 365 * 86400, "jti": uuid.uuid4().hex, "user_id": 1},
        JWT_SECRET,
        algorithm="HS256",
    )


def image_bytes(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class Recorded:
    path: str
    query: str
    authorization: str | None


class LoopbackServer:
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
    # pre-annotation jobs: predictions, label configs, injected import failures
    predictions: list[dict] = field(default_factory=list)
    label_configs: dict[int, str] = field(default_factory=dict)
    fail_imports: int = 0  # the next N imports answer 500 without storing anything
    fail_after_store: int = 0  # the next N imports store the predictions, then answer 500 (a lost response)
    imports: int = 0

    def start(self) -> FakeLabelStudio:
        app = Flask("fake-ls")
        self._lock = threading.Lock()

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
            self.requests.append(
                Recorded(request.path, request.query_string.decode(), request.headers.get("Authorization"))
            )

        @app.post("/api/token/refresh/")
        def refresh():
            if request.json.get("refresh") != self.api_key:
                return jsonify({"detail": "bad refresh token"}), 401
            self.refreshes += 1
            access = jwt.encode(
                {"token_type": "access", "exp": int(time.time()) + 300, "jti": uuid.uuid4().hex},
                JWT_SECRET,
                algorithm="HS256",
            )
            self.access_tokens.add(access)
            return jsonify({"access": access})

        @app.get("/api/tasks")
        def tasks():
            if not authorised():
                return jsonify({"detail": "Authentication credentials were not provided."}), 401
            page = int(request.args.get("page", 1))
            size = int(request.args.get("page_size", 100))
            chosen = [t for t in self.tasks if str(t.get("project")) == request.args.get("project")]
            query = json.loads(request.args.get("query") or "{}")
            for item in (query.get("filters") or {}).get("items", []):
                if item["filter"] == "filter:tasks:id" and item["operator"] == "greater":
                    chosen = [t for t in chosen if t["id"] > item["value"]]
                elif item["filter"] == "filter:tasks:total_annotations" and item["operator"] == "greater":
                    chosen = [t for t in chosen if len(t.get("annotations") or []) > item["value"]]
                elif item["filter"].startswith("filter:tasks:data.") and item["operator"] == "equal":
                    key = item["filter"].split("data.", 1)[1]
                    chosen = [t for t in chosen if str((t.get("data") or {}).get(key)) == str(item["value"])]
                else:
                    return jsonify({"detail": f"fake: unsupported filter {item}"}), 400
            if query.get("ordering") == ["tasks:id"]:
                chosen = sorted(chosen, key=lambda t: t["id"])
            chunk = chosen[(page - 1) * size : page * size]
            if not chunk and page > 1:
                return jsonify({"detail": "Invalid page."}), 404
            with self._lock:
                counts = {}
                for pred in self.predictions:
                    counts[pred["task"]] = counts.get(pred["task"], 0) + 1
            chunk = [{**t, "total_predictions": counts.get(t["id"], 0)} for t in chunk]
            if request.args.get("include"):
                keys = request.args["include"].split(",")
                chunk = [{k: t[k] for k in keys if k in t} for t in chunk]
            return jsonify({"total": len(chosen), "total_annotations": 0, "total_predictions": 0, "tasks": chunk})

        @app.get("/api/tasks/<int:task_id>")
        def one_task(task_id):
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            found = [t for t in self.tasks if t["id"] == task_id]
            return (jsonify(found[0]), 200) if found else (jsonify({"detail": "Not found."}), 404)

        @app.get("/api/projects/<int:project_id>")
        def project(project_id):
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            if project_id not in self.label_configs:
                return jsonify({"detail": "Not found."}), 404
            return jsonify({"id": project_id, "label_config": self.label_configs[project_id]})

        @app.get("/api/predictions")
        def list_predictions():
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            task = request.args.get("task")
            with self._lock:
                return jsonify([p for p in self.predictions if task is None or str(p["task"]) == task])

        @app.post("/api/projects/<int:project_id>/import/predictions")
        def import_predictions(project_id):
            if not authorised():
                return jsonify({"detail": "unauthorised"}), 401
            body = request.get_json()
            with self._lock:
                self.imports += 1
                if self.fail_imports > 0:
                    self.fail_imports -= 1
                    return jsonify({"detail": "injected failure"}), 500
                known = {t["id"] for t in self.tasks if t.get("project") == project_id}
                for item in body:
                    if item["task"] not in known:
                        return jsonify({"detail": f"task {item['task']} not in project"}), 400
                for item in body:
                    self.predictions.append({**item, "id": len(self.predictions) + 1, "project": project_id})
                if self.fail_after_store > 0:
                    self.fail_after_store -= 1
                    return jsonify({"detail": "injected failure after storing"}), 500
            return jsonify({"created": len(body)}), 201

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

        self._server = LoopbackServer(app)
        self.url = self._server.url
        return self

    def close(self) -> None:
        self._server.close()

    def predictions_per_task(self, version: str | None = None) -> dict[int, int]:
        counts: dict[int, int] = {}
        for pred in self.predictions:
            if version is None or pred.get("model_version") == version:
                counts[pred["task"]] = counts.get(pred["task"], 0) + 1
        return counts

    def auth_headers_for(self, prefix: str) -> list[str | None]:
        return [r.authorization for r in self.requests if r.path.startswith(prefix)]


@dataclass
class ExternalHost:
    """Another host (e.g. a bucket): serves /bucket/<name> and /img/<name> without auth."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def start(self) -> ExternalHost:
        app = Flask("external")

        @app.before_request
        def record():
            self.requests.append(
                Recorded(request.path, request.query_string.decode(), request.headers.get("Authorization"))
            )

        @app.get("/<kind>/<name>")
        def get(kind, name):
            data = self.files.get(name)
            return Response(data, mimetype="image/jpeg") if data is not None else ("missing", 404)

        self._server = LoopbackServer(app)
        self.url = self._server.url
        return self

    def close(self) -> None:
        self._server.close()
