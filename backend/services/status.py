"""What the status page shows, read from the store and the services: one JSON-able snapshot.

Projects set up here (their labels, examples with thumbnails, versions and the cross-validated scores of
their fine-tunes), the recent jobs (progress, time left where it can be estimated, messages), the engine
and the base model version. Read-only: nothing here writes, and no SQL lives here (the store's
repository classes answer). The HTML is :mod:`backend.labelstudio.status_page`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ..labelstudio.labelconfig import LabelConfigError, parse_label_config
from ..store import Store
from .examples import ExampleManager
from .versions import VersionRegistry

RUNNING = "running"


def time_left_s(job: dict, now: float) -> float | None:
    """Seconds left of a running job, from its pace so far (done / elapsed); None when unknown."""
    done, total, started = job.get("progress_done") or 0, job.get("progress_total"), job.get("started_at")
    if job.get("status") != RUNNING or not total or not started or done <= 0 or done >= total:
        return None
    elapsed = max(0.0, now - started)
    if elapsed <= 0:
        return None
    return (total - done) * elapsed / done


def _job_view(job: dict, now: float) -> dict:
    total = job.get("progress_total")
    done = job.get("progress_done") or 0
    figures = job.get("figures") or {}
    return {
        "id": job["id"],
        "kind": job["kind"],
        "project_id": job["project_id"],
        "status": job["status"],
        "message": job.get("message") or "",
        "progress_done": done,
        "progress_total": total,
        "fraction": min(1.0, done / total) if total else None,
        "time_left_s": time_left_s(job, now),
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "step": figures.get("step") if job["status"] == RUNNING else None,
        "steps": figures.get("steps") if job["status"] == RUNNING else None,
    }


def _labels(label_config: str | None) -> list[str]:
    if not label_config:
        return []
    try:
        cfg = parse_label_config(label_config)
    except LabelConfigError:
        return []
    return sorted({label for control in cfg.label_controls for label in control.labels})


def _score(figures: dict, key: str) -> float | None:
    value = figures.get(key)
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class StatusReader:
    """Builds :meth:`snapshot`; constructed once by the service."""

    store: Store
    examples: ExampleManager
    versions: VersionRegistry
    _: KW_ONLY
    engine: str  # the engine's name, why it was chosen, and the version it serves before any fine-tune
    engine_reason: str
    base_version: str

    def training_runs(self, project_id: int, jobs: list[dict]) -> list[dict]:
        """The project's cross-validated fine-tunes, oldest first: promoted ones from its versions (kept for
        good), the others from the finished training jobs still in the job table."""
        runs: list[dict] = []
        seen_versions = set()
        for info in self.versions.project_versions(project_id):
            figures = info.get("figures") or {}
            runs.append(
                {
                    "at": info.get("created_at") or 0.0,
                    "version": info["version"],
                    "parent": info.get("parent"),
                    "before": _score(figures, "val_miou_before"),
                    "after": _score(figures, "val_miou_after"),
                    "promoted": True,
                }
            )
            seen_versions.add(info["version"])
        for job in jobs:
            figures = job.get("figures") or {}
            if job["kind"] != "train" or job["project_id"] != project_id or job["status"] != "done":
                continue
            if figures.get("promoted") or figures.get("new_version") in seen_versions:
                continue
            if _score(figures, "val_miou_after") is None:
                continue
            runs.append(
                {
                    "at": job.get("finished_at") or job.get("created_at") or 0.0,
                    "version": None,
                    "parent": figures.get("parent_version"),
                    "before": _score(figures, "val_miou_before"),
                    "after": _score(figures, "val_miou_after"),
                    "promoted": False,
                    "job": job["id"],
                }
            )
        runs.sort(key=lambda r: r["at"])
        return runs

    def project(self, row: dict, jobs: list[dict]) -> dict:
        project_id = int(row["id"])
        examples = []
        for ex in self.store.examples.of_project(project_id):
            thumb = self.examples.thumbnail(project_id, ex["annotation_id"], ex["control"], ex["label"])
            examples.append(
                {
                    "control": ex["control"],
                    "label": ex["label"],
                    "task_id": ex["task_id"],
                    "annotation_id": ex["annotation_id"],
                    "updated_at": ex["updated_at"],
                    "thumbnail": "data:image/jpeg;base64," + base64.b64encode(thumb).decode() if thumb else None,
                }
            )
        active = self.versions.active(project_id)
        versions = [
            {
                "version": info["version"],
                "parent": info.get("parent"),
                "created_at": info.get("created_at"),
                "val_miou_before": _score(info.get("figures") or {}, "val_miou_before"),
                "val_miou_after": _score(info.get("figures") or {}, "val_miou_after"),
                "active": info["version"] == active,
            }
            for info in self.versions.project_versions(project_id)
        ]
        return {
            "id": project_id,
            "hostname": row.get("hostname"),
            "labels": _labels(row.get("label_config")),
            "active_version": active,
            "examples": examples,
            "versions": versions,
            "training_runs": self.training_runs(project_id, jobs),
        }

    def snapshot(self, *, jobs_limit: int = 30, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        jobs = self.store.jobs.list(limit=jobs_limit)
        train_jobs = self.store.jobs.list(limit=200, kind="train", status="done")
        return {
            "generated_at": now,
            "engine": self.engine,
            "engine_reason": self.engine_reason,
            "base_version": self.base_version,
            "projects": [self.project(row, train_jobs) for row in self.store.projects.overview()],
            "jobs": [_job_view(job, now) for job in jobs],
        }
