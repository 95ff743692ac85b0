"""The one job system of the backend process: records in the ``jobs`` table, worker threads by lane.

* A job is a row of the ``jobs`` table (:class:`backend.store.JobStore`): kind, project, state,
  progress, figures, the parameters it resumes from, its owner process.
* :class:`JobRunner` runs queued jobs in *lanes*, one thread each (``dcsam-jobs-<lane>``): a lane runs
  its kinds one at a time, in order. The ``model`` lane (pre-annotation, training) does model work
  under :attr:`backend.services.runtime.ModelRuntime.inference_lock`, the lock ``/predict`` takes too;
  the ``sync`` lane re-reads examples from Label Studio, so a long pre-annotation never delays it.
* A restart (crash, SIGKILL, redeploy) leaves ``running`` rows whose owner process is gone. When a runner
  starts, and every ``recheck_s`` while idle, it re-queues interrupted jobs of resumable kinds (they
  resume from their saved cursor, or simply run again) and marks the others ``interrupted``.
* Replicas sharing a PostgreSQL database (``DCSAM_DATABASE_URL``) claim jobs with row locks, so each job
  runs on one replica. A claimed job has a lease (``DCSAM_JOB_LEASE_S``) that a heartbeat thread
  (``dcsam-jobs-lease``) renews every third of it; an owner on another machine cannot be judged by its pid,
  so its job is recovered once the lease lapses. A runner that finds its lease taken over stops the job at
  its next check point (:class:`JobLost`) and records nothing: the job is the new owner's.
* Cancelling a queued job is immediate; a running job stops at its next check point.
* The lanes survive their own bookkeeping failing (disk full, a locked database): a write that records a
  job's outcome is retried with backoff until it lands, and a resumable job whose handler hit such a
  database error goes back to the queue and resumes from its cursor once the database works again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..store import JobStore, is_transient

log = logging.getLogger(__name__)

MAX_RETRY_S = 60.0  # the longest wait between two tries of a failing database write

# Lane threads of this process by owner name: an owner of this process whose thread is gone is stale.
_LANE_THREADS: dict[str, threading.Thread] = {}


class JobCancelled(Exception):
    """Raised inside a job when someone asked to cancel it."""


class JobLost(JobCancelled):
    """Raised inside a job whose lease another replica took over: it stops, and records nothing."""


class JobError(Exception):
    """A job cannot run (bad input, missing configuration): recorded as ``failed`` with this message."""


def pid_alive(pid: int) -> bool:
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


def _database_trouble(exc: BaseException) -> bool:
    """Our own database failed in a way that passes (locked, full, disconnected): not the job's fault."""
    return is_transient(exc)


@dataclass
class JobContext:
    """What a job handler gets: its record, progress / figure updates, and cancellation checks."""

    job: dict
    store: JobStore
    _last_write: float = 0.0
    _last_cancel_check: float = 0.0
    # set by the runner's heartbeat when another replica took the job over (its lease lapsed)
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> int:
        return self.job["id"]

    @property
    def project_id(self) -> int | None:
        return self.job["project_id"]

    @property
    def params(self) -> dict:
        return self.job["params"]

    def report(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        figures: dict | None = None,
        params: dict | None = None,
        message: str | None = None,
        force: bool = False,
    ) -> None:
        """Record progress; writes at most ~4 times a second unless ``force`` or ``params`` (a resume point)
        is given."""
        now = time.monotonic()
        if not force and params is None and now - self._last_write < 0.25:
            return
        self._last_write = now
        if params is not None:
            self.job["params"] = params
        self.store.update(self.id, done=done, total=total, figures=figures, params=params, message=message)

    def check_cancel(self) -> None:
        """Raise :class:`JobCancelled` when someone asked to cancel the job, :class:`JobLost` when another
        replica took it over."""
        if self.lost.is_set():
            raise JobLost(f"job {self.id} was taken over by another replica (its lease lapsed)")
        now = time.monotonic()
        if now - self._last_cancel_check < 0.2:
            return
        self._last_cancel_check = now
        if self.store.cancel_requested(self.id):
            raise JobCancelled(f"job {self.id} was cancelled")


