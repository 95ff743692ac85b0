"""The Flask app: the Label Studio ML-backend protocol as Label Studio 1.23 speaks it.

    GET  /health, GET /       instant; never waits for the model
    POST /setup               validates the label config, returns model_version (no model load)
    POST /predict             one prediction per task, in order; or interactive refinement (params.context)
    POST /webhook             acknowledged at once; examples are re-synced in the background;
                              START_TRAINING (and every DCSAM_TRAIN_EVERY annotations) queues a fine-tune;
                              START_TRAINING with too few annotations is refused at once with a 422
    GET  /versions            {"versions": [...]}; the current one first (?project=ID: that project's)
    POST /versions/<v>/activate   serve an earlier (or the base) version for its project: rollback
    GET  /jobs, GET /jobs/<id>    background jobs: state, progress, figures
    POST /jobs/<id>/cancel        cancel a queued or running job
    POST /jobs/preannotate        {"project": ID}: pre-annotate every task lacking a prediction of the version
    POST /jobs/train              {"project": ID}: fine-tune now (as START_TRAINING)
    GET  /metrics             Prometheus text
    GET  /status              a small HTML status page: projects, examples, jobs, versions (/status.json: its data)
    GET  /openapi.json        the OpenAPI 3.1 description of these routes

Every request is validated against its schema (:mod:`backend.labelstudio.schemas`): invalid input is a
400 with a short message; any other failure is a 500 with an error id, its traceback in the log only.

Build it with :func:`create_app`; ``dcsam serve`` runs it under gunicorn (see :mod:`backend.serve`).
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..engine_select import EngineChoice
from ..service import Service, VersionError
from ..services.predictor import PromptError
from ..services.runtime import SegmenterFactory
from ..settings import BackendSettings
from ..store import FINAL
from .annotations import is_skipped
from .labelconfig import LabelConfigError, parse_label_config
from .schemas import (
    JobsQuery,
    M,
    PreannotateBody,
    PredictBody,
    ProjectBody,
    RequestError,
    SetupBody,
    StatusQuery,
    WebhookBody,
    openapi_document,
    parse_id,
    parse_json_body,
    parse_version_name,
    validate,
)
from .status_page import CSP, render_status

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


_NOT_IN_REASON = re.compile(r"[^\x20-\x7e]+")  # an HTTP reason phrase: printable ASCII only


class NotFoundError(Exception):
    """A thing named in the path (a job) does not exist: answered 404 with this message."""


def _refused(out: dict) -> Response:
    """A refused START_TRAINING: 422, its reason in the status line's reason phrase too.

    Label Studio 1.23 keeps none of the body: it stores requests' error string ("422 Client Error: <reason
    phrase> for url: ...") as the model's ``error_message`` and shows the model card as "Error"."""
    resp = jsonify(out)
    reason = _NOT_IN_REASON.sub("?", str(out.get("detail") or "refused"))[:400]
    resp.status = f"422 {reason}"
    return resp


def _body(model: type[M]) -> tuple[M, dict]:
    """The JSON body validated as ``model``, and as parsed (what the service gets: Label Studio's own keys)."""
    raw = parse_json_body(request.get_data(cache=True))
    return validate(model, raw), raw


def _same(given: str, expected: str) -> bool:
    # bytes: compare_digest refuses str with non-ASCII characters, which any client can send
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _auth_ok(settings: BackendSettings) -> bool:
    auth = request.authorization
    if not auth or auth.type != "basic":
        return False
    user_ok = _same(str(auth.username or ""), settings.basic_auth_user or "")
    return _same(str(auth.password or ""), settings.basic_auth_pass or "") and user_ok


