"""The Flask app: the Label Studio ML-backend protocol as Label Studio 1.23 speaks it.

    GET  /health, GET /       instant; never waits for the model
    POST /setup               validates the label config, returns model_version (no model load)
    POST /predict             one prediction per task, in order; or interactive refinement (params.context)
    POST /webhook             acknowledged at once; examples are re-synced in the background
    GET  /versions            {"versions": [...]}; the current one first
    GET  /metrics             Prometheus text

Build it with :func:`create_app`; ``dcsam serve`` runs it under gunicorn (see :mod:`backend.serve`).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import queue
import threading
import time

from flask import Flask, Response, jsonify, request

from .engine_select import EngineChoice, choose_engine, model_version, segmenter_config
from .examples import ExampleManager
from .labelconfig import LabelConfig, LabelConfigError, parse_label_config
from .media import LabelStudioAccess
from .metrics import Metrics
from .model import ModelHolder, SegmenterFactory
from .predictor import Predictor
from .settings import BackendSettings
from .state import State, parse_project_id

log = logging.getLogger(__name__)

CHOICE_ENV = "DCSAM_BACKEND_ENGINE_CHOICE"  # set by `dcsam serve` after resolving DCSAM_ENGINE=auto once
ANNOTATION_EVENTS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_UPDATED",
                     "ANNOTATION_DELETED", "ANNOTATIONS_DELETED", "TASKS_DELETED"}
KNOWN_EVENTS = ANNOTATION_EVENTS | {"PROJECT_UPDATED", "PROJECT_DELETED", "START_TRAINING"}


class BadRequest(Exception):
    pass


@functools.lru_cache(maxsize=64)
def _parse_config_cached(xml: str) -> LabelConfig:
    return parse_label_config(xml)


def _choice_from_env() -> EngineChoice | None:
    raw = os.environ.get(CHOICE_ENV)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return EngineChoice(data["engine"], data.get("sam_checkpoint"), data.get("reason", ""))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed %s", CHOICE_ENV)
        return None


class Backend:
    """Everything one process holds: settings, state, the lazily loaded model, examples, metrics."""

    def __init__(self, settings: BackendSettings, *, segmenter_factory: SegmenterFactory | None = None,
                 choice: EngineChoice | None = None):
        self.settings = settings
        self.choice = choice or _choice_from_env() or choose_engine(settings, try_download=False)
        self.config = segmenter_config(settings, self.choice)
        self.version = model_version(settings, self.choice)
        self.state = State(settings.model_dir)
        self.state.record_version(self.version, self.choice.engine, {"reason": self.choice.reason,
                                                                     "config": self.config.to_dict()})
        self.model = ModelHolder(self.config, segmenter_factory)
        self.metrics = Metrics()
        self._describe_metrics()
        self.examples = ExampleManager(self.state, self.model, k=settings.examples_per_label,
                                       recheck_s=settings.examples_recheck_s, max_pixels=settings.max_image_pixels)
        self.predictor = Predictor(
            model=self.model, examples=self.examples, version=self.version, batch_size=settings.batch_size,
            min_score=settings.min_score, max_pixels=settings.max_image_pixels,
            max_download_bytes=settings.max_download_bytes, local_files_root=settings.local_files_root,
            on_task_error=lambda kind: self.metrics.inc("dcsam_task_errors_total", kind=kind))
        self._env_access = None
        if settings.label_studio_url and settings.label_studio_api_key:
            self._env_access = LabelStudioAccess(settings.label_studio_url, settings.label_studio_api_key,
                                                 max_download_bytes=settings.max_download_bytes,
                                                 local_files_root=settings.local_files_root)
        elif settings.label_studio_url or settings.label_studio_api_key:
            log.warning("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set; using what /setup passes instead")
        self._setup_accesses: dict[tuple[str, str], LabelStudioAccess] = {}
        self._access_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        log.info("dcsam backend: engine %s (%s), model_version %s, state %s", self.choice.engine, self.choice.reason,
                 self.version, self.state.path)
        if settings.basic_auth and not settings.webhook_secret:
            log.warning("basic auth is on but DCSAM_WEBHOOK_SECRET is unset: Label Studio sends webhooks without "
                        "credentials, so /webhook accepts them unauthenticated (it only triggers a re-sync of the "
                        "examples from the Label Studio API; payloads are never trusted)")

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("dcsam_requests_total", "counter", "HTTP requests by endpoint and status")
        m.describe("dcsam_predictions_total", "counter", "predictions returned (one per task)")
        m.describe("dcsam_regions_total", "counter", "regions returned")
        m.describe("dcsam_task_errors_total", "counter", "tasks that got an empty prediction because of an error")
        m.describe("dcsam_predict_seconds_total", "counter", "time spent in /predict")
        m.describe("dcsam_webhook_events_total", "counter", "webhook events by action")
        m.describe("dcsam_model_loaded", "gauge", "1 once this process has loaded the model")
        m.describe("dcsam_model_loads_total", "counter", "model loads in this process (1 expected)")

    # -- Label Studio access -------------------------------------------------------------------
    def access_for(self, project_id: int | None) -> LabelStudioAccess | None:
        """The environment's LS URL + token; else what /setup passed for this project (the two never mix)."""
        if self._env_access is not None:
            return self._env_access
        if project_id is None:
            return None
        project = self.state.project(project_id)
        if not project or not project.get("hostname") or not project.get("access_token"):
            return None
        key = (project["hostname"], project["access_token"])
        with self._access_lock:
            if key not in self._setup_accesses:
                self._setup_accesses[key] = LabelStudioAccess(
                    key[0], key[1], max_download_bytes=self.settings.max_download_bytes,
                    local_files_root=self.settings.local_files_root)
            return self._setup_accesses[key]

    def label_config(self, project_id: int | None, xml: str | None) -> LabelConfig:
        if not xml and project_id is not None:
            project = self.state.project(project_id)
            xml = project and project.get("label_config")
        if not xml:
            raise LabelConfigError("no label config: send label_config, or call /setup for this project first")
        cfg = _parse_config_cached(xml)
        if project_id is not None:
            project = self.state.project(project_id)
            if not project or project.get("label_config") != xml:
                self.state.save_project(project_id, label_config=xml)
        return cfg

    # -- background jobs -------------------------------------------------------------------------
    def enqueue(self, kind: str, project_id: int | None, message: str = "") -> int:
        job_id = self.state.add_job(kind, project_id, "queued", message)
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="dcsam-jobs", daemon=True)
                self._worker.start()
        self._jobs.put((job_id, kind, project_id))
        return job_id

    def _work(self) -> None:
        while True:
            job_id, kind, project_id = self._jobs.get()
            try:
                if kind == "sync_examples":
                    cfg = self.label_config(project_id, None)
                    access = self.access_for(project_id)
                    if access is None:
                        self.state.finish_job(job_id, "skipped", "no Label Studio URL/token")
                        continue
                    pe = self.examples.ensure(project_id, cfg, access, force=True)
                    self.state.finish_job(job_id, "done", f"{len(pe.keys())} label(s) with examples")
                else:
                    self.state.finish_job(job_id, "skipped", f"unknown job kind {kind}")
            except Exception as exc:  # a job failure is logged and recorded, never fatal
                log.exception("job %s (%s, project %s) failed", job_id, kind, project_id)
                self.state.finish_job(job_id, "failed", f"{type(exc).__name__}: {exc}"[:500])
            finally:
                self._jobs.task_done()

    def wait_for_jobs(self, timeout: float = 30.0) -> bool:
        """Tests: block until the job queue is empty."""
        deadline = time.monotonic() + timeout
        while self._jobs.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._jobs.unfinished_tasks


