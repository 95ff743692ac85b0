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
* Cancelling a queued job is immediate; a running job stops at its next check point.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..store import JobStore

log = logging.getLogger(__name__)

# Lane threads of this process by owner name: an owner of this process whose thread is gone is stale.
_LANE_THREADS: dict[str, threading.Thread] = {}


class JobCancelled(Exception):
    """Raised inside a job when someone asked to cancel it."""


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

    def __init__(self, store: JobStore, kinds: dict[str, JobKind], *, poll_s: float = 0.5, recheck_s: float = 5.0):
        self.store = store
        self.kinds = kinds
        self.poll_s = poll_s
        self.recheck_s = recheck_s  # how often an idle runner looks for jobs orphaned by a dead process
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

    def _is_stale(self, owner: str | None) -> bool:
        if not owner:
            return True
        try:
            host, pid, _token = owner.rsplit(":", 2)
            pid_n = int(pid)
        except ValueError:
            return True
        if host != socket.gethostname():
            return False  # another machine's job: it cannot be judged from here
        if pid_n == os.getpid():  # this process: stale once the lane thread that claimed it is gone
            thread = _LANE_THREADS.get(owner)
            return thread is None or not thread.is_alive()
        return not pid_alive(pid_n)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads.values())

    def start(self) -> None:
        """Start the lanes' threads (idempotent); recovers jobs of dead processes first."""
        with self._lock:
            if self.running and self.owner and self.owner.split(":")[1] == str(os.getpid()):
                return
            self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._recover()
            self._stop.clear()
            for lane in self.lanes:
                thread = threading.Thread(target=self._loop, args=(lane,), name=f"dcsam-jobs-{lane}", daemon=True)
                self._threads[lane] = thread
                _LANE_THREADS[self._lane_owner(lane)] = thread
                thread.start()

    def _lane_owner(self, lane: str) -> str:
        return f"{self.owner}-{lane}"

    def _recover(self) -> None:
        self._last_recover = time.monotonic()
        recovered = self.store.recover(self._is_stale, self._resumable)
        if recovered:
            log.warning(
                "jobs %s were interrupted (their process is gone): %s resume, other kinds are marked interrupted",
                recovered,
                sorted(self._resumable),
            )

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads.values():
            thread.join(timeout)

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
        while not self._stop.is_set():
            try:
                job = self.store.claim(self._lane_owner(lane), kinds)
            except Exception:
                log.exception("job runner: cannot read the job table")
                job = None
            if job is None:
                if time.monotonic() - self._last_recover >= self.recheck_s:
                    try:  # a process that died while this one started (e.g. a zombie not yet reaped) is seen now
                        self._recover()
                    except Exception:
                        log.exception("job runner: recovering orphaned jobs failed")
                wake.wait(self.poll_s)
                wake.clear()
                continue
            self._run(lane, job)

    def _run(self, lane: str, job: dict) -> None:
        ctx = JobContext(job, self.store)
        self.current[lane] = job["id"]
        log.info(
            "job %s (%s, project %s) started%s",
            job["id"],
            job["kind"],
            job["project_id"],
            f" (resumed, restart {job['restarts']})" if job["restarts"] else "",
        )
        try:
            out = self.kinds[job["kind"]].handler(ctx)
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
            self.current[lane] = None

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