def _webhook_ok(settings: BackendSettings, *, verified: bool = False) -> bool:
    """May this request reach /webhook; with ``verified``: did it prove its sender (the webhook secret, or
    valid basic auth credentials)? Only a verified event's payload is believed (see Service.webhook)."""
    if settings.webhook_secret:
        given = request.headers.get("X-Webhook-Secret") or request.args.get("token") or ""
        if _same(given, settings.webhook_secret):
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

    @app.errorhandler(RequestError)
    @app.errorhandler(PromptError)
    def _bad_request(exc):
        return jsonify({"status": 400, "detail": str(exc)}), 400

    @app.errorhandler(LabelConfigError)
    def _bad_config(exc):
        return jsonify({"status": 400, "detail": f"label config: {exc}"}), 400

    @app.errorhandler(413)
    def _too_large(exc):
        return jsonify({"status": 413, "detail": "request body too large"}), 413

    @app.errorhandler(NotFoundError)
    def _no_such(exc):
        return jsonify({"status": 404, "detail": str(exc)}), 404

    @app.errorhandler(404)
    def _not_found(exc):
        return jsonify({"status": 404, "detail": f"no such endpoint {request.path}"}), 404

    @app.errorhandler(405)
    def _bad_method(exc):
        return jsonify({"status": 405, "detail": f"{request.method} is not allowed on {request.path}"}), 405

    @app.errorhandler(Exception)
    def _internal(exc):
        if isinstance(exc, HTTPException):  # werkzeug's own refusals (bad headers, ...): their status, as JSON
            code = exc.code or 500
            return jsonify({"status": code, "detail": exc.name}), code
        error_id = uuid.uuid4().hex[:12]
        log.exception("error %s: unhandled on %s %s", error_id, request.method, request.path)
        return jsonify({"status": 500, "detail": "internal error", "error_id": error_id}), 500

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

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document(service.version))

    @app.post("/setup")
    def setup():
        body, _ = _body(SetupBody)
        schema = body.schema_ or body.label_config
        parse_label_config(schema)  # 400 when it has no image + mask control
        if body.project is not None:
            hostname, token = body.hostname, body.access_token
            ok_host = hostname is not None and hostname.startswith(("http://", "https://")) and bool(token)
            service.setup_project(
                body.project,
                schema,
                hostname=hostname.rstrip("/") if ok_host and hostname else None,
                access_token=token if ok_host else None,
                extra_params=body.extra_params,
            )
        return jsonify({"model_version": service.version_for(body.project)})

    @app.post("/predict")
    def predict():
        body, raw = _body(PredictBody)
        tasks = raw["tasks"]
        project_id = body.project
        if project_id is None and body.tasks:
            project_id = body.tasks[0].project
        cfg = service.label_config(project_id, body.label_config)
        if not tasks:
            return jsonify({"results": [], "model_version": service.version_for(project_id)})
        context = raw["params"]["context"] if body.params is not None and body.params.context is not None else None
        results = service.predict(project_id, tasks, cfg, context)
        return jsonify({"results": results, "model_version": service.version_for(project_id)})

    @app.post("/webhook")
    def webhook():
        body, raw = _body(WebhookBody)
        action = body.action or ""
        # a label per known event only: any client may send any action name
        m.inc("dcsam_webhook_events_total", action=action if action in KNOWN_EVENTS else "other")
        if action not in KNOWN_EVENTS:
            return jsonify({"status": "ignored", "detail": f"unknown or unused event {action!r}"}), 200
        project_id = body.project_id()
        if project_id is None:
            return jsonify({"status": "ignored", "detail": f"{action} without a project id"}), 200
        out = service.webhook(
            action,
            project_id,
            verified=_webhook_ok(settings, verified=True),
            label_config=body.project.label_config if body.project else None,
            accepted=action in ACCEPTING_EVENTS and not is_skipped(raw.get("annotation")),
        )
        if out.get("status") == "refused":
            return _refused(out)
        return jsonify(out)

    def _project_arg(body: ProjectBody | None = None, required: bool = True) -> int | None:
        """The body's project, else ?project=ID."""
        project_id = body.project if body is not None else None
        if project_id is None:
            project_id = validate(ProjectBody, request.args.to_dict()).project
        if project_id is None and required:
            raise RequestError('say which project: {"project": ID} (or ?project=ID)')
        return project_id

    @app.get("/versions")
    def versions():
        return jsonify(service.list_versions(_project_arg(required=False)))

    @app.post("/versions/<version>/activate")
    def activate_version(version: str):
        version = parse_version_name(version)
        body = _body(ProjectBody)[0] if request.get_data(cache=True) else None
        try:
            return jsonify(service.activate_version(_project_arg(body, required=False), version))
        except VersionError as exc:
            raise RequestError(str(exc)) from None

    @app.get("/jobs")
    def list_jobs():
        q = validate(JobsQuery, request.args.to_dict())
        return jsonify(
            {"jobs": service.store.jobs.list(limit=q.limit, project_id=q.project, status=q.status, kind=q.kind)}
        )

    def _job(raw_id: str) -> dict:
        job_id = parse_id(raw_id, "a job id")
        job = service.store.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        return job

    @app.get("/jobs/<job_id>")
    def get_job(job_id: str):
        return jsonify(_job(job_id))

    @app.post("/jobs/<job_id>/cancel")
    def cancel_job(job_id: str):
        job = _job(job_id)
        if job["status"] in FINAL:
            return jsonify({**job, "detail": f"job {job['id']} is already {job['status']}"}), 409
        return jsonify(service.cancel_job(job["id"]))

    @app.post("/jobs/preannotate")
    def start_preannotate():
        body, _ = _body(PreannotateBody)
        project_id = _project_arg(body)
        params: dict = {"page_size": body.page_size} if body.page_size is not None else {}
        if body.ray is not None and body.ray is not False:
            params["ray"] = body.ray  # the job refuses a cluster other than DCSAM_RAY_ADDRESS
        job = service.submit_preannotate(project_id, reason="POST /jobs/preannotate", params=params)
        return jsonify(service.store.jobs.get(job)), 202

    @app.post("/jobs/train")
    def start_train():
        project_id = _project_arg(_body(ProjectBody)[0])
        job = service.submit_train(project_id, reason="POST /jobs/train")
        return jsonify(service.store.jobs.get(job)), 202

    @app.get("/metrics")
    def metrics():
        return Response(service.render_metrics(), mimetype="text/plain; version=0.0.4")

    @app.get("/status")
    def status_page():
        q = validate(StatusQuery, request.args.to_dict())
        resp = Response(render_status(service.status.snapshot(jobs_limit=q.jobs), refresh_s=q.refresh))
        resp.mimetype = "text/html"
        # the page is data from Label Studio and its users: no script may run, nothing is loaded from elsewhere
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/status.json")
    def status_data():
        q = validate(StatusQuery, request.args.to_dict())
        resp = jsonify(service.status.snapshot(jobs_limit=q.jobs))
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return app
