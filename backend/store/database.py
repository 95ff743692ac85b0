"""The backend's SQLite file under ``MODEL_DIR``: connections, transactions and the schema.

Every write is one transaction (all or nothing); WAL mode lets several gunicorn workers share the
file. It holds Label Studio tokens passed by ``/setup``, so it is created readable by its owner only.
Only the repository classes of :mod:`backend.store` use a :class:`Database`; each table has one owner.

Opening runs ``PRAGMA quick_check``: a damaged file raises :class:`DatabaseDamaged` (the backend refuses
to start on it) and :attr:`Database.was_empty` says whether it held no tables (new, emptied, or replaced).
A consistent copy can be taken while the backend runs, WAL included, with SQLite's backup API, e.g.
``sqlite3 MODEL_DIR/dcsam-backend.sqlite3 ".backup /backups/dcsam-backend.sqlite3"``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    label_config TEXT,
    hostname TEXT,
    access_token TEXT,
    extra_params TEXT,
    examples_rev INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    project_id INTEGER NOT NULL,
    control TEXT NOT NULL,
    label TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, control, label, annotation_id)
);
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    details TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    project_id INTEGER,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS model_versions (
    version TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    parent TEXT,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    figures TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS active_versions (project_id INTEGER PRIMARY KEY, version TEXT NOT NULL,
                                            updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS preannotated (
    project_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    job_id INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project_id, version, task_id)
);
CREATE TABLE IF NOT EXISTS annotation_counters (project_id INTEGER PRIMARY KEY,
                                                new_annotations INTEGER NOT NULL DEFAULT 0,
                                                last_event REAL NOT NULL DEFAULT 0);
"""

# columns added to ``jobs`` after the first release of this schema (migrated in place)
JOB_COLUMNS = {
    "params": "TEXT NOT NULL DEFAULT '{}'",
    "progress_done": "INTEGER NOT NULL DEFAULT 0",
    "progress_total": "INTEGER",
    "figures": "TEXT NOT NULL DEFAULT '{}'",
    "started_at": "REAL",
    "updated_at": "REAL",
    "owner": "TEXT",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "run_after": "REAL NOT NULL DEFAULT 0",
    "restarts": "INTEGER NOT NULL DEFAULT 0",
}

FILE_NAME = "dcsam-backend.sqlite3"


class DatabaseDamaged(Exception):
    """The SQLite file is not a readable database, or fails its integrity check."""


class Database:
    """One SQLite file; a connection per thread (and per process, after a fork)."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILE_NAME
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._local = threading.local()
        self.was_empty = self._check()
        self.connection().executescript(SCHEMA)
        with self.transaction() as con:
            have = {r[1] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
            for name, decl in JOB_COLUMNS.items():
                if name not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

    def _check(self) -> bool:
        """Refuse a damaged file (DatabaseDamaged); True when it holds no tables yet."""
        try:
            con = self.connection()
            problems = [str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            tables = con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            problems, tables = [str(exc)], 0
        if problems:
            con = getattr(self._local, "con", None)
            if con is not None:
                con.close()
                self._local.con = None
            lines = [line.strip() for text in problems for line in text.splitlines() if line.strip()]
            detail = "; ".join(lines[:3]) + (f"; {len(lines) - 3} more problem(s)" if len(lines) > 3 else "")
            raise DatabaseDamaged(
                f"{self.path} is damaged ({detail}). The backend does not start on it: restore "
                "a backup of it, or move it away to start with an empty state (fine-tuned versions are then "
                "recovered from the checkpoints under MODEL_DIR/<project>/)"
            )
        return tables == 0

    def connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con, self._local.pid = con, os.getpid()
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self.connection().execute(sql, tuple(args)).fetchall()
