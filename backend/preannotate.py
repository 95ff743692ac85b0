"""Whole-project pre-annotation as a background job (``POST /jobs/preannotate``, ``dcsam preannotate``).

Label Studio's "Retrieve Predictions" sends every selected task in one ``/predict`` call and times out
on real projects; this job instead:

1. pages through the project's tasks in id order (keyset pagination: ``id > cursor``, ``include=id,data,
   total_predictions``), skipping tasks that already hold a prediction of the current ``model_version``
   (the SQLite ledger, then Label Studio itself for tasks that have any prediction);
2. downloads the next page's images in a thread pool while the model runs on this page (batched, under
   the inference lock shared with ``/predict``);
3. imports each page's predictions in one ``POST /api/projects/{id}/import/predictions`` (SDK
   ``projects.import_predictions``), with retries and exponential backoff.

Exactly once per task and version: the page's task ids are written to the ledger as ``pending`` before the
import, and ``done`` with the new cursor in one transaction after it. A retry, or a restart that finds
``pending`` rows, first asks Label Studio which of those tasks already hold a prediction of the version and
imports only the others. The cursor only moves past tasks whose fate is final (imported, already there,
or failed: those are counted, listed in the figures and left for a later run).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .jobs import JobContext, JobError
from .labelconfig import LabelConfigError
from .media import LabelStudioAccess, LabelStudioError

if TYPE_CHECKING:  # pragma: no cover
    from .app import Backend

log = logging.getLogger(__name__)


class Ledger:
    """SQLite rows ``(project, version, task) -> pending | done`` (shares the State's file)."""

    def __init__(self, state):
        self.state = state

    def done_ids(self, project_id: int, version: str, task_ids: list[int]) -> set[int]:
        if not task_ids:
            return set()
        marks = ",".join("?" * len(task_ids))
        rows = self.state._query(f"SELECT task_id FROM preannotated WHERE project_id=? AND version=? AND status='done' "
                                 f"AND task_id IN ({marks})", (project_id, version, *task_ids))
        return {r[0] for r in rows}

    def pending(self, project_id: int, version: str) -> list[int]:
        rows = self.state._query("SELECT task_id FROM preannotated WHERE project_id=? AND version=? AND status='pending' "
                                 "ORDER BY task_id", (project_id, version))
        return [r[0] for r in rows]

    def count(self, project_id: int, version: str) -> int:
        return self.state._query("SELECT COUNT(*) FROM preannotated WHERE project_id=? AND version=? AND status='done'",
                                 (project_id, version))[0][0]

    def mark(self, project_id: int, version: str, task_ids: list[int], status: str, job_id: int | None) -> None:
        now = time.time()
        with self.state._tx() as con:
            con.executemany("INSERT INTO preannotated(project_id, version, task_id, status, job_id, updated_at) "
                            "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(project_id, version, task_id) DO UPDATE SET "
                            "status=excluded.status, job_id=excluded.job_id, updated_at=excluded.updated_at",
                            [(project_id, version, t, status, job_id, now) for t in task_ids])

    def forget_pending(self, project_id: int, version: str, task_ids: list[int]) -> None:
        with self.state._tx() as con:
            con.executemany("DELETE FROM preannotated WHERE project_id=? AND version=? AND task_id=? AND status='pending'",
                            [(project_id, version, t) for t in task_ids])

    def commit_page(self, project_id: int, version: str, task_ids: list[int], job_id: int, params: dict) -> None:
        """Mark ``task_ids`` done and save the job's resume point, in one transaction."""
        now = time.time()
        with self.state._tx() as con:
            con.executemany("INSERT INTO preannotated(project_id, version, task_id, status, job_id, updated_at) "
                            "VALUES(?, ?, ?, 'done', ?, ?) ON CONFLICT(project_id, version, task_id) DO UPDATE SET "
                            "status='done', job_id=excluded.job_id, updated_at=excluded.updated_at",
                            [(project_id, version, t, job_id, now) for t in task_ids])
            con.execute("UPDATE jobs SET params=?, updated_at=? WHERE id=?", (json.dumps(params), now, job_id))


# -- Label Studio calls -------------------------------------------------------------------------------
def list_page(access: LabelStudioAccess, project_id: int, after_id: int, page_size: int) -> tuple[list[dict], int]:
    """Tasks with ``id > after_id`` in id order (one page) and how many such tasks there are."""
    query = json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": int(after_id)}]},
        "ordering": ["tasks:id"]})
    body = access.api_get("/api/tasks", {"project": project_id, "include": "id,data,total_predictions",
                                         "query": query, "page": 1, "page_size": page_size})
    tasks = body.get("tasks", []) if isinstance(body, dict) else body
    total = body.get("total", len(tasks)) if isinstance(body, dict) else len(tasks)
    tasks = sorted((t for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), int) and t["id"] > after_id),
                   key=lambda t: t["id"])
    return tasks, int(total)


