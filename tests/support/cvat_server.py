"""A loopback CVAT server: the REST endpoints cvat-sdk's ``annotate_task`` and cvat-cli's agent call.

Read from the SDK's own code (2.23 and 2.80): ``/api/server/about``, ``/api/auth/login``, ``/api/tasks/<id>``,
``/api/labels?task_id=``, ``/api/tasks/<id>/data/meta``, ``/api/tasks/<id>/data?type=chunk|frame``,
``/api/tasks/<id>/annotations`` (GET, PUT, PATCH ``?action=create``), and for agents ``/api/functions`` and
``/api/functions/queues/function:<id>/requests/{acquire,<ar>/complete,<ar>/fail,<ar>/update}``.

Tasks hold encoded frames (image-set chunks, as CVAT makes for image tasks) and their annotations in memory;
every request is recorded (method, path) so tests can check what the driver did.
"""

from __future__ import annotations

import io
import itertools
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from flask import Flask, Response, jsonify, request
from PIL import Image

from tests.support.fakes import LoopbackServer

DATE = "2026-01-01T00:00:00.000000Z"


@dataclass
class FakeTask:
    """A task with one job, whose id is the task's."""

    id: int
    name: str
    labels: list[dict]  # {"id", "name", "type"}
    frames: list[bytes]  # encoded images, in frame order
    frame_names: list[str]
    sizes: list[tuple[int, int]]  # (width, height) per frame
    chunk_size: int = 8
    shapes: list[dict] = field(default_factory=list)


