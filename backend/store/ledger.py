"""The ``preannotated`` table: ``(project, version, task) -> pending | done`` for pre-annotation jobs.

A page's task ids are ``pending`` before its predictions import and ``done`` after it, in the same
transaction that saves the job's resume point (see :mod:`backend.services.preannotate`).
"""

from __future__ import annotations

import time

from .database import Connection, Database
from .jobs import JobStore


class PredictionLedger:
    def __init__(self, db: Database, jobs: JobStore):
        self.db = db
        self.jobs = jobs

    def done_ids(self, project_id: int, version: str, task_ids: list[int]) -> set[int]:
        if not task_ids:
            return set()
        marks = ",".join("?" * len(task_ids))
        rows = self.db.query(
            f"SELECT task_id FROM preannotated WHERE project_id=? AND version=? AND status='done' "
            f"AND task_id IN ({marks})",
            (project_id, version, *task_ids),
        )
        return {r[0] for r in rows}

    def pending(self, project_id: int, version: str) -> list[int]:
        rows = self.db.query(
            "SELECT task_id FROM preannotated WHERE project_id=? AND version=? AND status='pending' ORDER BY task_id",
            (project_id, version),
        )
        return [r[0] for r in rows]

    def count(self, project_id: int, version: str) -> int:
        return self.db.query(
            "SELECT COUNT(*) FROM preannotated WHERE project_id=? AND version=? AND status='done'",
            (project_id, version),
        )[0][0]

    def mark(self, project_id: int, version: str, task_ids: list[int], status: str, job_id: int | None) -> None:
        with self.db.transaction() as con:
            _upsert(con, project_id, version, task_ids, status, job_id, time.time())

    def forget_pending(self, project_id: int, version: str, task_ids: list[int]) -> None:
        with self.db.transaction() as con:
            con.executemany(
                "DELETE FROM preannotated WHERE project_id=? AND version=? AND task_id=? AND status='pending'",
                [(project_id, version, t) for t in task_ids],
            )

    def commit_page(self, project_id: int, version: str, task_ids: list[int], job_id: int, params: dict) -> None:
        """Mark ``task_ids`` done and save the job's resume point, in one transaction."""
        now = time.time()
        with self.db.transaction() as con:
            _upsert(con, project_id, version, task_ids, "done", job_id, now)
            self.jobs.save_params(con, job_id, params, now)


def _upsert(
    con: Connection,
    project_id: int,
    version: str,
    task_ids: list[int],
    status: str,
    job_id: int | None,
    now: float,
) -> None:
    con.executemany(
        "INSERT INTO preannotated(project_id, version, task_id, status, job_id, updated_at) "
        "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(project_id, version, task_id) DO UPDATE SET "
        "status=excluded.status, job_id=excluded.job_id, updated_at=excluded.updated_at",
        [(project_id, version, t, status, job_id, now) for t in task_ids],
    )
