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

import hmac
import json
import logging

from flask import Flask, Response, jsonify, request

from ..engine_select import EngineChoice
from ..service import Service, VersionError
from ..services.runtime import SegmenterFactory
from ..settings import BackendSettings
from ..store import FINAL
from .annotations import is_skipped, parse_project_id
from .labelconfig import LabelConfigError, parse_label_config

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = {
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_UPDATED",
    "ANNOTATION_DELETED",
    "ANNOTATIONS_DELETED",
    "TASKS_DELETED",
}
ACCEPTING_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_UPDATED")
KNOWN_EVENTS = ANNOTATION_EVENTS | {"PROJECT_UPDATED", "PROJECT_DELETED", "START_TRAINING"}


class BadRequest(Exception):
    pass


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
    return hmac.compare_digest(str(auth.username or ""), settings.basic_auth_user or "") and hmac.compare_digest(
        str(auth.password or ""), settings.basic_auth_pass or ""
    )


def _webhook_ok(settings: BackendSettings, *, verified: bool = False) -> bool:
    """May this request reach /webhook; with ``verified``: did it prove its sender (the webhook secret, or
    valid basic auth credentials)? Only a verified event's payload is believed (see Service.webhook)."""
    if settings.webhook_secret:
        given = request.headers.get("X-Webhook-Secret") or request.args.get("token") or ""
        if hmac.compare_digest(given, settings.webhook_secret):
            return True
    if settings.basic_auth and _auth_ok(settings):
        return True
    return not verified and not settings.webhook_secret


def create_app(
    settings: BackendSettings | None = None,
    *,
    segmenter_factory: SegmenterFactory | None = None,
    choice: EngineChoice | None = None,
) -> Flask:
    settings = settings or BackendSettings.from_env()
    service = Service(settings, segmenter_factory=segmenter_factory, choice=choice)
    app = Flask("dcsam-backend")
    app.config["MAX_CONTENT_LENGTH"] = 512 * 1024 * 1024
    app.extensions["dcsam_service"] = service
    m = service.metrics

    @app.before_request
    def _start_jobs():
        service.runner.start()  # idempotent; here so that it runs in the serving process, after any fork

    @app.before_request
    def _check_auth():
        if request.endpoint == "webhook":
            if not _webhook_ok(settings):
                return jsonify(
                    {"status": 401, "detail": "webhook secret missing or wrong (X-Webhook-Secret header or ?token=)"}
                ), 401
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
        return jsonify(
            {
                "status": "UP",
                "model_class": "DCSAMBackend",
                "engine": service.choice.engine,
                "model_version": service.version,
                "model_loaded": service.runtime.loaded,
                "model_error": service.runtime.load_error,
            }
        )

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
            service.setup_project(
                project_id,
                schema,
                hostname=hostname.rstrip("/") if ok_host and token else None,
                access_token=token if ok_host and isinstance(token, str) and token else None,
                extra_params=body.get("extra_params"),
            )
        return jsonify({"model_version": service.version_for(project_id)})

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        project_id = parse_project_id(body.get("project"))
        if project_id is None and tasks:
            project_id = parse_project_id(tasks[0].get("project"))
        cfg = service.label_config(project_id, body.get("label_config"))
        if not tasks:
            return jsonify({"results": [], "model_version": service.version_for(project_id)})
        context = params.get("context") if isinstance(params.get("context"), dict) else None
        results = service.predict(project_id, tasks, cfg, context)
        return jsonify({"results": results, "model_version": service.version_for(project_id)})

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        action = str(body.get("action") or "")
        m.inc("dcsam_webhook_events_total", action=action if action in KNOWN_EVENTS else "other")  # bounded labels
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
        xml = project.get("label_config") if isinstance(project, dict) else None
        out = service.webhook(
            action,
            project_id,
            verified=_webhook_ok(settings, verified=True),
            label_config=xml,
            accepted=action in ACCEPTING_EVENTS and not is_skipped(body.get("annotation")),
        )
        return jsonify(out)

    def _project_arg(body: dict | None = None, required: bool = True) -> int | None:
        raw = (body or {}).get("project", request.args.get("project"))
        if raw is None:
            if required:
                raise BadRequest('say which project: {"project": ID} (or ?project=ID)')
            return None
        project_id = parse_project_id(raw)
        if project_id is None or project_id == 0:
            raise BadRequest(f"project must be a positive integer id, got {raw!r}")
        return project_id

    @app.get("/versions")
    def versions():
        return jsonify(service.list_versions(_project_arg(required=False)))

    @app.post("/versions/<version>/activate")
    def activate_version(version: str):
        body = _json_body() if request.get_data(cache=True) else {}
        try:
            return jsonify(service.activate_version(_project_arg(body, required=False), version))
        except VersionError as exc:
            raise BadRequest(str(exc)) from None

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
        return jsonify({"jobs": service.store.jobs.list(limit=limit, project_id=project_id, status=status, kind=kind)})

    @app.get("/jobs/<int:job_id>")
    def get_job(job_id: int):
        job = service.store.jobs.get(job_id)
        if job is None:
            return jsonify({"status": 404, "detail": f"no job {job_id}"}), 404
        return jsonify(job)

    @app.post("/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int):
        job = service.store.jobs.get(job_id)
        if job is None:
            return jsonify({"status": 404, "detail": f"no job {job_id}"}), 404
        if job["status"] in FINAL:
            return jsonify({**job, "detail": f"job {job_id} is already {job['status']}"}), 409
        return jsonify(service.cancel_job(job_id))

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
        job = service.submit_preannotate(project_id, reason="POST /jobs/preannotate", params=params)
        return jsonify(service.store.jobs.get(job)), 202

    @app.post("/jobs/train")
    def start_train():
        body = _json_body()
        project_id = _project_arg(body)
        job = service.submit_train(project_id, reason="POST /jobs/train")
        return jsonify(service.store.jobs.get(job)), 202

    @app.get("/metrics")
    def metrics():
        return Response(service.render_metrics(), mimetype="text/plain; version=0.0.4")

    return app
