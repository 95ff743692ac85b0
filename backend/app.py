"""The Flask app: the Label Studio ML-backend protocol as Label Studio 1.23 speaks it.

    GET  /health, GET /       instant; never waits for the model
    POST /setup               validates the label config, returns model_version (no model load)
    POST /predict             one prediction per task, in order; or interactive refinement (params.context)
    POST /webhook             acknowledged at once; examples are re-synced in the background;
                              START_TRAINING (and every DCSAM_TRAIN_EVERY annotations) queues a fine-tune
    GET  /versions            {"versions": [...]}; the current one first (?project=ID: that project's)
    POST /versions/<v>/activate   serve an earlier (or the base) version for its project: rollback
    GET  /jobs, GET /jobs/<id>    background jobs: state, progress, figures
    POST /jobs/<id>/cancel        cancel a queued or running job
    POST /jobs/preannotate        {"project": ID}: pre-annotate every task lacking a prediction of the version
    POST /jobs/train              {"project": ID}: fine-tune now (as START_TRAINING)
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
from .jobs import FINAL, JobRunner, JobStore
from .labelconfig import LabelConfig, LabelConfigError, parse_label_config
from .media import LabelStudioAccess
from .metrics import Metrics
from .model import BASE_TAG, ModelHolder, SegmenterFactory
from .preannotate import Ledger, run_preannotate
from .predictor import Predictor
from .settings import BackendSettings
from .state import State, parse_project_id
from .training import run_train
from .versions import VersionError, VersionRegistry
from .video import VideoPredictor

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
        self.versions = VersionRegistry(self.state, settings.model_dir, self.version, self.choice.engine)
        self.ledger = Ledger(self.state)
        self.job_store = JobStore(self.state)
        self.runner = JobRunner(self.job_store, {"preannotate": lambda ctx: run_preannotate(self, ctx),
                                                 "train": lambda ctx: run_train(self, ctx)})
        self.hooks: dict = {}  # test hooks (e.g. "after_import": simulate a crash)
        self.metrics = Metrics()
        self._describe_metrics()
        self.examples = ExampleManager(self.state, self.model, k=settings.examples_per_label,
                                       recheck_s=settings.examples_recheck_s, max_pixels=settings.max_image_pixels)
        self.predictor = Predictor(
            model=self.model, examples=self.examples, version=self.version, batch_size=settings.batch_size,
            min_score=settings.min_score, max_pixels=settings.max_image_pixels,
            max_download_bytes=settings.max_download_bytes, local_files_root=settings.local_files_root,
            on_task_error=lambda kind: self.metrics.inc("dcsam_task_errors_total", kind=kind),
            version_for=self.version_for, prepare=self.prepare,
            video=VideoPredictor(model=self.model, settings=settings, prepare=self.prepare, count=self.metrics.inc))
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
        m.describe("dcsam_preannotate_tasks_total", "counter", "tasks handled by pre-annotation jobs, by outcome")
        m.describe("dcsam_preannotate_tasks_per_second", "gauge", "throughput of the latest pre-annotation job run")
        m.describe("dcsam_preannotate_import_retries_total", "counter", "retried predictions imports")
        m.describe("dcsam_jobs", "gauge", "background jobs by kind and state (from the job table)")
        m.describe("dcsam_job_progress", "gauge", "progress (0..1) of the queued and running jobs")
        m.describe("dcsam_video_propagations_total", "counter", "video propagations run (kind: sequence or video)")
        m.describe("dcsam_video_frames_total", "counter", "video frames segmented by propagation")

    # -- model versions --------------------------------------------------------------------------
    def version_for(self, project_id: int | None) -> str:
        """The project's model_version: its active fine-tuned version, else the base one."""
        return self.versions.active(project_id)

    def prepare(self, project_id: int | None) -> None:
        """Put the project's weights into the engine (call with the inference lock held)."""
        version = self.version_for(project_id)
        tag = BASE_TAG if version == self.version else version
        self.model.use_weights(tag, lambda: self.versions.trainable_state(version))

    # -- jobs ------------------------------------------------------------------------------------
    def submit_preannotate(self, project_id: int, *, reason: str = "", params: dict | None = None) -> int:
        """Queue a pre-annotation of the project, unless one is queued already (its id is returned)."""
        existing = self.job_store.open_job("preannotate", project_id)
        if existing is not None and existing["status"] == "queued":
            return existing["id"]
        if existing is not None and existing["params"].get("version") == self.version_for(project_id):
            return existing["id"]  # running for the current version: it covers every task
        job = self.job_store.add("preannotate", project_id, params or {}, message=reason)
        self.runner.start()
        self.runner.wake()
        return job

    def submit_train(self, project_id: int, *, reason: str = "", delay_s: float = 0.0) -> int:
        """Queue a fine-tune; a queued one is reused (and postponed by ``delay_s``: debouncing)."""
        existing = self.job_store.open_job("train", project_id)
        run_after = time.time() + delay_s
        if existing is not None and existing["status"] == "queued":
            self.job_store.postpone(existing["id"], run_after)
            return existing["id"]
        job = self.job_store.add("train", project_id, {}, run_after=run_after, message=reason)
        self.runner.start()
        self.runner.wake()
        return job

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
    def _start_jobs():
        backend.runner.start()  # idempotent; here so that it runs in the serving process, after any fork

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
        return jsonify({"model_version": backend.version_for(project_id)})

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
            return jsonify({"results": [], "model_version": backend.version_for(project_id)})
        access = backend.access_for(project_id)
        context = params.get("context") if isinstance(params.get("context"), dict) else None
        if context and context.get("result"):
            results = [backend.predictor.predict_interactive(project_id, task, context, cfg, access) for task in tasks]
        else:
            results = backend.predictor.predict_tasks(project_id, tasks, cfg, access)
        m.inc("dcsam_predictions_total", len(results))
        m.inc("dcsam_regions_total", sum(len(r["result"]) for r in results))
        m.inc("dcsam_predict_seconds_total", time.monotonic() - t0)
        return jsonify({"results": results, "model_version": backend.version_for(project_id)})

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
            backend.state.bump_examples_rev(project_id)
            job = backend.submit_train(project_id, reason="START_TRAINING")
            return jsonify({"status": "ok", "action": action, "job": job})
        rev = backend.state.bump_examples_rev(project_id)
        job = backend.enqueue("sync_examples", project_id, action)
        out = {"status": "ok", "action": action, "examples_rev": rev, "job": job}
        if settings.train_every and action in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                                               "ANNOTATIONS_UPDATED"):
            annotation = body.get("annotation")
            if not (isinstance(annotation, dict) and annotation.get("was_cancelled")):
                n = backend.state.bump_annotation_counter(project_id)
                if n >= settings.train_every:
                    out["train_job"] = backend.submit_train(
                        project_id, reason=f"{n} new accepted annotation(s)", delay_s=settings.train_debounce_s)
        return jsonify(out)

    def _project_arg(body: dict | None = None, required: bool = True) -> int | None:
        raw = (body or {}).get("project", request.args.get("project"))
        if raw is None:
            if required:
                raise BadRequest("say which project: {\"project\": ID} (or ?project=ID)")
            return None
        project_id = parse_project_id(raw)
        if project_id is None or project_id == 0:
            raise BadRequest(f"project must be a positive integer id, got {raw!r}")
        return project_id

    @app.get("/versions")
    def versions():
        project_id = _project_arg(required=False)
        if project_id is not None:
            current = backend.version_for(project_id)
            mine = [v["version"] for v in backend.versions.project_versions(project_id)]
            rest = [v for v in mine + [backend.version] if v != current]
            return jsonify({"versions": [current] + rest, "model_version": current, "project": project_id,
                            "details": backend.versions.project_versions(project_id)})
        others = [v for v in backend.versions.all_versions() + backend.state.versions() if v != backend.version]
        return jsonify({"versions": [backend.version] + list(dict.fromkeys(others)), "model_version": backend.version})

    @app.post("/versions/<version>/activate")
    def activate_version(version: str):
        body = _json_body() if request.get_data(cache=True) else {}
        project_id = _project_arg(body, required=False)
        previous = backend.version_for(project_id) if project_id is not None else None
        try:
            project_id, version = backend.versions.activate(project_id, version)
        except VersionError as exc:
            raise BadRequest(str(exc)) from None
        previous = previous or backend.version_for(project_id)
        with backend.model.inference_lock:
            backend.model.forget_weights()
        return jsonify({"project": project_id, "model_version": version, "previous": previous})

    @app.get("/jobs")
    def list_jobs():
        project_id = _project_arg(required=False)
        status = request.args.get("status")
        kind = request.args.get("kind")
        try:
            limit = int(request.args.get("limit", 50))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        return jsonify({"jobs": backend.job_store.list(limit=limit, project_id=project_id, status=status, kind=kind)})

    @app.get("/jobs/<int:job_id>")
    def get_job(job_id: int):
        job = backend.job_store.get(job_id)
        if job is None:
            return jsonify({"status": 404, "detail": f"no job {job_id}"}), 404
        return jsonify(job)

    @app.post("/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int):
        job = backend.job_store.get(job_id)
        if job is None:
            return jsonify({"status": 404, "detail": f"no job {job_id}"}), 404
        if job["status"] in FINAL:
            return jsonify({**job, "detail": f"job {job_id} is already {job['status']}"}), 409
        return jsonify(backend.job_store.request_cancel(job_id))

    @app.post("/jobs/preannotate")
    def start_preannotate():
        body = _json_body()
        project_id = _project_arg(body)
        params = {}
        if body.get("page_size") is not None:
            size = body["page_size"]
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
                raise BadRequest("page_size must be an integer between 1 and 1000")
            params["page_size"] = size
        job = backend.submit_preannotate(project_id, reason="POST /jobs/preannotate", params=params)
        return jsonify(backend.job_store.get(job)), 202

    @app.post("/jobs/train")
    def start_train():
        body = _json_body()
        project_id = _project_arg(body)
        job = backend.submit_train(project_id, reason="POST /jobs/train")
        return jsonify(backend.job_store.get(job)), 202

    @app.get("/metrics")
    def metrics():
        m.set("dcsam_model_loaded", 1.0 if backend.model.loaded else 0.0)
        m.set("dcsam_model_loads_total", float(backend.model.loads))
        m.clear("dcsam_job_progress")
        m.clear("dcsam_jobs")
        for job in backend.job_store.list(limit=1000, status="running") + backend.job_store.list(limit=1000,
                                                                                                  status="queued"):
            m.set("dcsam_job_progress", job["progress_done"] / max(1, job["progress_total"] or 0), job=str(job["id"]),
                  kind=job["kind"], project=str(job["project_id"]), state=job["status"])
        counts = {(r[0], r[1]): r[2] for r in backend.state._query(
            "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")}
        for (kind, status), n in counts.items():
            m.set("dcsam_jobs", float(n), kind=kind, state=status)
        return Response(m.render(), mimetype="text/plain; version=0.0.4")

    return app