class FakeCvat:
    """``FakeCvat(version).start()``; add tasks with :meth:`add_task`; ``url``; ``close()``."""

    def __init__(self, version: str = "2.80.0", user: str = "admin", password: str = "secret") -> None:
        self.version = version
        self.user, self.password = user, password
        self.tasks: dict[int, FakeTask] = {}
        self.requests: list[tuple[str, str]] = []
        self.functions: dict[int, dict] = {}
        self.queue: list[dict] = []  # pending annotation requests for agents
        self.completed: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.on_complete: Callable[[str, dict], None] | None = None  # a scenario may queue the next request
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server: LoopbackServer | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def add_task(
        self,
        name: str,
        labels: list[str],
        frames: list[bytes],
        frame_names: list[str],
        sizes: list[tuple[int, int]],
        chunk_size: int = 8,
    ) -> FakeTask:
        task_id = next(self._ids)
        label_rows = [{"id": 100 * task_id + i, "name": n, "type": "any"} for i, n in enumerate(labels)]
        task = FakeTask(task_id, name, label_rows, list(frames), list(frame_names), list(sizes), chunk_size)
        self.tasks[task_id] = task
        return task

    def add_shape(self, task: FakeTask, frame: int, label: str, shape_type: str, points: list[float]) -> None:
        label_id = next(row["id"] for row in task.labels if row["name"] == label)
        task.shapes.append(self._stored({"type": shape_type, "frame": frame, "label_id": label_id, "points": points}))

    def label_name(self, task: FakeTask, label_id: int) -> str:
        return next(row["name"] for row in task.labels if row["id"] == label_id)

    def start(self) -> FakeCvat:
        self.server = LoopbackServer(self._app())
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    # -- JSON the SDK's models accept ---------------------------------------------------------------
    def _stored(self, shape: dict) -> dict:
        row = {
            "id": next(self._ids),
            "type": shape["type"],
            "frame": int(shape["frame"]),
            "label_id": int(shape["label_id"]),
            "points": [float(p) for p in shape.get("points", [])],
            "occluded": bool(shape.get("occluded", False)),
            "outside": bool(shape.get("outside", False)),
            "z_order": int(shape.get("z_order", 0)),
            "rotation": float(shape.get("rotation", 0.0)),
            "group": shape.get("group") or 0,
            "source": shape.get("source", "manual"),
            "attributes": shape.get("attributes", []),
            "elements": [],
        }
        return row

    def _task_json(self, task: FakeTask) -> dict:
        base = self.url
        return {
            "url": f"{base}/api/tasks/{task.id}",
            "id": task.id,
            "name": task.name,
            "project_id": None,
            "mode": "annotation",
            "owner": None,
            "assignee": None,
            "bug_tracker": "",
            "created_date": DATE,
            "updated_date": DATE,
            "overlap": 0,
            "segment_size": len(task.frames),
            "status": "annotation",
            "labels": {"url": f"{base}/api/labels?task_id={task.id}"},
            "jobs": {"count": 1, "completed": 0, "validation": 0, "url": f"{base}/api/jobs?task_id={task.id}"},
            "data_chunk_size": task.chunk_size,
            "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset",
            "image_quality": 70,
            "data": task.id,
            "subset": "",
            "organization": None,
            "dimension": "2d",
            "size": len(task.frames),
        }

    def _meta_json(self, task: FakeTask) -> dict:
        return {
            "chunk_size": task.chunk_size,
            "size": len(task.frames),
            "image_quality": 70,
            "start_frame": 0,
            "stop_frame": len(task.frames) - 1,
            "frame_filter": "",
            "frames": [
                {"width": w, "height": h, "name": n, "related_files": 0}
                for (w, h), n in zip(task.sizes, task.frame_names)
            ],
            "deleted_frames": [],
            "chunks_updated_date": DATE,
        }

    def _chunk(self, task: FakeTask, number: int) -> bytes:
        buf = io.BytesIO()
        start = number * task.chunk_size
        with zipfile.ZipFile(buf, "w") as zf:
            for i in range(start, min(start + task.chunk_size, len(task.frames))):
                zf.writestr(f"{i:06d}{_ext(task.frame_names[i])}", task.frames[i])
        return buf.getvalue()

    # -- the app ---------------------------------------------------------------------------------------
    def _app(self) -> Flask:
        app = Flask("fake-cvat")

        @app.before_request
        def record() -> None:
            self.requests.append((request.method, request.path))

        @app.get("/api/server/about")
        def about():
            return jsonify(
                {
                    "name": "Computer Vision Annotation Tool",
                    "description": "",
                    "version": self.version,
                    "logo_url": "",
                    "subtitle": "",
                }
            )

        @app.post("/api/auth/login")
        def login():
            body = request.get_json(force=True, silent=True) or {}
            if body.get("username") != self.user or body.get("password") != self.password:
                return jsonify({"non_field_errors": ["Unable to log in with provided credentials."]}), 400
            resp = jsonify({"key": "token-of-" + self.user})
            resp.set_cookie("sessionid", "session-1")
            resp.set_cookie("csrftoken", "csrf-1")
            return resp

        @app.post("/api/auth/logout")
        def logout():
            return jsonify({})

        @app.get("/api/users/self")
        def me():
            return jsonify({"id": 1, "username": self.user})

        @app.get("/api/tasks/<int:task_id>")
        def task(task_id: int):
            return jsonify(self._task_json(self.tasks[task_id]))

        @app.get("/api/labels")
        def labels():
            task = self.tasks[int(request.args["task_id"])]
            rows = [
                {
                    **row,
                    "color": "#ff0000",
                    "attributes": [],
                    "sublabels": [],
                    "has_parent": False,
                    "task_id": task.id,
                    "parent_id": None,
                }
                for row in task.labels
            ]
            return jsonify({"count": len(rows), "next": None, "previous": None, "results": rows})

        @app.get("/api/tasks/<int:task_id>/data/meta")
        def meta(task_id: int):
            return jsonify(self._meta_json(self.tasks[task_id]))

        @app.get("/api/tasks/<int:task_id>/data")
        def data(task_id: int):
            task = self.tasks[task_id]
            number = int(request.args.get("number", request.args.get("index", 0)))
            if request.args.get("type") == "chunk":
                return Response(self._chunk(task, number), mimetype="application/zip")
            if request.args.get("type") == "frame":
                return Response(task.frames[number], mimetype="image/" + _ext(task.frame_names[number])[1:])
            return jsonify({"detail": "unsupported data type"}), 400

        @app.route("/api/tasks/<int:task_id>/annotations", methods=["GET", "PUT", "PATCH"])
        def annotations(task_id: int):
            task = self.tasks[task_id]
            if request.method == "PUT":
                task.shapes = [self._stored(s) for s in (request.get_json(force=True).get("shapes") or [])]
            elif request.method == "PATCH":
                if request.args.get("action") != "create":
                    return jsonify({"detail": "only action=create is implemented"}), 400
                task.shapes += [self._stored(s) for s in (request.get_json(force=True).get("shapes") or [])]
            return jsonify({"version": 0, "tags": [], "shapes": task.shapes, "tracks": []})

        @app.get("/api/jobs/<int:job_id>")
        def job(job_id: int):
            task = self.tasks[job_id]  # one job per task, with the task's id
            return jsonify(
                {
                    "url": f"{self.url}/api/jobs/{job_id}",
                    "id": job_id,
                    "task_id": task.id,
                    "project_id": None,
                    "stage": "annotation",
                    "state": "new",
                    "type": "annotation",
                    "start_frame": 0,
                    "stop_frame": len(task.frames) - 1,
                    "frame_count": len(task.frames),
                    "data_chunk_size": task.chunk_size,
                    "data_compressed_chunk_type": "imageset",
                    "data_original_chunk_type": "imageset",
                    "mode": "annotation",
                    "dimension": "2d",
                    "status": "annotation",
                    "created_date": DATE,
                    "updated_date": DATE,
                    "issues": {"count": 0, "url": f"{self.url}/api/issues?job_id={job_id}"},
                    "labels": {"url": f"{self.url}/api/labels?job_id={job_id}"},
                }
            )

        @app.get("/api/jobs/<int:job_id>/annotations")
        def job_annotations(job_id: int):
            return jsonify({"version": 0, "tags": [], "shapes": self.tasks[job_id].shapes, "tracks": []})

        # -- functions and agents ------------------------------------------------------------------
        @app.post("/api/functions")
        def create_function():
            body = request.get_json(force=True)
            fid = next(self._ids)
            self.functions[fid] = {**body, "id": fid}
            return jsonify(self.functions[fid]), 201

        @app.get("/api/functions/<int:fid>")
        def get_function(fid: int):
            return jsonify(self.functions[fid])

        @app.post("/api/functions/queues/function:<int:fid>/requests/acquire")
        def acquire(fid: int):
            with self._lock:
                ar = self.queue.pop(0) if self.queue else None
            return jsonify({"ar_assignment": ar})

        @app.post("/api/functions/queues/function:<int:fid>/requests/<ar_id>/complete")
        def complete(fid: int, ar_id: str):
            body = request.get_json(force=True)
            self.completed[ar_id] = body
            if self.on_complete is not None:
                self.on_complete(ar_id, body)
            return jsonify({})

        @app.post("/api/functions/queues/function:<int:fid>/requests/<ar_id>/fail")
        def fail(fid: int, ar_id: str):
            self.failed[ar_id] = request.get_json(force=True).get("exc_info", "")
            return jsonify({})

        @app.post("/api/functions/queues/function:<int:fid>/requests/<ar_id>/update")
        def update(fid: int, ar_id: str):
            return jsonify({})

        inner = app.wsgi_app

        def strip_slash(environ: dict, start_response: Any) -> Any:
            # The SDK asks for some paths with a trailing slash (``/data/``, ``/annotations/``), as CVAT routes them.
            path = environ.get("PATH_INFO", "")
            if len(path) > 1 and path.endswith("/"):
                environ["PATH_INFO"] = path.rstrip("/")
            return inner(environ, start_response)

        app.wsgi_app = strip_slash  # type: ignore[method-assign]
        return app

    def enqueue(self, ar_id: str, params: dict[str, Any]) -> None:
        with self._lock:
            self.queue.append({"ar_id": ar_id, "ar_params": params})