def prediction_versions(access: LabelStudioAccess, task_id: int) -> list[str]:
    preds = access.api_get("/api/predictions", {"task": task_id})
    if isinstance(preds, dict):
        preds = preds.get("results", [])
    return [str(p.get("model_version")) for p in preds or [] if isinstance(p, dict) and p.get("task", task_id) == task_id]


def tasks_with_version(access: LabelStudioAccess, task_ids: list[int], version: str, pool: ThreadPoolExecutor) -> set[int]:
    found = pool.map(lambda t: (t, version in prediction_versions(access, t)), task_ids)
    return {t for t, has in found if has}


def import_predictions(access: LabelStudioAccess, project_id: int, predictions: list[dict], timeout_s: float) -> None:
    from label_studio_sdk.core.request_options import RequestOptions

    sdk = access._sdk()
    options: RequestOptions = {"timeout_in_seconds": int(max(1, timeout_s)), "max_retries": 0}
    sdk.projects.import_predictions(id=project_id, request=predictions, request_options=options)


# -- the job --------------------------------------------------------------------------------------------
def project_config(backend: "Backend", project_id: int, access: LabelStudioAccess):
    """The project's label config: from /setup, else read from Label Studio."""
    project = backend.state.project(project_id)
    xml = project and project.get("label_config")
    if not xml:
        try:
            xml = access.api_get(f"/api/projects/{int(project_id)}").get("label_config")
        except (LabelStudioError, AttributeError) as exc:
            raise JobError(f"project {project_id}: cannot read its label config from Label Studio: {exc}") from exc
    try:
        return backend.label_config(project_id, xml)
    except LabelConfigError as exc:
        raise JobError(f"project {project_id}: label config: {exc}") from exc


def project_access(backend: "Backend", ctx: JobContext, what: str) -> tuple[int, LabelStudioAccess]:
    """The job's project id and its Label Studio access, or a JobError that says what is missing."""
    project_id = ctx.project_id
    if project_id is None:
        raise JobError(f"{what} needs a project id")
    access = backend.access_for(project_id)
    if access is None:
        raise JobError(f"project {project_id}: no Label Studio URL/token: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, "
                       "or connect the backend to the project in Label Studio first (its /setup passes them)")
    return project_id, access


