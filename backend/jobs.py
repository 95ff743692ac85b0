"""Background jobs of the backend process: records in SQLite, one worker thread for model work.

* A job is a row of the ``jobs`` table (``MODEL_DIR/dcsam-backend.sqlite3``): kind, project, state
  (``queued`` | ``running`` | ``done`` | ``failed`` | ``cancelled`` | ``interrupted`` | ``skipped``),
  progress (done / total), figures (JSON), the parameters it resumes from, its owner process.
* :class:`JobRunner` runs queued jobs one at a time in one thread (``dcsam-jobs``). Model work inside a
  job takes :attr:`backend.model.ModelHolder.inference_lock`, the lock ``/predict`` takes too, so the
  accelerator has one writer; downloads and Label Studio calls run in thread pools inside the job.
* A restart (crash, SIGKILL, redeploy) leaves ``running`` rows whose owner process is gone. When a runner
  starts, it re-queues interrupted pre-annotation jobs (they resume from their saved cursor) and marks
  other interrupted jobs ``interrupted``.
* Cancelling a queued job is immediate; a running job stops at its next check point.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .state import State

log = logging.getLogger(__name__)

FINAL = ("done", "failed", "cancelled", "interrupted", "skipped")
COLUMNS = ("id", "kind", "project_id", "status", "message", "created_at", "finished_at", "params", "progress_done",
           "progress_total", "figures", "started_at", "updated_at", "owner", "cancel_requested", "run_after", "restarts")
RESUMABLE = {"preannotate"}


class JobCancelled(Exception):
    """Raised inside a job when someone asked to cancel it."""


class JobError(Exception):
    """A job cannot run (bad input, missing configuration): recorded as ``failed`` with this message."""


def _row(r: tuple) -> dict:
    job = dict(zip(COLUMNS, r))
    for key in ("params", "figures"):
        try:
            job[key] = json.loads(job[key] or "{}")
        except ValueError:
            job[key] = {}
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


class JobStore:
    """SQL for job records (shares the State's SQLite file and connections)."""

    def __init__(self, state: State):
        self.state = state

    def add(self, kind: str, project_id: int | None, params: dict | None = None, *, run_after: float = 0.0,
            status: str = "queued", message: str = "") -> int:
        now = time.time()
        with self.state._tx() as con:
            cur = con.execute(
                "INSERT INTO jobs(kind, project_id, status, message, created_at, params, run_after, updated_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, project_id, status, message, now, json.dumps(params or {}), run_after, now))
            return int(cur.lastrowid)

    def get(self, job_id: int) -> dict | None:
        rows = self.state._query(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id=?", (job_id,))
        return _row(rows[0]) if rows else None

    def list(self, *, limit: int = 50, project_id: int | None = None, status: str | None = None,
             kind: str | None = None) -> list[dict]:
        where, args = [], []
        for col, val in (("project_id", project_id), ("status", status), ("kind", kind)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = f"SELECT {', '.join(COLUMNS)} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return [_row(r) for r in self.state._query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def open_job(self, kind: str, project_id: int | None) -> dict | None:
        """The queued or running job of this kind for this project, if any (newest first)."""
        rows = self.state._query(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE kind=? AND project_id IS ? AND "
                                 "status IN ('queued', 'running') ORDER BY status='queued' DESC, id DESC LIMIT 1",
                                 (kind, project_id))
        return _row(rows[0]) if rows else None

    def claim(self, owner: str, kinds: tuple[str, ...]) -> dict | None:
        """Atomically take the oldest due queued job of one of ``kinds``."""
        now = time.time()
        marks = ",".join("?" * len(kinds))
        with self.state._tx() as con:
            row = con.execute(f"SELECT id FROM jobs WHERE status='queued' AND run_after<=? AND kind IN ({marks}) "
                              "ORDER BY run_after, id LIMIT 1", (now, *kinds)).fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET status='running', owner=?, started_at=COALESCE(started_at, ?), updated_at=? "
                        "WHERE id=?", (owner, now, now, row[0]))
        return self.get(row[0])

    def update(self, job_id: int, *, done: int | None = None, total: int | None = None, figures: dict | None = None,
               params: dict | None = None, message: str | None = None) -> None:
        sets, args = ["updated_at=?"], [time.time()]
        if done is not None:
            sets.append("progress_done=?")
            args.append(int(done))
        if total is not None:
            sets.append("progress_total=?")
            args.append(int(total))
        if figures is not None:
            sets.append("figures=?")
            args.append(json.dumps(figures, default=_json_default))
        if params is not None:
            sets.append("params=?")
            args.append(json.dumps(params, default=_json_default))
        if message is not None:
            sets.append("message=?")
            args.append(message[:1000])
        with self.state._tx() as con:
            con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))

    def finish(self, job_id: int, status: str, message: str = "", figures: dict | None = None) -> None:
        now = time.time()
        with self.state._tx() as con:
            if figures is None:
                con.execute("UPDATE jobs SET status=?, message=?, finished_at=?, updated_at=? WHERE id=?",
                            (status, message[:1000], now, now, job_id))
            else:
                con.execute("UPDATE jobs SET status=?, message=?, finished_at=?, updated_at=?, figures=? WHERE id=?",
                            (status, message[:1000], now, now, json.dumps(figures, default=_json_default), job_id))

    def request_cancel(self, job_id: int) -> dict | None:
        """Queued: cancelled now. Running: flagged (the job stops at its next check). Final: unchanged."""
        now = time.time()
        with self.state._tx() as con:
            con.execute("UPDATE jobs SET status='cancelled', cancel_requested=1, finished_at=?, updated_at=?, "
                        "message='cancelled before it started' WHERE id=? AND status='queued'", (now, now, job_id))
            con.execute("UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=? AND status='running'", (now, job_id))
        return self.get(job_id)

    def cancel_requested(self, job_id: int) -> bool:
        rows = self.state._query("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(rows and rows[0][0])

    def postpone(self, job_id: int, run_after: float) -> None:
        with self.state._tx() as con:
            con.execute("UPDATE jobs SET run_after=?, updated_at=? WHERE id=? AND status='queued'",
                        (run_after, time.time(), job_id))

    def recover(self, is_stale: Callable[[str | None], bool]) -> list[int]:
        """Running jobs whose owner is gone: resumable ones back to ``queued``, others ``interrupted``."""
        now = time.time()
        recovered = []
        with self.state._tx() as con:
            rows = con.execute("SELECT id, kind, owner, cancel_requested FROM jobs WHERE status='running'").fetchall()
            for job_id, kind, owner, cancel in rows:
                if not is_stale(owner):
                    continue
                recovered.append(job_id)
                if cancel:
                    con.execute("UPDATE jobs SET status='cancelled', finished_at=?, updated_at=?, message=? WHERE id=?",
                                (now, now, f"cancelled (its process {owner} stopped)", job_id))
                elif kind in RESUMABLE:
                    con.execute("UPDATE jobs SET status='queued', owner=NULL, restarts=restarts+1, updated_at=?, "
                                "message=? WHERE id=?", (now, f"interrupted (process {owner} stopped); resuming", job_id))
                else:
                    con.execute("UPDATE jobs SET status='interrupted', finished_at=?, updated_at=?, message=? WHERE id=?",
                                (now, now, f"interrupted: its process {owner} stopped; the serving model is unchanged",
                                 job_id))
        return recovered


def _json_default(obj: Any) -> Any:
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped: common right after a SIGKILL) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


@dataclass
class JobContext:
    """What a job handler gets: its record, progress / figure updates, and cancellation checks."""

    job: dict
    store: JobStore
    _last_write: float = 0.0
    _last_cancel_check: float = 0.0

    @property
    def id(self) -> int:
        return self.job["id"]

    @property
    def project_id(self) -> int | None:
        return self.job["project_id"]

    @property
    def params(self) -> dict:
        return self.job["params"]

    def report(self, *, done: int | None = None, total: int | None = None, figures: dict | None = None,
               params: dict | None = None, message: str | None = None, force: bool = False) -> None:
        """Record progress; writes at most ~4 times a second unless ``force`` or ``params`` (a resume point) is given."""
        now = time.monotonic()
        if not force and params is None and now - self._last_write < 0.25:
            return
        self._last_write = now
        if params is not None:
            self.job["params"] = params
        self.store.update(self.id, done=done, total=total, figures=figures, params=params, message=message)

    def check_cancel(self) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < 0.2:
            return
        self._last_cancel_check = now
        if self.store.cancel_requested(self.id):
            raise JobCancelled(f"job {self.id} was cancelled")


Handler = Callable[[JobContext], "tuple[str, str, dict] | None"]


class JobRunner:
    """One thread that runs queued jobs in order (started lazily, after any fork)."""

    def __init__(self, store: JobStore, handlers: dict[str, Handler], *, poll_s: float = 0.5, recheck_s: float = 5.0):
        self.store = store
        self.handlers = handlers
        self.poll_s = poll_s
        self.recheck_s = recheck_s  # how often an idle runner looks for jobs orphaned by a dead process
        self._last_recover = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.owner: str | None = None
        self.current: int | None = None

    def _is_stale(self, owner: str | None) -> bool:
        if not owner:
            return True
        try:
            host, pid, token = owner.rsplit(":", 2)
            pid_n = int(pid)
        except ValueError:
            return True
        if owner == self.owner:
            return False
        if host != socket.gethostname():
            return False  # another machine's job: it cannot be judged from here
        if pid_n == os.getpid():
            return True  # an earlier runner of this very process (e.g. an app rebuilt in the same process)
        return not _pid_alive(pid_n)

    def start(self) -> None:
        """Start the worker (idempotent); recovers jobs of dead processes first."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self.owner and \
                    self.owner.split(":")[1] == str(os.getpid()):
                return
            self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._recover()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="dcsam-jobs", daemon=True)
            self._thread.start()

    def _recover(self) -> None:
        self._last_recover = time.monotonic()
        recovered = self.store.recover(self._is_stale)
        if recovered:
            log.warning("jobs %s were interrupted (their process is gone): pre-annotation resumes, training is "
                        "marked interrupted", recovered)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.owner, tuple(self.handlers))
            except Exception:
                log.exception("job runner: cannot read the job table")
                job = None
            if job is None:
                if time.monotonic() - self._last_recover >= self.recheck_s:
                    try:  # a process that died while this one started (e.g. a zombie not yet reaped) is seen now
                        self._recover()
                    except Exception:
                        log.exception("job runner: recovering orphaned jobs failed")
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: dict) -> None:
        ctx = JobContext(job, self.store)
        self.current = job["id"]
        log.info("job %s (%s, project %s) started%s", job["id"], job["kind"], job["project_id"],
                 f" (resumed, restart {job['restarts']})" if job["restarts"] else "")
        try:
            out = self.handlers[job["kind"]](ctx)
            status, message, figures = out if out else ("done", "", None)
            self.store.finish(job["id"], status, message, figures)
            log.info("job %s (%s) %s: %s", job["id"], job["kind"], status, message)
        except JobCancelled as exc:
            self.store.finish(job["id"], "cancelled", str(exc))
            log.info("job %s (%s) cancelled", job["id"], job["kind"])
        except JobError as exc:
            self.store.finish(job["id"], "failed", str(exc))
            log.error("job %s (%s, project %s) failed: %s", job["id"], job["kind"], job["project_id"], exc)
        except Exception as exc:  # a job failure is recorded, never fatal to the server
            log.exception("job %s (%s, project %s) failed", job["id"], job["kind"], job["project_id"])
            self.store.finish(job["id"], "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Tests and the CLI: block until no job is queued (and due) or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [j for j in self.store.list(limit=1000) if j["status"] in ("queued", "running")
                    and j["kind"] in self.handlers and j["run_after"] <= time.time()]
            if not busy:
                return True
            time.sleep(0.05)
        return False
