"""The backend's persistent state: a SQLite file (default) or PostgreSQL, one repository class per table
(or group of tables).

Nothing outside this package writes SQL. :class:`Store` opens the database and hands out the repositories.
"""

from __future__ import annotations

import os

from ..settings import BackendSettings
from .database import DATABASE_ERRORS, Database, is_transient
from .examples import ExampleStore
from .jobs import FINAL, JobStore
from .ledger import PredictionLedger
from .projects import ProjectStore
from .versions import VersionStore

# the settings a Store reads from the environment when it is not given them
_ENV = ("DCSAM_DATABASE_URL", "DCSAM_JOB_LEASE_S")


class Store:
    def __init__(
        self, model_dir: str | os.PathLike, database_url: str | None = None, *, job_lease_s: float | None = None
    ):
        """``database_url``: ``postgresql://...`` for PostgreSQL, ``""`` for the SQLite file under ``model_dir``,
        None for what ``DCSAM_DATABASE_URL`` says (unset: SQLite). ``job_lease_s``: None reads
        ``DCSAM_JOB_LEASE_S`` (default 60)."""
        env = BackendSettings.from_env({k: os.environ[k] for k in _ENV if k in os.environ})
        self.db = Database(model_dir, env.database_url if database_url is None else database_url)
        self.path = self.db.path
        self.projects = ProjectStore(self.db)
        self.examples = ExampleStore(self.db)
        self.versions = VersionStore(self.db)
        self.jobs = JobStore(self.db)
        self.jobs.lease_s = env.job_lease_s if job_lease_s is None else job_lease_s
        self.ledger = PredictionLedger(self.db, self.jobs)


__all__ = [
    "DATABASE_ERRORS",
    "FINAL",
    "Database",
    "ExampleStore",
    "JobStore",
    "PredictionLedger",
    "ProjectStore",
    "Store",
    "VersionStore",
    "is_transient",
]
