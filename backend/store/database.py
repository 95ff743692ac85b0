"""The backend's database: a SQLite file under ``MODEL_DIR`` (the default), or PostgreSQL shared by replicas.

``Database(model_dir)`` opens the SQLite file; ``Database(model_dir, "postgresql://...")`` (setting
``DCSAM_DATABASE_URL``) puts every table in PostgreSQL through psycopg 3, so several backend replicas
share projects, examples, jobs, the prediction ledger, versions and counters. The repository classes of
:mod:`backend.store` write one SQL text for both: ``?`` placeholders, ``ON CONFLICT`` upserts and
``RETURNING``, which both dialects understand; what differs lives here (:class:`Dialect`): column types,
the transaction start, row locks for claims, the schema check and which errors are transient.

Every write is one transaction (all or nothing). Each thread has its own connection (a psycopg connection
must not be shared by threads inside transactions), and a forked process opens new ones.

SQLite: WAL mode lets several gunicorn workers share the file. It holds Label Studio tokens passed by
``/setup``, so it is created readable by its owner only. Opening runs ``PRAGMA quick_check``: a damaged
file raises :class:`DatabaseDamaged` (the backend refuses to start on it) and :attr:`Database.was_empty`
says whether it held no tables (new, emptied, or replaced). A consistent copy can be taken while the
backend runs, WAL included, with SQLite's backup API, e.g.
``sqlite3 MODEL_DIR/dcsam-backend.sqlite3 ".backup /backups/dcsam-backend.sqlite3"``.

PostgreSQL: the schema is created (and migrated) under an advisory lock, so replicas starting together
do not race; back it up with ``pg_dump``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    "lease_until": "REAL",  # a running job's lease (epoch s), renewed by its live owner
}

FILE_NAME = "dcsam-backend.sqlite3"
SCHEMA_LOCK = 0x64637361  # the advisory lock replicas take while creating or migrating the schema

# SQLite result codes of a database that should work again by itself: busy, locked, read-only, I/O error,
# full, cannot open. Others ("no such column") are bugs.
TRANSIENT_SQLITE_CODES = frozenset({5, 6, 8, 10, 13, 14})
# PostgreSQL SQLSTATE classes and codes of trouble that passes: connection lost (08), insufficient resources
# such as a full disk (53), operator intervention such as a restart (57), system errors (58), and the
# serialization failure / deadlock / lock timeout a retry resolves.
TRANSIENT_PG_CLASSES = ("08", "53", "57", "58")
TRANSIENT_PG_CODES = frozenset({"40001", "40P01", "55P03"})


class DatabaseDamaged(Exception):
    """The SQLite file is not a readable database, or fails its integrity check."""


class Connection(Protocol):
    """What the repositories use of a connection: ``execute`` and ``executemany`` with ``?`` placeholders."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...


def _error_types() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # the PostgreSQL driver is optional (the ``scale`` extra)
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


# Every error our database can raise, whichever the dialect: ``except DATABASE_ERRORS``.
DATABASE_ERRORS: tuple[type[BaseException], ...] = _error_types()


