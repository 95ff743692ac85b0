"""The backend's service layer: everything one process holds, behind one object with no web code in it.

:class:`Service` builds the collaborators once (state, model runtime, examples, versions, jobs,
predictor, video) and offers the operations the platform adapters call: set up a project, predict,
react to annotation events, queue and inspect jobs, list and activate versions. Job handlers get a
:class:`backend.services.deps.JobDeps`, never the service itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from .engine_select import EngineChoice, choose_engine, model_version, segmenter_config
from .labelstudio.labelconfig import LabelConfig, LabelConfigError
from .labelstudio.media import LabelStudioAccess, LabelStudioError
from .labelstudio.projects import LabelStudioProjects
from .metrics import Metrics
from .services.deps import JobDeps
from .services.examples import ExampleManager
from .services.jobs import JobError, JobKind, JobRunner
from .services.preannotate import run_preannotate
from .services.predictor import Predictor, answer
from .services.readiness import training_readiness
from .services.runtime import BASE_TAG, ModelRuntime, SegmenterFactory
from .services.status import StatusReader
from .services.sync import run_sync
from .services.training import run_train
from .services.versions import VersionError, VersionRegistry
from .services.video import PENDING, VideoPredictor
from .settings import BackendSettings
from .store import Store

log = logging.getLogger(__name__)

CHOICE_ENV = "DCSAM_BACKEND_ENGINE_CHOICE"  # set by `dcsam serve` after resolving DCSAM_ENGINE=auto once

# What Label Studio says about a project when asked (Service.reread_project).
FOUND, GONE = "found", "gone"
_NOT_FOUND = re.compile(r": HTTP 404\b")  # LabelStudioAccess.api_get's message for a 404 answer

METRICS = {
    "dcsam_requests_total": ("counter", "HTTP requests by endpoint and status"),
    "dcsam_predictions_total": ("counter", "predictions returned (one per task)"),
    "dcsam_regions_total": ("counter", "regions returned"),
    "dcsam_task_errors_total": ("counter", "tasks left without a prediction because of an error"),
    "dcsam_predict_seconds_total": ("counter", "time spent in /predict"),
    "dcsam_webhook_events_total": ("counter", "webhook events by action"),
    "dcsam_model_loaded": ("gauge", "worker processes that hold the loaded model"),
    "dcsam_model_loads_total": ("counter", "model loads (one per worker process expected)"),
    "dcsam_preannotate_tasks_total": ("counter", "tasks handled by pre-annotation jobs, by outcome"),
    "dcsam_preannotate_tasks_per_second": ("gauge", "throughput of the latest pre-annotation job run"),
    "dcsam_preannotate_import_retries_total": ("counter", "retried predictions imports"),
    "dcsam_jobs": ("gauge", "background jobs by kind and state (from the job table)"),
    "dcsam_job_progress": ("gauge", "progress (0..1) of the queued and running jobs"),
    "dcsam_video_propagations_total": ("counter", "video propagations run (kind: sequence or video)"),
    "dcsam_video_frames_total": ("counter", "video frames segmented by propagation"),
}


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


class Service:
    """One process's backend: settings, state, the lazily loaded model, examples, versions, jobs, metrics."""

    def __init__(
        self,
        settings: BackendSettings,
        *,
        segmenter_factory: SegmenterFactory | None = None,
        choice: EngineChoice | None = None,
    ):
        self.settings = settings
        self.choice = choice or _choice_from_env() or choose_engine(settings, try_download=False)
        self.config = segmenter_config(settings, self.choice)
        self.version = model_version(settings, self.choice)
        # SQLite under MODEL_DIR, or PostgreSQL shared by replicas (DCSAM_DATABASE_URL); "" = SQLite, never the env
        self.store = Store(settings.model_dir, settings.database_url or "", job_lease_s=settings.job_lease_s)
        self.store.jobs.keep_per_project = settings.jobs_keep_per_project
        self.store.jobs.keep_days = settings.jobs_keep_days
        self.store.versions.record_base(
            self.version, self.choice.engine, {"reason": self.choice.reason, "config": self.config.to_dict()}
        )
        self.metrics = Metrics()
        for name, (kind, text) in METRICS.items():
            self.metrics.describe(name, kind, text)
        self.metrics.set("dcsam_model_loaded", 0.0)  # per worker; summed over live workers
        self.metrics.inc("dcsam_model_loads_total", 0.0)  # the series exists before the first load
        self.runtime = ModelRuntime(self.config, segmenter_factory, on_load=self._count_model_load)
        self.versions = VersionRegistry(self.store.versions, settings.model_dir, self.version, self.choice.engine)
        if self.store.db.was_empty:
            self.versions.rebuild_from_checkpoints()
        self.label_studio = LabelStudioProjects(self.store.projects, settings)
        self.examples = ExampleManager(
            self.store.projects,
            self.store.examples,
            self.runtime,
            k=settings.examples_per_label,
            recheck_s=settings.examples_recheck_s,
            max_pixels=settings.max_image_pixels,
            max_projects=settings.max_projects_in_memory,
            thumbs_dir=settings.model_dir / "thumbnails",  # small example thumbnails for the status page
        )
        self.predictor = Predictor(
            settings,
            self.runtime,
            self.examples,
            version_for=self.version_for,
            prepare=self.prepare,
            on_task_error=lambda kind: self.metrics.inc("dcsam_task_errors_total", kind=kind),
            video=VideoPredictor(model=self.runtime, settings=settings, prepare=self.prepare, count=self.metrics.inc),
        )
        self.deps = JobDeps(
            settings=settings,
            runtime=self.runtime,
            versions=self.versions,
            examples=self.examples,
            predictor=self.predictor,
            ledger=self.store.ledger,
            projects=self.store.projects,
            label_studio=self.label_studio,
            metrics=self.metrics,
            prepare=self.prepare,
            submit_preannotate=self.submit_preannotate_after_promotion,  # the one job handlers queue
        )
        deps = self.deps
        self.runner = JobRunner(
            self.store.jobs,
            {
                "preannotate": JobKind(lambda ctx: run_preannotate(deps, ctx), lane="model", resumable=True),
                "train": JobKind(lambda ctx: run_train(deps, ctx), lane="model"),
                "sync_examples": JobKind(lambda ctx: run_sync(deps, ctx), lane="sync", resumable=True),
            },
        )
        self.status = StatusReader(
            self.store,
            self.examples,
            self.versions,
            engine=self.choice.engine,
            engine_reason=self.choice.reason,
            base_version=self.version,
        )
        log.info(
            "dcsam backend: engine %s (%s), model_version %s, state %s",
            self.choice.engine,
            self.choice.reason,
            self.version,
            self.store.path,
        )
        if settings.basic_auth and not settings.webhook_secret:
            log.warning(
                "basic auth is on but DCSAM_WEBHOOK_SECRET is unset: Label Studio sends webhooks without "
                "credentials, so /webhook accepts them unauthenticated. Nothing of such an event's payload is "
                "stored: it only makes the backend re-read a project's label config or annotations from the "
                "Label Studio API, or queue a fine-tune (which reads them too), for projects set up here or that "
                "Label Studio lists; a project is forgotten only once Label Studio answers 404 for it. Set "
                "DCSAM_WEBHOOK_SECRET (sent as X-Webhook-Secret or ?token=) to have payloads believed"
            )

    def _count_model_load(self) -> None:
        self.metrics.set("dcsam_model_loaded", 1.0)
        self.metrics.inc("dcsam_model_loads_total")

    # -- model versions --------------------------------------------------------------------------
    def version_for(self, project_id: int | None) -> str:
        """The project's model_version: its active fine-tuned version, else the base one."""
        return self.versions.active(project_id)

    def prepare(self, project_id: int | None) -> str:
        """Put the project's weights into the engine (call with the inference lock held); returns their version,
        the one to label predictions with (a promotion may have landed since the request read its version)."""
        version = self.version_for(project_id)
        tag = BASE_TAG if version == self.version else version
        self.runtime.use_weights(tag, lambda: self.versions.trainable_state(version))
        return version

    def list_versions(self, project_id: int | None) -> dict:
        """The current version first, then the others (a project's own, or every one this backend served)."""
        if project_id is not None:
            current = self.version_for(project_id)
            details = self.versions.project_versions(project_id)
            rest = [v for v in [d["version"] for d in details] + [self.version] if v != current]
            return {"versions": [current, *rest], "model_version": current, "project": project_id, "details": details}
        others = [v for v in self.versions.all_versions() + self.store.versions.base_versions() if v != self.version]
        return {"versions": [self.version, *dict.fromkeys(others)], "model_version": self.version}

    def activate_version(self, project_id: int | None, version: str) -> dict:
        """Serve ``version`` for its project (rollback); raises VersionError."""
        previous = self.version_for(project_id) if project_id is not None else None
        project_id, version = self.versions.activate(project_id, version)
        previous = previous or self.version_for(project_id)
        with self.runtime.inference_lock:
            self.runtime.forget_weights()
        return {"project": project_id, "model_version": version, "previous": previous}

    # -- projects and predictions ------------------------------------------------------------------
    def access_for(self, project_id: int | None) -> LabelStudioAccess | None:
        return self.label_studio.access_for(project_id)

    def label_config(self, project_id: int | None, xml: str | None) -> LabelConfig:
        return self.label_studio.label_config(project_id, xml)

    def setup_project(
        self, project_id: int, label_config: str, hostname: str | None, access_token: str | None, extra_params: object
    ) -> None:
        self.store.projects.save(
            project_id,
            label_config=label_config,
            hostname=hostname,
            access_token=access_token,
            extra_params=extra_params,
        )

    def predict(
        self, project_id: int | None, tasks: list[dict], cfg: LabelConfig, context: dict | None
    ) -> list[dict | list]:
        """One element per task, in order: interactive refinement when ``context`` has a result, else in-context.
        A task that could not be predicted gets ``[]``, no prediction, so Label Studio asks again later
        (see :func:`backend.services.predictor.answer`)."""
        t0 = time.monotonic()
        access = self.access_for(project_id)
        why: dict[str, int] = {}
        if context and context.get("result"):
            # shown to the person, never stored by Label Studio: an empty answer is fine here
            results: list[dict | list] = [
                self.predictor.predict_interactive(project_id, task, context, cfg, access) for task in tasks
            ]
        else:
            outcomes = self.predictor.predict_outcomes(
                project_id,
                tasks,
                cfg,
                access,
                video_wait_s=self.settings.video_task_wait_s,
                sequence_wait_s=self.settings.video_wait_s,
            )
            results = [answer(o) for o in outcomes]
            for o in outcomes:
                if o.error is not None:
                    # the reasons that leave a task without a prediction (details are logged per task)
                    reason = {PENDING: "track pending", "no examples": "no examples"}.get(o.error, "failed")
                    why[reason] = why.get(reason, 0) + 1
        predictions = [r for r in results if isinstance(r, dict)]
        regions = sum(len(r["result"]) for r in predictions)
        seconds = time.monotonic() - t0
        self.metrics.inc("dcsam_predictions_total", len(predictions))
        self.metrics.inc("dcsam_regions_total", regions)
        self.metrics.inc("dcsam_predict_seconds_total", seconds)
        log.info(
            "/predict project %s: %d task(s), %d prediction(s), %d region(s)%s in %.2f s%s",
            project_id,
            len(tasks),
            len(predictions),
            regions,
            f", {len(tasks) - len(predictions)} without a prediction ({why})" if why else "",
            seconds,
            " (interactive)" if context and context.get("result") else "",
        )
        return results

    # -- webhook events ------------------------------------------------------------------------------
    def forget_project(self, project_id: int) -> None:
        self.store.projects.delete(project_id)
        self.examples.forget(project_id)

    def knows_project(self, project_id: int) -> bool:
        """Set up here: a label config came through /setup, /predict or from Label Studio."""
        project = self.store.projects.get(project_id)
        return bool(project and project.get("label_config"))

    def reread_project(self, project_id: int) -> tuple[str, str]:
        """Ask Label Studio about the project: (FOUND, "") once its label config, validated, is stored;
        (GONE, why) when Label Studio answers 404; ("", why) when it cannot tell."""
        access = self.access_for(project_id)
        if access is None:
            return "", "no Label Studio URL/token to ask Label Studio about it"
        try:
            body = access.api_get(f"/api/projects/{int(project_id)}")
        except LabelStudioError as exc:
            return (GONE if _NOT_FOUND.search(str(exc)) else ""), str(exc)
        xml = body.get("label_config") if isinstance(body, dict) else None
        if not isinstance(xml, str):
            return "", "Label Studio's answer has no label config"
        try:
            self.label_studio.label_config(project_id, xml)
        except LabelConfigError as exc:
            return "", f"its label config in Label Studio cannot be served: {exc}"
        return FOUND, ""

    def _webhook_doubt(self, action: str, project_id: int, verified: bool, label_config: object) -> str | None:
        """Why an event is not acted on (None: it is). An unverified event only counts once Label Studio
        confirms it (a re-read stores the project's label config); a verified one is believed."""
        if verified and (action != "PROJECT_UPDATED" or isinstance(label_config, str)):
            return None
        if action == "PROJECT_DELETED" and not self.store.projects.get(project_id):
            return f"project {project_id} is not known here"
        if action not in ("PROJECT_DELETED", "PROJECT_UPDATED") and self.knows_project(project_id):
            return None
        state, why = self.reread_project(project_id)
        if action == "PROJECT_DELETED":
            if state == GONE:
                return None
            return (
                f"project {project_id} is forgotten only once Label Studio answers 404 for it "
                f"({why or 'it still exists'}), or on a verified webhook (DCSAM_WEBHOOK_SECRET)"
            )
        if state == FOUND:
            return None
        if action == "PROJECT_UPDATED":
            return f"project {project_id}: cannot re-read it from Label Studio: {why}"
        return (
            f"project {project_id} is not set up on this backend and Label Studio does not confirm it "
            f"({why}); connect the model to it in Label Studio, or set DCSAM_WEBHOOK_SECRET"
        )

    def webhook(
        self, action: str, project_id: int, *, verified: bool, label_config: object = None, accepted: bool = False
    ) -> dict:
        """React to a Label Studio event (``action`` is a known one). A ``verified`` event (webhook secret or
        basic auth) is believed; any other only makes the backend re-read the truth from Label Studio, for
        projects set up here or that Label Studio lists, and stores nothing from its payload."""
        out: dict = {"status": "ok", "action": action}
        doubt = self._webhook_doubt(action, project_id, verified, label_config)
        if doubt is not None:
            return _ignored(action, doubt)
        if action == "PROJECT_DELETED":
            self.forget_project(project_id)
            return out
        if action == "PROJECT_UPDATED":
            if verified and isinstance(label_config, str):
                self.label_studio.label_config(project_id, label_config)  # validated (LabelConfigError) or kept
            self.store.projects.bump_examples_rev(project_id)
            return out
        if action == "START_TRAINING":
            self.store.projects.bump_examples_rev(project_id)
            refusal = self.training_refusal(project_id)
            if refusal is not None:  # answered at once: Label Studio shows a non-2xx answer (the adapter's)
                message, figures = refusal
                out.update(status="refused", detail=message)
                out["job"] = self.store.jobs.add_finished("train", project_id, "failed", message, figures)
                log.info("project %s: START_TRAINING refused: %s", project_id, message)
                return out
            out["job"] = job = self.submit_train(project_id, reason="START_TRAINING")
            out["detail"] = f"fine-tune queued as job {job}: its progress is on /status and GET /jobs/{job}"
            return out
        out["examples_rev"], out["job"] = self.annotations_changed(project_id, action)
        if accepted:
            train_job = self.annotation_accepted(project_id)
            if train_job is not None:
                out["train_job"] = train_job
        return out

    def training_refusal(self, project_id: int) -> tuple[str, dict] | None:
        """(message, figures) when the project's annotations cannot support a fine-tune, read from Label Studio
        at once (annotations only); None when they can, or when that cannot be told quickly (the job will)."""
        access = self.access_for(project_id)
        if access is None:
            return None
        try:
            cfg = self.deps.project_config(project_id, access)
            readiness = training_readiness(access.annotated_tasks(project_id), cfg)
        except (JobError, LabelStudioError) as exc:
            log.info("project %s: no quick training check (%s); the fine-tune job will tell", project_id, exc)
            return None
        if readiness.ready or not readiness.complete:
            return None
        return readiness.refusal(), {"tasks_per_label": readiness.tasks_per_label, "refused_at_once": True}

    def annotations_changed(self, project_id: int, reason: str) -> tuple[int, int]:
        """Mark the examples stale and queue one re-sync (merged with a queued one); (examples rev, job id)."""
        rev = self.store.projects.bump_examples_rev(project_id)
        return rev, self.submit_sync(project_id, reason=reason)

    def annotation_accepted(self, project_id: int) -> int | None:
        """Count a new accepted annotation; queue a fine-tune every ``DCSAM_TRAIN_EVERY`` (the job id)."""
        if not self.settings.train_every:
            return None
        n = self.store.projects.bump_annotation_counter(project_id)
        if n < self.settings.train_every:
            return None
        return self.submit_train(
            project_id, reason=f"{n} new accepted annotation(s)", delay_s=self.settings.train_debounce_s
        )

    # -- jobs ------------------------------------------------------------------------------------
    def _queued(self, job_id: int, kind: str) -> int:
        self.runner.start()
        self.runner.wake(kind)
        return job_id

    def submit_sync(self, project_id: int, *, reason: str = "") -> int:
        """Queue a re-sync of the project's examples; events within the debounce merge into one job."""
        now = time.time()
        delay = self.settings.sync_debounce_s
        job, _created = self.store.jobs.add_or_merge(
            "sync_examples", project_id, {}, run_after=now + delay, latest_run_after=now + 10 * delay, message=reason
        )
        return self._queued(job, "sync_examples")

    def submit_preannotate(self, project_id: int, *, reason: str = "", params: dict | None = None) -> int:
        """Queue a pre-annotation of the project, unless one is queued already (its id is returned)."""
        existing = self.store.jobs.open_job("preannotate", project_id)
        if existing is not None and existing["status"] == "queued":
            return existing["id"]
        if existing is not None and existing["params"].get("version") == self.version_for(project_id):
            return existing["id"]  # running for the current version: it covers every task
        return self._queued(self.store.jobs.add("preannotate", project_id, params or {}, message=reason), "preannotate")

    def submit_preannotate_after_promotion(self, project_id: int, *, reason: str = "") -> int:
        """The pre-annotation a promoted fine-tune queues: it leaves out tasks with an accepted annotation
        unless DCSAM_PREANNOTATE_SKIP_ANNOTATED=0 (see backend.services.preannotate)."""
        params = {"skip_annotated": self.settings.preannotate_skip_annotated}
        return self.submit_preannotate(project_id, reason=reason, params=params)

    def submit_train(self, project_id: int, *, reason: str = "", delay_s: float = 0.0) -> int:
        """Queue a fine-tune; a queued one is reused (and postponed by ``delay_s``: debouncing)."""
        existing = self.store.jobs.open_job("train", project_id)
        run_after = time.time() + delay_s
        if existing is not None and existing["status"] == "queued":
            self.store.jobs.postpone(existing["id"], run_after)
            return existing["id"]
        return self._queued(self.store.jobs.add("train", project_id, {}, run_after=run_after, message=reason), "train")

    def cancel_job(self, job_id: int) -> dict | None:
        return self.store.jobs.request_cancel(job_id)

    def render_metrics(self) -> str:
        """Prometheus text: counters, plus gauges rebuilt from the job table on every scrape."""
        m = self.metrics
        m.clear("dcsam_job_progress")
        m.clear("dcsam_jobs")
        jobs = self.store.jobs
        for job in jobs.list(limit=1000, status="running") + jobs.list(limit=1000, status="queued"):
            m.set(
                "dcsam_job_progress",
                job["progress_done"] / max(1, job["progress_total"] or 0),
                job=str(job["id"]),
                kind=job["kind"],
                project=str(job["project_id"]),
                state=job["status"],
            )
        for (kind, status), n in jobs.counts().items():
            m.set("dcsam_jobs", float(n), kind=kind, state=status)
        return m.render()


def _ignored(action: str, detail: str) -> dict:
    log.info("webhook %s ignored: %s", action, detail)
    return {"status": "ignored", "action": action, "detail": detail}


__all__ = ["CHOICE_ENV", "Service", "VersionError"]
