"""Whole-project pre-annotation as a background job (``POST /jobs/preannotate``, ``dcsam preannotate``).

Label Studio's "Retrieve Predictions" sends every selected task in one ``/predict`` call and times out
on real projects; this job instead:

1. pages through the project's tasks in id order (keyset pagination: ``id > cursor``, ``include=id,data,
   total_predictions``), skipping tasks that already hold a prediction of the current ``model_version``
   (the SQLite ledger, then Label Studio itself for tasks that have any prediction). The ledger is only
   believed for tasks the same listing shows with a prediction: a task whose predictions were deleted in
   Label Studio is predicted again. A job with ``skip_annotated`` (the one a promoted fine-tune queues,
   ``DCSAM_PREANNOTATE_SKIP_ANNOTATED``, on by default) also leaves out tasks that already have an accepted
   annotation: a person's labels are the truth there, and a new prediction would only add noise;
2. downloads the next page's images in a thread pool while the model runs on this page (batched, under
   the inference lock shared with ``/predict``);
3. imports each page's predictions in one ``POST /api/projects/{id}/import/predictions`` (SDK
   ``projects.import_predictions``), with retries and exponential backoff (a ``Retry-After`` answer
   is waited for, up to 60 s).

Exactly once per task and version: the page's task ids are written to the ledger as ``pending`` before the
import, and ``done`` with the new cursor in one transaction after it. A retry, or a restart that finds
``pending`` rows, first asks Label Studio which of those tasks already hold a prediction of the version and
imports only the others. The cursor only moves past tasks whose fate is final (imported, already there,
or failed: those are counted, listed in the figures and left for a later run).

Where pages are downloaded and predicted is a :class:`PageModel`: :class:`LocalPages` (this process: a thread
pool and the shared engine under the inference lock) or, with ``DCSAM_RAY_ADDRESS`` / ``RAY_ADDRESS`` set or the
job's ``ray`` param, :class:`backend.services.preannotate_ray.RayPages` (CPU tasks and a pool of inference
actors on Ray). Listing, skipping, the ledger, imports, progress and figures are this module's, for both.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..labelstudio.media import LabelStudioAccess
from .deps import JobDeps
from .jobs import JobContext, JobError
from .pages import LocalPages, PageModel

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0


# -- Label Studio calls -------------------------------------------------------------------------------
def list_page(access: LabelStudioAccess, project_id: int, after_id: int, page_size: int) -> tuple[list[dict], int]:
    """Tasks with ``id > after_id`` in id order (one page) and how many such tasks there are."""
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": int(after_id)}
                ],
            },
            "ordering": ["tasks:id"],
        }
    )
    body = access.api_get(
        "/api/tasks",
        {
            "project": project_id,
            "include": "id,data,total_predictions,total_annotations",
            "query": query,
            "page": 1,
            "page_size": page_size,
        },
    )
    tasks = body.get("tasks", []) if isinstance(body, dict) else body
    total = body.get("total", len(tasks)) if isinstance(body, dict) else len(tasks)
    tasks = sorted(
        (t for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), int) and t["id"] > after_id),
        key=lambda t: t["id"],
    )
    return tasks, int(total)


def prediction_versions(access: LabelStudioAccess, task_id: int) -> list[str]:
    preds = access.api_get("/api/predictions", {"task": task_id})
    if isinstance(preds, dict):
        preds = preds.get("results", [])
    return [
        str(p.get("model_version")) for p in preds or [] if isinstance(p, dict) and p.get("task", task_id) == task_id
    ]


def tasks_with_version(
    access: LabelStudioAccess, task_ids: list[int], version: str, pool: ThreadPoolExecutor
) -> set[int]:
    found = pool.map(lambda t: (t, version in prediction_versions(access, t)), task_ids)
    return {t for t, has in found if has}


def retry_after_s(exc: BaseException, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header of a failed call asks for (seconds or an HTTP-date), at most
    60 s; None without one. The SDK's ``ApiError`` carries the response headers."""
    headers = getattr(exc, "headers", None)
    if not isinstance(headers, dict):
        return None
    raw = next((str(v) for k, v in headers.items() if str(k).lower() == "retry-after"), "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": no known zone, so no known moment
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def import_predictions(access: LabelStudioAccess, project_id: int, predictions: list[dict], timeout_s: float) -> None:
    from label_studio_sdk.core.request_options import RequestOptions

    sdk = access.sdk()
    options: RequestOptions = {"timeout_in_seconds": int(max(1, timeout_s)), "max_retries": 0}
    sdk.projects.import_predictions(id=project_id, request=predictions, request_options=options)


def page_model(deps: JobDeps, ctx: JobContext, local: LocalPages) -> PageModel:
    """Ray when the job's ``ray`` param or ``DCSAM_RAY_ADDRESS`` asks for it, else ``local`` (this process)."""
    address = ray_address(ctx.params.get("ray"), deps.settings.ray_address)
    if address is None:
        return local
    from .preannotate_ray import RayPages  # imports ray: only jobs that use it pay for it

    return RayPages(local, ctx, address)


def ray_address(asked: object, configured: str | None) -> str | None:
    """The Ray address a job runs on (None: this process). ``asked`` is the job's ``ray`` param: absent or
    False (the backend's ``DCSAM_RAY_ADDRESS``), True or ``"auto"`` (that address, else a local Ray),
    ``"local"`` (a Ray started here on demand), or a cluster address, which must be the configured one: the
    cluster gets the Label Studio token, so a request may not send it elsewhere."""
    if asked is None or asked is False or asked == "":
        return configured or None
    if asked is True or asked == "auto":
        return configured or "local"
    if not isinstance(asked, str):
        raise JobError(f"job param ray={asked!r}: expected true, 'auto', 'local' or a Ray address")
    if asked == "local" or asked == configured:
        return asked
    raise JobError(
        f"Ray address {asked!r} is not this backend's DCSAM_RAY_ADDRESS ({configured!r}): a job may only use the "
        "configured cluster (it receives the Label Studio token) or 'local'"
    )


# -- the job --------------------------------------------------------------------------------------------
def run_preannotate(deps: JobDeps, ctx: JobContext) -> tuple[str, str, dict]:
    project_id, access = deps.project_access(ctx, "pre-annotation")
    s = deps.settings
    cfg = deps.project_config(project_id, access)
    ledger = deps.ledger
    params = dict(ctx.params)
    page_size = int(params.get("page_size") or s.preannotate_chunk)
    skip_annotated = bool(params.get("skip_annotated"))  # survives the reset of params below
    ray = params.get("ray")  # so does the Ray address asked for
    t_start = time.monotonic()
    processed_now = 0
    io_pool = ThreadPoolExecutor(max_workers=s.preannotate_io_threads, thread_name_prefix="dcsam-dl")
    lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcsam-list")
    try:
        pages = page_model(deps, ctx, LocalPages(deps, project_id, cfg, access, io_pool))
    except BaseException:
        lister.shutdown()
        io_pool.shutdown()
        raise
    try:
        while True:  # restarts from the first task when the model_version changes mid-job
            version = deps.version_for(project_id)
            if params.get("version") != version:
                if params.get("version"):
                    log.info(
                        "job %s: model_version changed from %s to %s: pre-annotating from the start",
                        ctx.id,
                        params.get("version"),
                        version,
                    )
                params = {
                    "version": version,
                    "cursor": 0,
                    "done": 0,
                    "imported": 0,
                    "existing": 0,
                    "failed": 0,
                    "failed_ids": [],
                    "page_size": page_size,
                    "skip_annotated": skip_annotated,
                    "annotated": 0,
                }
                if ray is not None:
                    params["ray"] = ray
                ctx.report(params=params)
            pe, plan = deps.predictor.plan(project_id, cfg, access)
            error = getattr(pe, "error", None)
            if not plan and error:
                raise JobError(f"project {project_id}: {error}")
            if not plan:
                labels = sorted({lab for c in cfg.label_controls for lab in c.labels})
                raise JobError(
                    f"project {project_id} has no accepted annotation with any of the labels {labels}: "
                    "annotate (and submit) at least one task first"
                )
            value_keys = sorted({cfg.images[name].value_key for name in plan if name in cfg.images})  # not videos
            pages.start(version, (pe, plan))
            # a restart may have left an import whose bookkeeping did not happen: ask Label Studio
            pending = ledger.pending(project_id, version)
            if pending:
                there = tasks_with_version(access, pending, version, io_pool)
                ledger.mark(project_id, version, sorted(there), "done", ctx.id)
                ledger.forget_pending(project_id, version, [t for t in pending if t not in there])
                log.info(
                    "job %s: %d pending task(s) from an interrupted run: %d already in Label Studio, %d to redo",
                    ctx.id,
                    len(pending),
                    len(there),
                    len(pending) - len(there),
                )

            def fetch(after: int, version: str = version, value_keys: list[str] = value_keys):
                tasks, remaining = list_page(access, project_id, after, page_size)
                # the ledger holds for tasks Label Studio still shows with a prediction (deleted ones are redone)
                done = ledger.done_ids(project_id, version, [t["id"] for t in tasks if _may_have_predictions(t)])
                maybe = [t["id"] for t in tasks if t["id"] not in done and (t.get("total_predictions") or 0) > 0]
                existing = tasks_with_version(access, maybe, version, io_pool) if maybe else set()
                annotated = {t["id"] for t in tasks if skip_annotated and _has_accepted_annotation(t)}
                todo = [t for t in tasks if t["id"] not in done | existing | annotated]
                images = pages.load(todo, value_keys)
                return tasks, remaining, done | existing, existing, annotated - done - existing, todo, images

            cursor = int(params["cursor"])
            future = lister.submit(fetch, cursor)
            tasks, remaining, skip, existing, annotated, todo, images = future.result()
            ctx.report(done=params["done"], total=params["done"] + remaining, force=True)
            changed = False
            while tasks:
                ctx.check_cancel()
                if deps.version_for(project_id) != version:
                    changed = True
                    break
                last_id = tasks[-1]["id"]
                future = lister.submit(fetch, last_id)  # the next page downloads while the model runs
                if existing:
                    ledger.mark(project_id, version, sorted(existing), "done", ctx.id)
                outcomes = pages.predict(todo, images)
                ok = [(t["id"], o.prediction) for t, o in zip(todo, outcomes) if o.error is None]
                failed = [t["id"] for t, o in zip(todo, outcomes) if o.error is not None]
                if ok:
                    _import_with_retry(deps, ctx, access, project_id, version, ok, io_pool)
                params = dict(params)
                params["cursor"] = last_id
                params["done"] += len(tasks)
                params["imported"] += len(ok)
                params["existing"] += len(skip)
                params["failed"] += len(failed)
                params["annotated"] = params.get("annotated", 0) + len(annotated)
                params["failed_ids"] = (params["failed_ids"] + failed)[:100]
                ledger.commit_page(project_id, version, [t for t, _ in ok], ctx.id, params)
                ctx.job["params"] = params
                processed_now += len(tasks)
                elapsed = time.monotonic() - t_start
                rate = processed_now / elapsed if elapsed > 0 else 0.0
                m = deps.metrics
                m.inc("dcsam_preannotate_tasks_total", len(ok), project=str(project_id), outcome="imported")
                m.inc("dcsam_preannotate_tasks_total", len(skip), project=str(project_id), outcome="existing")
                m.inc("dcsam_preannotate_tasks_total", len(failed), project=str(project_id), outcome="failed")
                m.inc("dcsam_preannotate_tasks_total", len(annotated), project=str(project_id), outcome="annotated")
                m.set("dcsam_preannotate_tasks_per_second", rate, project=str(project_id))
                total = params["done"] + max(0, remaining - len(tasks))
                ctx.report(done=params["done"], total=total, figures=_figures(params, rate, elapsed), force=True)
                tasks, remaining, skip, existing, annotated, todo, images = future.result()
            if not changed:
                break
        elapsed = time.monotonic() - t_start
        rate = processed_now / elapsed if elapsed > 0 else 0.0
        figures = _figures(params, rate, elapsed)
        msg = (
            f"{params['imported']} prediction(s) of {version} imported, {params['existing']} task(s) already had one, "
            f"{params['failed']} failed"
        )
        if params.get("annotated"):
            msg += f", {params['annotated']} left out (an accepted annotation)"
        if params["failed"]:
            msg += f" (task ids {params['failed_ids'][:10]}...; see the backend log); run the job again to retry them"
        ctx.report(done=params["done"], total=params["done"], force=True)
        return "done", msg, figures
    finally:
        lister.shutdown(wait=True, cancel_futures=True)
        pages.close()
        io_pool.shutdown(wait=True, cancel_futures=True)


def _has_accepted_annotation(task: dict) -> bool:
    # Label Studio's total_annotations counts the task's annotations that are not cancelled (skipped): exactly
    # the accepted-annotation rule of backend.labelstudio.annotations (drafts are not annotations)
    count = task.get("total_annotations")
    return isinstance(count, int) and count > 0


def _may_have_predictions(task: dict) -> bool:
    count = task.get("total_predictions")
    return not isinstance(count, int) or count > 0  # a listing without the count: the ledger decides


def _figures(params: dict, rate: float, elapsed: float) -> dict[str, Any]:
    return {
        "model_version": params["version"],
        "tasks_done": params["done"],
        "imported": params["imported"],
        "existing": params["existing"],
        "failed": params["failed"],
        "failed_ids": params["failed_ids"][:20],
        "annotated_left_out": params.get("annotated", 0),
        "tasks_per_second": round(rate, 3),
        "seconds_this_run": round(elapsed, 2),
    }


def _import_with_retry(
    deps: JobDeps,
    ctx: JobContext,
    access: LabelStudioAccess,
    project_id: int,
    version: str,
    items: list[tuple[int, dict]],
    pool: ThreadPoolExecutor,
) -> None:
    s = deps.settings
    ids = [t for t, _ in items]
    deps.ledger.mark(project_id, version, ids, "pending", ctx.id)
    attempt = 0
    while True:
        try:
            todo = items
            if attempt:
                there = tasks_with_version(access, ids, version, pool)  # an earlier attempt may have got through
                todo = [(t, p) for t, p in items if t not in there]
            if todo:
                import_predictions(
                    access,
                    project_id,
                    [
                        {"task": t, "result": p["result"], "score": p.get("score", 0.0), "model_version": version}
                        for t, p in todo
                    ],
                    s.preannotate_import_timeout_s,
                )
            return
        except Exception as exc:  # network errors, 5xx, timeouts: retried with backoff
            attempt += 1
            deps.metrics.inc("dcsam_preannotate_import_retries_total", project=str(project_id))
            if attempt > s.preannotate_retries:
                raise JobError(
                    f"importing predictions for tasks {ids[0]}..{ids[-1]} failed {attempt} time(s); last "
                    f"error: {type(exc).__name__}: {str(exc)[:300]}"
                ) from exc
            delay = min(60.0, s.preannotate_backoff_s * 2 ** (attempt - 1))
            asked = retry_after_s(exc)
            if asked is not None:
                delay = max(delay, asked)
            log.warning(
                "job %s: importing %d prediction(s) failed (%s: %s); retry %d/%d in %.1f s%s",
                ctx.id,
                len(items),
                type(exc).__name__,
                str(exc)[:200],
                attempt,
                s.preannotate_retries,
                delay,
                " (Retry-After)" if asked is not None else "",
            )
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                ctx.check_cancel()
                time.sleep(min(0.2, delay))