def is_transient(exc: BaseException) -> bool:
    """True for database trouble that should pass by itself (locked, full, disconnected, restarted)."""
    if isinstance(exc, sqlite3.OperationalError):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in TRANSIENT_SQLITE_CODES
    if len(DATABASE_ERRORS) < 2 or not isinstance(exc, DATABASE_ERRORS[1]):
        return False
    import psycopg

    state = getattr(exc, "sqlstate", None) or ""
    if state:
        return state[:2] in TRANSIENT_PG_CLASSES or state in TRANSIENT_PG_CODES
    return isinstance(exc, psycopg.OperationalError)  # no SQLSTATE: the connection itself failed


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL for the repositories."""

    name: str
    skip_locked: str  # appended to a claim's SELECT: lock the row, skip those another replica holds

    def ddl(self, text: str) -> str:
        """The schema text (written for SQLite) in this dialect: 64-bit ids, double-precision times, identity."""
        if self.name == "sqlite":
            return text
        text = text.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        text = re.sub(r"\bINTEGER\b", "BIGINT", text)
        return re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)  # REAL is 4 bytes in PostgreSQL: no epoch seconds


SQLITE = Dialect("sqlite", "")
POSTGRESQL = Dialect("postgresql", " FOR UPDATE SKIP LOCKED")


class _PgConnection:
    """A psycopg connection that takes the repositories' ``?`` placeholders."""

    def __init__(self, con: Any):
        self.con = con

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")  # no statement of ours has a literal "?"

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if not args:
            return self.con.execute(sql)
        return self.con.execute(self._sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self.con.cursor()
        rows = [tuple(r) for r in rows]
        if rows:
            cur.executemany(self._sql(sql), rows)
        return cur


def redact(url: str) -> str:
    """A database URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Database:
    """The SQLite file (default) or a PostgreSQL database; a connection per thread (and per process)."""

    def __init__(self, model_dir: str | os.PathLike, url: str | None = None):
        self.dir = Path(model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = url or None
        self._local = threading.local()
        if self.url is not None:
            if not self.url.startswith(("postgresql://", "postgres://")):
                raise ValueError(f"DCSAM_DATABASE_URL={redact(self.url)!r}: only postgresql:// URLs are supported")
            self.dialect = POSTGRESQL
            self.path: Path | str = redact(self.url)  # where the state is, for logs
            self.was_empty = self._create_postgres()
            return
        self.dialect = SQLITE
        self.path = self.dir / FILE_NAME
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.was_empty = self._check()
        self.connection().executescript(SCHEMA)
        with self.transaction() as con:
            have = {r[1] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
            for name, decl in JOB_COLUMNS.items():
                if name not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

    def _create_postgres(self) -> bool:
        """Create or migrate the schema under an advisory lock; True when the database held none of it."""
        with self.transaction() as con:
            con.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            tables = con.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema=current_schema()"
            ).fetchone()[0]
            for statement in self.dialect.ddl(SCHEMA).split(";"):
                if statement.strip():
                    con.execute(statement)
            for name, decl in JOB_COLUMNS.items():
                con.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {self.dialect.ddl(decl)}")
        return tables == 0

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

    def connection(self) -> Any:
        """This thread's connection (``sqlite3.Connection``, or a psycopg one taking ``?`` placeholders)."""
        con = getattr(self._local, "con", None)
        if con is not None and getattr(self._local, "pid", None) == os.getpid():
            if self.url is None or not (con.con.closed or con.con.broken):
                return con
        if self.url is not None:
            import psycopg

            # a connection inherited through a fork is left alone: psycopg never closes one in a child process.
            # autocommit: a read is its own transaction; writes open one explicitly (transaction())
            con = _PgConnection(psycopg.connect(self.url, autocommit=True, connect_timeout=30))
        else:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        self._local.con, self._local.pid = con, os.getpid()
        return con

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed at the end, rolled back on an exception.

        SQLite: ``BEGIN IMMEDIATE`` serialises every writer. PostgreSQL: ``BEGIN`` (read committed); the few
        read-then-write steps that must not interleave across replicas also take :meth:`serialize`.
        """
        con = self.connection()
        if self.url is None:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return
        with con.con.transaction():
            yield con

    def serialize(self, con: Connection, name: str) -> None:
        """Inside a transaction: wait for, and hold until its end, the lock ``name`` (PostgreSQL's advisory
        lock; nothing on SQLite, whose ``BEGIN IMMEDIATE`` already lets one writer in at a time)."""
        if self.url is not None:
            con.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self.connection().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one)."""
        con = getattr(self._local, "con", None)
        if con is not None and getattr(self._local, "pid", None) == os.getpid():
            (con.con if self.url is not None else con).close()
        self._local.con = None
