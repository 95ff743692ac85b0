"""The backend's persistent state: one SQLite file, one repository class per table (or group of tables).

Nothing outside this package writes SQL. :class:`Store` opens the file and hands out the repositories.
"""

from __future__ import annotations

import os

from .database import Database
from .examples import ExampleStore
from .jobs import FINAL, JobStore
from .ledger import PredictionLedger
from .projects import ProjectStore
from .versions import VersionStore


class Store:
    def __init__(self, model_dir: str | os.PathLike):
        self.db = Database(model_dir)
        self.path = self.db.path
        self.projects = ProjectStore(self.db)
        self.examples = ExampleStore(self.db)
        self.versions = VersionStore(self.db)
        self.jobs = JobStore(self.db)
        self.ledger = PredictionLedger(self.db, self.jobs)


__all__ = ["FINAL", "Database", "ExampleStore", "JobStore", "PredictionLedger", "ProjectStore", "Store", "VersionStore"]