def _json_body() -> dict:
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("empty body: a JSON object is expected")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"a JSON object is expected, got {type(body).__name__}")
    return body


def _auth_ok(settings: BackendSettings) -> bool:
    auth = request.authorization
    if not auth or auth.type != "basic":
        return False
    return hmac.compare_digest(str(auth.username or ""), settings.basic_auth_user or "") and \
        hmac.compare_digest(str(auth.password or ""), settings.basic_auth_pass or "")


def _webhook_ok(settings: BackendSettings) -> bool:
    if settings.webhook_secret:
        given = request.headers.get("X-Webhook-Secret") or request.args.get("token") or ""
        if hmac.compare_digest(given, settings.webhook_secret):
            return True
        return settings.basic_auth and _auth_ok(settings)
    return True


def create_app(settings: BackendSettings | None = None, *, segmenter_factory: SegmenterFactory | None = None,
               choice: EngineChoice | None = None) -> Flask:
    settings = settings or BackendSettings.from_env()
    backend = Backend(settings, segmenter_factory=segmenter_factory, choice=choice)
    app = Flask("dcsam-backend")
    app.config["MAX_CONTENT_LENGTH"] = 512 * 1024 * 1024
    app.extensions["dcsam_backend"] = backend
    m = backend.metrics

    @app.before_request
    def _check_auth():
        if request.endpoint == "webhook":
            if not _webhook_ok(settings):
                return jsonify({"status": 401, "detail": "webhook secret missing or wrong (X-Webhook-Secret header or ?token=)"}), 401
            return None
        if settings.basic_auth and not _auth_ok(settings):
            resp = jsonify({"status": 401, "detail": "basic auth required"})
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Basic realm="dcsam"'
            return resp
        return None

    @app.after_request
    def _count(resp: Response):
        m.inc("dcsam_requests_total", endpoint=request.endpoint or "unknown", status=str(resp.status_code))
        return resp

    @app.errorhandler(BadRequest)
    def _bad_request(exc):
        return jsonify({"status": 400, "detail": str(exc)}), 400

    @app.errorhandler(LabelConfigError)
    def _bad_config(exc):
        return jsonify({"status": 400, "detail": f"label config: {exc}"}), 400

    @app.errorhandler(413)
    def _too_large(exc):
        return jsonify({"status": 413, "detail": "request body too large"}), 413

    @app.errorhandler(404)
    def _not_found(exc):
        return jsonify({"status": 404, "detail": f"no such endpoint {request.path}"}), 404

    @app.errorhandler(405)
    def _bad_method(exc):
        return jsonify({"status": 405, "detail": f"{request.method} is not allowed on {request.path}"}), 405

    @app.errorhandler(Exception)
    def _internal(exc):
        log.exception("unhandled error on %s", request.path)
        return jsonify({"status": 500, "detail": f"{type(exc).__name__}: {exc}"}), 500

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": "DCSAMBackend", "engine": backend.choice.engine,
                        "model_version": backend.version, "model_loaded": backend.model.loaded,
                        "model_error": backend.model.load_error})

    @app.post("/setup")
    def setup():
        body = _json_body()
        project_id = parse_project_id(body.get("project"))
        schema = body.get("schema") or body.get("label_config")
        parse_label_config(schema)  # 400 when it has no image + mask control
        if project_id is not None:
            hostname = body.get("hostname")
            token = body.get("access_token")
            ok_host = isinstance(hostname, str) and hostname.startswith(("http://", "https://"))
            backend.state.save_project(
                project_id, label_config=schema,
                hostname=hostname.rstrip("/") if ok_host and token else None,
                access_token=token if ok_host and isinstance(token, str) and token else None,
                extra_params=body.get("extra_params"))
        return jsonify({"model_version": backend.version})

    @app.post("/predict")
    def predict():
        t0 = time.monotonic()
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        project_id = parse_project_id(body.get("project"))
        if project_id is None and tasks:
            project_id = parse_project_id(tasks[0].get("project"))
        cfg = backend.label_config(project_id, body.get("label_config"))
        if not tasks:
            return jsonify({"results": [], "model_version": backend.version})
        access = backend.access_for(project_id)
        context = params.get("context") if isinstance(params.get("context"), dict) else None
        if context and context.get("result"):
            results = [backend.predictor.predict_interactive(project_id, task, context, cfg, access) for task in tasks]
        else:
            results = backend.predictor.predict_tasks(project_id, tasks, cfg, access)
        m.inc("dcsam_predictions_total", len(results))
        m.inc("dcsam_regions_total", sum(len(r["result"]) for r in results))
        m.inc("dcsam_predict_seconds_total", time.monotonic() - t0)
        return jsonify({"results": results, "model_version": backend.version})

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = str(body.get("action") or "")
        m.inc("dcsam_webhook_events_total", action=action or "none")
        if action not in KNOWN_EVENTS:
            return jsonify({"status": "ignored", "detail": f"unknown or unused event {action!r}"}), 200
        project = body.get("project")
        project_id = parse_project_id(project)
        if project_id is None:
            for key in ("annotation", "task"):
                obj = body.get(key)
                if isinstance(obj, dict):
                    project_id = parse_project_id(obj.get("project"))
                if project_id is not None:
                    break
        if project_id is None:
            return jsonify({"status": "ignored", "detail": f"{action} without a project id"}), 200
        if action == "PROJECT_DELETED":
            backend.state.delete_project(project_id)
            backend.examples.forget(project_id)
            return jsonify({"status": "ok", "action": action})
        if action == "PROJECT_UPDATED":
            xml = project.get("label_config") if isinstance(project, dict) else None
            if isinstance(xml, str) and xml:
                backend.state.save_project(project_id, label_config=xml)
            backend.state.bump_examples_rev(project_id)
            return jsonify({"status": "ok", "action": action})
        if action == "START_TRAINING":
            job = backend.state.add_job("train", project_id, "skipped",
                                        "fine-tuning from Label Studio is not part of this backend yet; examples are "
                                        "refreshed from the latest annotations instead")
            backend.state.bump_examples_rev(project_id)
            backend.enqueue("sync_examples", project_id, "START_TRAINING")
            return jsonify({"status": "ok", "action": action, "job": job})
        rev = backend.state.bump_examples_rev(project_id)
        job = backend.enqueue("sync_examples", project_id, action)
        return jsonify({"status": "ok", "action": action, "examples_rev": rev, "job": job})

    @app.get("/versions")
    def versions():
        others = [v for v in backend.state.versions() if v != backend.version]
        return jsonify({"versions": [backend.version] + others, "model_version": backend.version})

    @app.get("/metrics")
    def metrics():
        m.set("dcsam_model_loaded", 1.0 if backend.model.loaded else 0.0)
        m.set("dcsam_model_loads_total", float(backend.model.loads))
        return Response(m.render(), mimetype="text/plain; version=0.0.4")

    return app