Handler = Callable[[JobContext], "tuple[str, str, dict | None] | None"]


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its handler, its lane, and whether an interrupted run is queued again."""

    handler: Handler
    lane: str = "model"
    resumable: bool = False


class JobRunner:
    """Worker threads, one per lane, that run queued jobs (started lazily, after any fork)."""

    def __init__(
        self,
        store: JobStore,
        kinds: dict[str, JobKind],
        *,
        poll_s: float = 0.5,
        recheck_s: float = 5.0,
        retry_s: float = 1.0,
        lease_s: float | None = None,
    ):
        self.store = store
        self.lease_s = lease_s  # a claimed job's lease; None: the store's (DCSAM_JOB_LEASE_S)
        self.kinds = kinds
        self.poll_s = poll_s
        self.recheck_s = recheck_s  # how often an idle runner looks for jobs orphaned by a dead process
        self.retry_s = retry_s  # first wait after a failed database write, doubled up to MAX_RETRY_S
        self.lanes: dict[str, tuple[str, ...]] = {}
        for name, kind in kinds.items():
            self.lanes[kind.lane] = (*self.lanes.get(kind.lane, ()), name)
        self._resumable = frozenset(name for name, kind in kinds.items() if kind.resumable)
        self._last_recover = 0.0
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._wake = {lane: threading.Event() for lane in self.lanes}
        self._stop = threading.Event()
        self.owner: str | None = None
        self.current: dict[str, int | None] = dict.fromkeys(self.lanes)
        self._db_failures: dict[int, int] = {}  # job id -> consecutive database failures, for its backoff
        self._contexts: dict[str, JobContext] = {}  # lane -> the job it runs, for the heartbeat
        self._heartbeat: threading.Thread | None = None

    def _is_stale(self, owner: str | None) -> bool | None:
        """True when ``owner`` is gone, False while it runs, None when only its lease can tell (another host)."""
        if not owner:
            return True
        try:
            host, pid, _token = owner.rsplit(":", 2)
            pid_n = int(pid)
        except ValueError:
            return True
        if host != socket.gethostname():
            return None  # another machine's job: its pid means nothing here, its lease decides
        if pid_n == os.getpid():  # this process: stale once the lane thread that claimed it is gone
            thread = _LANE_THREADS.get(owner)
            return thread is None or not thread.is_alive()
        return not pid_alive(pid_n)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads.values())

    def start(self) -> None:
        """Start the lanes' threads (idempotent); a lane whose thread is gone is started again, after its
        jobs were recovered like those of a dead process."""
        with self._lock:
            self._start_lanes()

    def _revive(self) -> None:
        """From a live lane: start again a lane whose thread ended, unless the runner is stopping."""
        with self._lock:
            if not self._stop.is_set():
                self._start_lanes()

    def _start_lanes(self) -> None:  # with self._lock held
        ours = self.owner is not None and self.owner.split(":")[1] == str(os.getpid())
        alive = {lane: t for lane, t in self._threads.items() if ours and t.is_alive()}
        if len(alive) == len(self.lanes):
            return
        # A new owner name: the jobs a dead lane thread held under the old one are now stale.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        for lane, thread in alive.items():
            _LANE_THREADS[self._lane_owner(lane)] = thread
        self._recover()
        self._stop.clear()
        for lane in self.lanes:
            if lane in alive:
                continue
            thread = threading.Thread(target=self._loop, args=(lane,), name=f"dcsam-jobs-{lane}", daemon=True)
            self._threads[lane] = thread
            _LANE_THREADS[self._lane_owner(lane)] = thread
            thread.start()
        if self._heartbeat is None or not self._heartbeat.is_alive() or not ours:
            self._heartbeat = threading.Thread(target=self._renew_leases, name="dcsam-jobs-lease", daemon=True)
            self._heartbeat.start()

    @property
    def lease(self) -> float:
        """Seconds a claimed job's lease lasts."""
        return self.store.lease_s if self.lease_s is None else self.lease_s

    def _renew_leases(self) -> None:
        """The heartbeat: renew the lease of each job this runner runs, every third of the lease; a job whose
        lease another replica took over is flagged lost (it stops at its next check point)."""
        while not self._stop.wait(self.lease / 3):
            for lane, ctx in list(self._contexts.items()):
                try:
                    if not self.store.renew(ctx.id, ctx.job["owner"], self.lease) and not ctx.lost.is_set():
                        if self._contexts.get(lane) is ctx:  # not finished meanwhile
                            log.error("job %s: another replica took it over (its lease lapsed); stopping it", ctx.id)
                            ctx.lost.set()
                except Exception:  # the database is down: the lease may lapse, and the job be taken over
                    log.exception("job %s: renewing its lease failed", ctx.id)

    def _lane_owner(self, lane: str) -> str:
        return f"{self.owner}-{lane}"

    def _recover(self) -> None:
        self._last_recover = time.monotonic()
        recovered = self.store.recover(self._is_stale, self._resumable)
        if recovered:
            log.warning(
                "jobs %s were interrupted (their process is gone, or its lease lapsed): %s resume, other kinds are "
                "marked interrupted",
                recovered,
                sorted(self._resumable),
            )

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads.values():
            thread.join(timeout)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout)

    def join(self, timeout: float, lane: str | None = None) -> bool:
        """Wait for a lane's thread (or every lane's) to end, after :meth:`stop` or a job that killed it;
        True when they have ended."""
        deadline = time.monotonic() + timeout
        threads = [t for name, t in self._threads.items() if lane is None or name == lane]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def wake(self, kind: str | None = None) -> None:
        for lane, event in self._wake.items():
            if kind is None or kind in self.lanes[lane]:
                event.set()

    def _loop(self, lane: str) -> None:
        kinds = self.lanes[lane]
        wake = self._wake[lane]
        failures = 0  # consecutive failed claims: the wait grows so a broken database is not hammered
        while not self._stop.is_set():
            try:
                job = self.store.claim(self._lane_owner(lane), kinds, self.lease)
                failures = 0
            except Exception:
                failures += 1
                log.exception("job runner: cannot claim a job from the job table (try %d)", failures)
                self._stop.wait(self._backoff(failures))
                continue
            if job is None:
                if time.monotonic() - self._last_recover >= self.recheck_s:
                    try:  # a process that died while this one started (e.g. a zombie not yet reaped) is seen now
                        self._recover()
                        if not all(t.is_alive() for t in self._threads.values()):
                            self._revive()  # a lane ended by something no handler catches: its jobs resume
                    except Exception:
                        log.exception("job runner: recovering orphaned jobs failed")
                wake.wait(self.poll_s)
                wake.clear()
                continue
            try:
                self._run(lane, job)
            except Exception:  # never let the lane die: its job row is recovered as a stale one
                log.exception("job runner: job %s escaped its bookkeeping", job["id"])

    def _backoff(self, attempt: int) -> float:
        return min(MAX_RETRY_S, self.retry_s * 2 ** (attempt - 1))

    def _run(self, lane: str, job: dict) -> None:
        ctx = JobContext(job, self.store)
        # the owner name it was claimed under (a revived lane renames the runner's owners, not this job's row)
        owner = job["owner"] or self._lane_owner(lane)
        job["owner"] = owner
        self._contexts[lane] = ctx
        self.current[lane] = job["id"]
        log.info(
            "job %s (%s, project %s) started%s",
            job["id"],
            job["kind"],
            job["project_id"],
            f" (resumed, restart {job['restarts']})" if job["restarts"] else "",
        )
        job_id, kind = job["id"], job["kind"]
        outcome: tuple[str, str, dict | None] | None = None  # None: paused, back in the queue
        try:
            try:
                out = self.kinds[kind].handler(ctx)
                outcome = out if out else ("done", "", None)
            except JobLost as exc:  # another replica runs it now: nothing of ours to record
                log.warning("job %s (%s) stopped here: %s", job_id, kind, exc)
            except JobCancelled as exc:
                outcome = ("cancelled", str(exc), None)
            except JobError as exc:
                log.error("job %s (%s, project %s) failed: %s", job_id, kind, job["project_id"], exc)
                outcome = ("failed", str(exc), None)
            except Exception as exc:  # a job failure is recorded, never fatal to the server
                if _database_trouble(exc):  # our own database (disk full, locked): not the job's fault
                    outcome = self._database_failed(job, exc, owner)
                else:
                    log.exception("job %s (%s, project %s) failed", job_id, kind, job["project_id"])
                    outcome = ("failed", f"{type(exc).__name__}: {exc}", None)
            if outcome is not None:
                status, message, figures = outcome
                written: list[bool] = []
                self._persist(
                    job_id, lambda: written.append(self.store.finish(job_id, status, message, figures, owner=owner))
                )
                self._db_failures.pop(job_id, None)
                if written and not written[-1]:
                    log.warning("job %s (%s) %s here, but another replica took it over meanwhile", job_id, kind, status)
                else:
                    log.info("job %s (%s) %s: %s", job_id, kind, status, message)
        finally:
            self.current[lane] = None
            self._contexts.pop(lane, None)

    def _database_failed(self, job: dict, exc: Exception, owner: str) -> tuple[str, str, None] | None:
        """A resumable job goes back to the queue, to resume after a backoff (None); another kind fails."""
        job_id = job["id"]
        reason = f"the backend's database failed ({exc})"
        if job["kind"] not in self._resumable:
            log.error("job %s (%s): %s", job_id, job["kind"], reason)
            return "failed", reason, None
        n = self._db_failures[job_id] = self._db_failures.get(job_id, 0) + 1
        delay = self._backoff(n)
        log.error("job %s (%s): %s; it resumes from its last saved point in %.1f s", job_id, job["kind"], reason, delay)
        message = f"paused: {reason}; resuming"
        self._persist(job_id, lambda: self.store.requeue(job_id, time.time() + delay, message, owner=owner))
        return None

    def _persist(self, job_id: int, write: Callable[[], None]) -> None:
        """Run a bookkeeping write until it lands (retried with backoff) or the runner stops; a row left
        ``running`` by a stopped runner is recovered by the next one."""
        attempt = 0
        while True:
            try:
                write()
                return
            except Exception:
                attempt += 1
                log.exception("job %s: recording its state failed (try %d); retrying", job_id, attempt)
            if self._stop.wait(self._backoff(attempt)):
                return

    def wait_idle(self, timeout: float = 60.0, soon_s: float = 5.0) -> bool:
        """Tests and the CLI: block until no job runs or is queued to run within ``soon_s`` seconds.

        Jobs queued further ahead (a debounced automatic fine-tune) do not count.
        """
        deadline = time.monotonic() + timeout
        kinds = tuple(self.kinds)
        while time.monotonic() < deadline:
            if not self.store.busy(kinds, time.time() + soon_s):
                return True
            time.sleep(0.05)
        return False