def run_preannotate(backend: "Backend", ctx: JobContext) -> tuple[str, str, dict]:
    project_id, access = project_access(backend, ctx, "pre-annotation")
    s = backend.settings
    cfg = project_config(backend, project_id, access)
    ledger = backend.ledger
    params = dict(ctx.params)
    page_size = int(params.get("page_size") or s.preannotate_chunk)
    t_start = time.monotonic()
    processed_now = 0
    io_pool = ThreadPoolExecutor(max_workers=s.preannotate_io_threads, thread_name_prefix="dcsam-dl")
    lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcsam-list")
    hooks = backend.hooks
    try:
        while True:  # restarts from the first task when the model_version changes mid-job
            version = backend.version_for(project_id)
            if params.get("version") != version:
                if params.get("version"):
                    log.info("job %s: model_version changed from %s to %s: pre-annotating from the start", ctx.id,
                             params.get("version"), version)
                params = {"version": version, "cursor": 0, "done": 0, "imported": 0, "existing": 0, "failed": 0,
                          "failed_ids": [], "page_size": page_size}
                ctx.report(params=params)
            pe, plan = backend.predictor.plan(project_id, cfg, access)
            if not plan:
                labels = sorted({lab for c in cfg.label_controls for lab in c.labels})
                raise JobError(f"project {project_id} has no accepted annotation with any of the labels {labels}: "
                               "annotate (and submit) at least one task first")
            value_keys = sorted({cfg.images[name].value_key for name in plan if name in cfg.images})  # not videos
            # a restart may have left an import whose bookkeeping did not happen: ask Label Studio
            pending = ledger.pending(project_id, version)
            if pending:
                there = tasks_with_version(access, pending, version, io_pool)
                ledger.mark(project_id, version, sorted(there), "done", ctx.id)
                ledger.forget_pending(project_id, version, [t for t in pending if t not in there])
                log.info("job %s: %d pending task(s) from an interrupted run: %d already in Label Studio, %d to redo",
                         ctx.id, len(pending), len(there), len(pending) - len(there))

            def fetch(after: int):
                tasks, remaining = list_page(access, project_id, after, page_size)
                done = ledger.done_ids(project_id, version, [t["id"] for t in tasks])
                maybe = [t["id"] for t in tasks if t["id"] not in done and (t.get("total_predictions") or 0) > 0]
                existing = tasks_with_version(access, maybe, version, io_pool) if maybe else set()
                todo = [t for t in tasks if t["id"] not in done and t["id"] not in existing]
                images = backend.predictor.load_many(todo, value_keys, access, io_pool)
                return tasks, remaining, done | existing, existing, todo, images

            cursor = int(params["cursor"])
            future = lister.submit(fetch, cursor)
            tasks, remaining, skip, existing, todo, images = future.result()
            ctx.report(done=params["done"], total=params["done"] + remaining, force=True)
            changed = False
            while tasks:
                ctx.check_cancel()
                if backend.version_for(project_id) != version:
                    changed = True
                    break
                last_id = tasks[-1]["id"]
                future = lister.submit(fetch, last_id)  # the next page downloads while the model runs
                if existing:
                    ledger.mark(project_id, version, sorted(existing), "done", ctx.id)
                outcomes = backend.predictor.predict_outcomes(project_id, todo, cfg, access, preloaded=images,
                                                              planned=(pe, plan)) if todo else []
                ok = [(t["id"], o.prediction) for t, o in zip(todo, outcomes) if o.error is None]
                failed = [t["id"] for t, o in zip(todo, outcomes) if o.error is not None]
                if ok:
                    _import_with_retry(backend, ctx, access, project_id, version, ok, io_pool)
                    if hooks.get("after_import"):
                        hooks["after_import"](ctx, [t for t, _ in ok])
                params = dict(params)
                params["cursor"] = last_id
                params["done"] += len(tasks)
                params["imported"] += len(ok)
                params["existing"] += len(skip)
                params["failed"] += len(failed)
                params["failed_ids"] = (params["failed_ids"] + failed)[:100]
                ledger.commit_page(project_id, version, [t for t, _ in ok], ctx.id, params)
                ctx.job["params"] = params
                processed_now += len(tasks)
                elapsed = time.monotonic() - t_start
                rate = processed_now / elapsed if elapsed > 0 else 0.0
                m = backend.metrics
                m.inc("dcsam_preannotate_tasks_total", len(ok), project=str(project_id), outcome="imported")
                m.inc("dcsam_preannotate_tasks_total", len(skip), project=str(project_id), outcome="existing")
                m.inc("dcsam_preannotate_tasks_total", len(failed), project=str(project_id), outcome="failed")
                m.set("dcsam_preannotate_tasks_per_second", rate, project=str(project_id))
                total = params["done"] + max(0, remaining - len(tasks))
                ctx.report(done=params["done"], total=total, figures=_figures(params, rate, elapsed), force=True)
                tasks, remaining, skip, existing, todo, images = future.result()
            if not changed:
                break
        elapsed = time.monotonic() - t_start
        rate = processed_now / elapsed if elapsed > 0 else 0.0
        figures = _figures(params, rate, elapsed)
        msg = (f"{params['imported']} prediction(s) of {version} imported, {params['existing']} task(s) already had one, "
               f"{params['failed']} failed")
        if params["failed"]:
            msg += f" (task ids {params['failed_ids'][:10]}...; see the backend log); run the job again to retry them"
        ctx.report(done=params["done"], total=params["done"], force=True)
        return "done", msg, figures
    finally:
        lister.shutdown(wait=True, cancel_futures=True)
        io_pool.shutdown(wait=True, cancel_futures=True)


def _figures(params: dict, rate: float, elapsed: float) -> dict[str, Any]:
    return {"model_version": params["version"], "tasks_done": params["done"], "imported": params["imported"],
            "existing": params["existing"], "failed": params["failed"], "failed_ids": params["failed_ids"][:20],
            "tasks_per_second": round(rate, 3), "seconds_this_run": round(elapsed, 2)}


def _import_with_retry(backend: "Backend", ctx: JobContext, access: LabelStudioAccess, project_id: int, version: str,
                       items: list[tuple[int, dict]], pool: ThreadPoolExecutor) -> None:
    s = backend.settings
    ids = [t for t, _ in items]
    backend.ledger.mark(project_id, version, ids, "pending", ctx.id)
    attempt = 0
    while True:
        try:
            todo = items
            if attempt:
                there = tasks_with_version(access, ids, version, pool)  # an earlier attempt may have got through
                todo = [(t, p) for t, p in items if t not in there]
            if todo:
                import_predictions(access, project_id, [{"task": t, "result": p["result"], "score": p.get("score", 0.0),
                                                         "model_version": version} for t, p in todo],
                                   s.preannotate_import_timeout_s)
            return
        except Exception as exc:  # network errors, 5xx, timeouts: retried with backoff
            attempt += 1
            backend.metrics.inc("dcsam_preannotate_import_retries_total", project=str(project_id))
            if attempt > s.preannotate_retries:
                raise JobError(f"importing predictions for tasks {ids[0]}..{ids[-1]} failed {attempt} time(s); last "
                               f"error: {type(exc).__name__}: {str(exc)[:300]}") from exc
            delay = min(60.0, s.preannotate_backoff_s * 2 ** (attempt - 1))
            log.warning("job %s: importing %d prediction(s) failed (%s: %s); retry %d/%d in %.1f s", ctx.id, len(items),
                        type(exc).__name__, str(exc)[:200], attempt, s.preannotate_retries, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                ctx.check_cancel()
                time.sleep(min(0.2, delay))