def task_from_files(cvat: FakeCvat, name: str, labels: list[str], paths: list[Path]) -> FakeTask:
    """A task whose frames are these image files, as uploaded (names are the files' names)."""
    sizes = []
    for path in paths:
        with Image.open(path) as im:
            sizes.append(im.size)
    return cvat.add_task(name, labels, [p.read_bytes() for p in paths], [p.name for p in paths], sizes)


def decode_shape(shape: dict, width: int, height: int) -> np.ndarray | None:
    """The mask of a ``mask`` or ``polygon`` shape, decoded independently of the code under test (cvat-sdk's
    ``decode_mask`` and OpenCV's polygon fill); None for other types."""
    from cvat_sdk.masks import decode_mask

    if shape["type"] == "mask":
        return np.asarray(decode_mask([int(v) for v in shape["points"]], image_width=width, image_height=height))
    if shape["type"] == "polygon":
        canvas = np.zeros((height, width), np.uint8)
        cv2.fillPoly(canvas, [np.round(np.asarray(shape["points"]).reshape(-1, 2)).astype(np.int32)], 1)
        return canvas > 0
    return None


def uploaded_masks(cvat: FakeCvat, task: FakeTask, source: str | None = "auto") -> dict[tuple[int, str], np.ndarray]:
    """The union mask per (frame, label) of the task's shapes of ``source`` (None: every shape)."""
    out: dict[tuple[int, str], np.ndarray] = {}
    for shape in task.shapes:
        if source is not None and shape["source"] != source:
            continue
        m = decode_shape(shape, *task.sizes[shape["frame"]])
        if m is None:
            continue
        key = (shape["frame"], cvat.label_name(task, shape["label_id"]))
        out[key] = out[key] | m if key in out else m
    return out


def _ext(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ".jpg"
