"""The ``jobs`` table: background jobs (kind, project, state, progress, figures, resume point, owner).

States: ``queued`` | ``running`` | ``done`` | ``failed`` | ``cancelled`` | ``interrupted`` | ``skipped``.
The runner that executes them is :class:`backend.services.jobs.JobRunner`.

Replicas sharing a PostgreSQL database claim jobs with row locks (``FOR UPDATE SKIP LOCKED``): a job is
claimed by one replica only. A running job carries a lease (``lease_until``) that its owner renews
(:meth:`JobStore.renew`); a job whose owner cannot be judged from here (another machine) is recovered once
its lease lapses (:meth:`JobStore.recover`). At most one job of a kind runs per project at a time, whichever
replica holds it, so two pre-annotations of one project never race on its tasks.

Finished rows are pruned (:meth:`JobStore.prune`, run by :meth:`JobStore.finish` now and then): every one of
the last ``keep_days`` days is kept, and the newest ``keep_per_project`` of each project whatever their age.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..settings import BackendSettings
from .database import DATABASE_ERRORS, Connection, Database

log = logging.getLogger(__name__)

PRUNE_EVERY = 50  # finishes between two prunes: a prune is one indexed DELETE, cheap but not free
FINAL = ("done", "failed", "cancelled", "interrupted", "skipped")
COLUMNS = (
    "id",
    "kind",
    "project_id",
    "status",
    "message",
    "created_at",
    "finished_at",
    "params",
    "progress_done",
    "progress_total",
    "figures",
    "started_at",
    "updated_at",
    "owner",
    "cancel_requested",
    "run_after",
    "restarts",
    "lease_until",
)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"


def _row(r: tuple) -> dict:
    job = dict(zip(COLUMNS, r))
    for key in ("params", "figures"):
        try:
            job[key] = json.loads(job[key] or "{}")
        except ValueError:
            job[key] = {}
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


def _json(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _json_default(obj: Any) -> Any:
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


class JobStore:
    def __init__(self, db: Database):
        self.db = db
        defaults = BackendSettings()
        # retention of finished rows (the service sets them from the settings)
        self.keep_per_project: int = defaults.jobs_keep_per_project
        self.keep_days: float = defaults.jobs_keep_days
        self.lease_s: float = defaults.job_lease_s  # a claimed job's lease (the service sets it from the settings)
        self._finishes = PRUNE_EVERY - 1  # the first finish of a process prunes
        self._finishes_lock = threading.Lock()

    def add(
        self,
        kind: str,
        project_id: int | None,
        params: dict | None = None,
        *,
        run_after: float = 0.0,
        status: str = "queued",
        message: str = "",
    ) -> int:
        now = time.time()
        with self.db.transaction() as con:
            cur = con.execute(
                "INSERT INTO jobs(kind, project_id, status, message, created_at, params, run_after, updated_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (kind, project_id, status, message, now, _json(params or {}), run_after, now),
            )
            return int(cur.fetchone()[0])

    def add_finished(self, kind: str, project_id: int | None, status: str, message: str, figures: dict) -> int:
        """Record a job that ended before it was queued (e.g. a fine-tune refused at once), in one insert."""
        if status not in FINAL:
            raise ValueError(f"{status!r} is not a final job state")
        now = time.time()
        with self.db.transaction() as con:
            cur = con.execute(
                "INSERT INTO jobs(kind, project_id, status, message, created_at, finished_at, params, figures, "
                "updated_at) VALUES(?, ?, ?, ?, ?, ?, '{}', ?, ?) RETURNING id",
                (kind, project_id, status, message[:1000], now, now, _json(figures), now),
            )
            return int(cur.fetchone()[0])

    def add_or_merge(
        self,
        kind: str,
        project_id: int | None,
        params: dict,
        *,
        run_after: float,
        latest_run_after: float,
        message: str = "",
    ) -> tuple[int, bool]:
        """Queue a job, or merge into the queued one of this kind and project (at most one queued).

        Merging replaces its params and postpones it to ``run_after``, never past ``latest_run_after``
        counted from when it was first queued (a steady stream of events can't starve it).
        Returns (job id, created).
        """
        now = time.time()
        with self.db.transaction() as con:
            self.db.serialize(con, "jobs-queue")  # replicas: one queued job of a kind per project
            row = con.execute(
                "SELECT id, created_at FROM jobs WHERE kind=? AND project_id IS NOT DISTINCT FROM ? "
                "AND status='queued' ORDER BY id LIMIT 1",
                (kind, project_id),
            ).fetchone()
            if row is not None:
                job_id, created = row
                cap = created + (latest_run_after - now)
                con.execute(
                    "UPDATE jobs SET params=?, run_after=?, message=?, updated_at=? WHERE id=?",
                    (_json(params), min(run_after, cap), message, now, job_id),
                )
                return int(job_id), False
            cur = con.execute(
                "INSERT INTO jobs(kind, project_id, status, message, created_at, params, run_after, updated_at) "
                "VALUES(?, ?, 'queued', ?, ?, ?, ?, ?) RETURNING id",
                (kind, project_id, message, now, _json(params), run_after, now),
            )
            return int(cur.fetchone()[0]), True

    def get(self, job_id: int) -> dict | None:
        rows = self.db.query(f"{SELECT} WHERE id=?", (job_id,))
        return _row(rows[0]) if rows else None

    def list(
        self, *, limit: int = 50, project_id: int | None = None, status: str | None = None, kind: str | None = None
    ) -> list[dict]:
        where, args = [], []
        for col, val in (("project_id", project_id), ("status", status), ("kind", kind)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = SELECT + (" WHERE " + " AND ".join(where) if where else "")
        return [_row(r) for r in self.db.query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def counts(self) -> dict[tuple[str, str], int]:
        """{(kind, status): number of jobs}."""
        return {(k, s): n for k, s, n in self.db.query("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")}

    def open_job(self, kind: str, project_id: int | None) -> dict | None:
        """The queued or running job of this kind for this project, if any (queued first, newest first)."""
        rows = self.db.query(
            f"{SELECT} WHERE kind=? AND project_id IS NOT DISTINCT FROM ? AND status IN ('queued', 'running') "
            "ORDER BY status='queued' DESC, id DESC LIMIT 1",
            (kind, project_id),
        )
        return _row(rows[0]) if rows else None

    def busy(self, kinds: tuple[str, ...], due_by: float) -> bool:
        """True while a job of ``kinds`` runs, or is queued to run before ``due_by`` (epoch seconds)."""
        marks = ",".join("?" * len(kinds))
        rows = self.db.query(
            f"SELECT 1 FROM jobs WHERE kind IN ({marks}) AND (status='running' OR "
            "(status='queued' AND run_after<=?)) LIMIT 1",
            (*kinds, due_by),
        )
        return bool(rows)

    def claim(self, owner: str, kinds: tuple[str, ...], lease_s: float | None = None) -> dict | None:
        """Atomically take the oldest due queued job of one of ``kinds`` whose kind is not running for its
        project already, with a lease of ``lease_s`` (default :attr:`lease_s`) seconds.

        One transaction: SQLite's ``BEGIN IMMEDIATE`` serialises it; on PostgreSQL the candidate row is locked
        (``FOR UPDATE SKIP LOCKED``: a row another replica is claiming is skipped, never taken twice) and the
        claims of replicas take turns on an advisory lock, so the one-per-project rule sees committed claims.
        """
        now = time.time()
        lease = self.lease_s if lease_s is None else lease_s
        marks = ",".join("?" * len(kinds))
        with self.db.transaction() as con:
            self.db.serialize(con, "jobs-claim")
            row = con.execute(
                f"SELECT id FROM jobs WHERE status='queued' AND run_after<=? AND kind IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM jobs AS r WHERE r.status='running' AND r.kind=jobs.kind "
                "AND r.project_id IS NOT DISTINCT FROM jobs.project_id) "
                f"ORDER BY run_after, id LIMIT 1{self.db.dialect.skip_locked}",
                (now, *kinds),
            ).fetchone()
            if row is None:
                return None
            con.execute(
                "UPDATE jobs SET status='running', owner=?, started_at=COALESCE(started_at, ?), updated_at=?, "
                "lease_until=? WHERE id=?",
                (owner, now, now, now + lease, row[0]),
            )
        return self.get(row[0])

    def renew(self, job_id: int, owner: str, lease_s: float | None = None) -> bool:
        """Extend the lease of a job ``owner`` runs; False when it is no longer theirs (recovered by another
        replica after the lease lapsed, or finished)."""
        now = time.time()
        lease = self.lease_s if lease_s is None else lease_s
        with self.db.transaction() as con:
            cur = con.execute(
                "UPDATE jobs SET lease_until=? WHERE id=? AND owner=? AND status='running'",
                (now + lease, job_id, owner),
            )
            return cur.rowcount == 1

    def owned_by(self, job_id: int, owner: str) -> bool:
        """True while ``owner`` holds the running job (its lease was not taken over)."""
        rows = self.db.query("SELECT 1 FROM jobs WHERE id=? AND owner=? AND status='running'", (job_id, owner))
        return bool(rows)

    def update(
        self,
        job_id: int,
        *,
        done: int | None = None,
        total: int | None = None,
        figures: dict | None = None,
        params: dict | None = None,
        message: str | None = None,
    ) -> None:
        sets, args = ["updated_at=?"], [time.time()]
        for col, value in (("progress_done", done), ("progress_total", total)):
            if value is not None:
                sets.append(f"{col}=?")
                args.append(int(value))
        for col, obj in (("figures", figures), ("params", params)):
            if obj is not None:
                sets.append(f"{col}=?")
                args.append(_json(obj))
        if message is not None:
            sets.append("message=?")
            args.append(message[:1000])
        with self.db.transaction() as con:
            con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))

    def save_params(self, con: Connection, job_id: int, params: dict, now: float) -> None:
        """Save a resume point inside the caller's transaction (the ledger books a page with it)."""
        con.execute("UPDATE jobs SET params=?, updated_at=? WHERE id=?", (_json(params), now, job_id))

    def finish(
        self, job_id: int, status: str, message: str = "", figures: dict | None = None, *, owner: str | None = None
    ) -> bool:
        """Record a job's end; with ``owner``, only while that owner still holds it (a replica whose lease was
        taken over must not overwrite the new owner's run). True when the row was written."""
        now = time.time()
        sets, args = "status=?, message=?, finished_at=?, updated_at=?", [status, message[:1000], now, now]
        if figures is not None:
            sets += ", figures=?"
            args.append(_json(figures))
        where, key = ("id=? AND owner=? AND status='running'", (job_id, owner)) if owner else ("id=?", (job_id,))
        with self.db.transaction() as con:
            written = con.execute(f"UPDATE jobs SET {sets} WHERE {where}", (*args, *key)).rowcount == 1
        with self._finishes_lock:
            self._finishes = (self._finishes + 1) % PRUNE_EVERY
            due = self._finishes == 0
        if due:
            try:
                self.prune(self.keep_per_project, self.keep_days)
            except DATABASE_ERRORS as exc:  # the job is finished; its old neighbours can go next time
                log.warning("pruning finished jobs failed: %s", exc)
        return written

    def prune(self, keep_per_project: int, keep_days: float) -> int:
        """Delete finished jobs older than ``keep_days`` days that are not among the ``keep_per_project``
        newest finished jobs of their project; returns how many were deleted."""
        final = ",".join("?" * len(FINAL))
        with self.db.transaction() as con:
            cur = con.execute(
                f"DELETE FROM jobs WHERE status IN ({final}) AND COALESCE(finished_at, updated_at, created_at) < ? "
                "AND id NOT IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                f"(PARTITION BY project_id ORDER BY id DESC) AS newest FROM jobs WHERE status IN ({final})) AS ranked "
                "WHERE newest <= ?)",
                (*FINAL, time.time() - keep_days * 86400, *FINAL, keep_per_project),
            )
            return cur.rowcount

    def requeue(self, job_id: int, run_after: float, message: str, *, owner: str | None = None) -> None:
        """A running job back to the queue (to resume from its saved params at ``run_after``); with ``owner``,
        only while that owner holds it."""
        where, key = (
            ("id=? AND status='running' AND owner=?", (job_id, owner))
            if owner
            else ("id=? AND status='running'", (job_id,))
        )
        with self.db.transaction() as con:
            con.execute(
                "UPDATE jobs SET status='queued', owner=NULL, lease_until=NULL, restarts=restarts+1, run_after=?, "
                f"message=?, updated_at=? WHERE {where}",
                (run_after, message[:1000], time.time(), *key),
            )

    def request_cancel(self, job_id: int) -> dict | None:
        """Queued: cancelled now. Running: flagged (the job stops at its next check). Final: unchanged."""
        now = time.time()
        with self.db.transaction() as con:
            con.execute(
                "UPDATE jobs SET status='cancelled', cancel_requested=1, finished_at=?, updated_at=?, "
                "message='cancelled before it started' WHERE id=? AND status='queued'",
                (now, now, job_id),
            )
            con.execute(
                "UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=? AND status='running'", (now, job_id)
            )
        return self.get(job_id)

    def cancel_requested(self, job_id: int) -> bool:
        rows = self.db.query("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(rows and rows[0][0])

    def postpone(self, job_id: int, run_after: float) -> None:
        with self.db.transaction() as con:
            con.execute(
                "UPDATE jobs SET run_after=?, updated_at=? WHERE id=? AND status='queued'",
                (run_after, time.time(), job_id),
            )

    def recover(self, is_stale: Callable[[str | None], bool | None], resumable: frozenset[str]) -> list[int]:
        """Running jobs whose owner is gone: ``resumable`` kinds back to ``queued``, others ``interrupted``.

        ``is_stale(owner)`` judges an owner: True (gone), False (alive), or None when it cannot be judged from
        here (a replica on another machine): then the job's lease decides, gone once it has lapsed. On
        PostgreSQL the running rows are locked while judged, skipping those another replica is recovering.
        """
        now = time.time()
        recovered = []
        with self.db.transaction() as con:
            rows = con.execute(
                "SELECT id, kind, owner, cancel_requested, lease_until FROM jobs WHERE status='running' "
                f"ORDER BY id{self.db.dialect.skip_locked}"
            ).fetchall()
            for job_id, kind, owner, cancel, lease_until in rows:
                stale = is_stale(owner)
                if stale is None:
                    stale = lease_until is not None and lease_until < now
                    gone = f"replica {owner} stopped renewing its lease"
                else:
                    gone = f"process {owner} stopped"
                if not stale:
                    continue
                recovered.append(job_id)
                if cancel:
                    con.execute(
                        "UPDATE jobs SET status='cancelled', finished_at=?, updated_at=?, message=? WHERE id=?",
                        (now, now, f"cancelled (its {gone})", job_id),
                    )
                elif kind in resumable:
                    con.execute(
                        "UPDATE jobs SET status='queued', owner=NULL, lease_until=NULL, restarts=restarts+1, "
                        "updated_at=?, message=? WHERE id=?",
                        (now, f"interrupted ({gone}); resuming", job_id),
                    )
                else:
                    con.execute(
                        "UPDATE jobs SET status='interrupted', finished_at=?, updated_at=?, message=? WHERE id=?",
                        (now, now, f"interrupted: its {gone}; the serving model is unchanged", job_id),
                    )
        return recovered
