"""Backend state in one SQLite file under ``MODEL_DIR``: projects, examples, versions, jobs, settings.

Every write is one transaction (all or nothing); WAL mode lets several gunicorn workers share it.
The file holds Label Studio tokens passed by ``/setup``, so it is created readable by its owner only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
CREATE TABLE IF NOT EXISTS active_versions (project_id INTEGER PRIMARY KEY, version TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS preannotated (
    project_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    job_id INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project_id, version, task_id)
);
CREATE TABLE IF NOT EXISTS annotation_counters (project_id INTEGER PRIMARY KEY, new_annotations INTEGER NOT NULL DEFAULT 0,
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


def parse_project_id(value: Any) -> int | None:
    """``"12.1719999999"`` (LS's ``<id>.<created_at>``), ``12`` or ``"12"`` -> 12; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, dict):
        return parse_project_id(value.get("id"))
    if isinstance(value, str):
        head = value.strip().split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


class State:
    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "dcsam-backend.sqlite3"
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._local = threading.local()
        self._con().executescript(SCHEMA)
        with self._tx() as con:
            have = {r[1] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
            for name, decl in JOB_COLUMNS.items():
                if name not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con, self._local.pid = con, os.getpid()
        return con

    class _Tx:
        def __init__(self, con: sqlite3.Connection):
            self.con = con

        def __enter__(self) -> sqlite3.Connection:
            self.con.execute("BEGIN IMMEDIATE")
            return self.con

        def __exit__(self, exc_type, exc, tb) -> None:
            self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self) -> "State._Tx":
        return State._Tx(self._con())

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self._con().execute(sql, tuple(args)).fetchall()

    # -- settings --------------------------------------------------------------------------
    def set_setting(self, key: str, value: Any) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO settings(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, json.dumps(value)))

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM settings WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default

    # -- projects --------------------------------------------------------------------------
    def save_project(self, project_id: int, *, label_config: str | None = None, hostname: str | None = None,
                     access_token: str | None = None, extra_params: Any = None) -> None:
        """Insert or update; fields given as None keep their stored value."""
        now = time.time()
        extra = json.dumps(extra_params) if extra_params is not None else None
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO projects(id, updated_at) VALUES(?, ?)", (project_id, now))
            con.execute(
                "UPDATE projects SET label_config=COALESCE(?, label_config), hostname=COALESCE(?, hostname), "
                "access_token=COALESCE(?, access_token), extra_params=COALESCE(?, extra_params), updated_at=? WHERE id=?",
                (label_config, hostname, access_token, extra, now, project_id),
            )

    def project(self, project_id: int) -> dict | None:
        rows = self._query("SELECT label_config, hostname, access_token, extra_params, examples_rev FROM projects WHERE id=?",
                           (project_id,))
        if not rows:
            return None
        label_config, hostname, token, extra, rev = rows[0]
        return {"label_config": label_config, "hostname": hostname, "access_token": token,
                "extra_params": json.loads(extra) if extra else None, "examples_rev": rev}

    def bump_examples_rev(self, project_id: int) -> int:
        """Mark the project's examples stale (a webhook said its annotations changed)."""
        now = time.time()
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO projects(id, updated_at) VALUES(?, ?)", (project_id, now))
            con.execute("UPDATE projects SET examples_rev = examples_rev + 1, updated_at=? WHERE id=?", (now, project_id))
            return con.execute("SELECT examples_rev FROM projects WHERE id=?", (project_id,)).fetchone()[0]

    def examples_rev(self, project_id: int) -> int:
        rows = self._query("SELECT examples_rev FROM projects WHERE id=?", (project_id,))
        return rows[0][0] if rows else 0

    def delete_project(self, project_id: int) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM examples WHERE project_id=?", (project_id,))
            con.execute("DELETE FROM projects WHERE id=?", (project_id,))

    # -- examples --------------------------------------------------------------------------
    def set_examples(self, project_id: int, rows: list[tuple[str, str, int, int, str]]) -> None:
        """Replace the project's examples: rows of (control, label, annotation_id, task_id, updated_at)."""
        with self._tx() as con:
            con.execute("DELETE FROM examples WHERE project_id=?", (project_id,))
            con.executemany(
                "INSERT OR REPLACE INTO examples(project_id, control, label, annotation_id, task_id, updated_at) "
                "VALUES(?, ?, ?, ?, ?, ?)", [(project_id, *r) for r in rows])

    def examples(self, project_id: int) -> list[dict]:
        rows = self._query("SELECT control, label, annotation_id, task_id, updated_at FROM examples WHERE project_id=? "
                           "ORDER BY control, label, updated_at DESC", (project_id,))
        return [dict(zip(("control", "label", "annotation_id", "task_id", "updated_at"), r)) for r in rows]

    # -- versions --------------------------------------------------------------------------
    def record_version(self, version: str, engine: str, details: dict) -> None:
        now = time.time()
        with self._tx() as con:
            con.execute(
                "INSERT INTO versions(version, engine, details, first_seen, last_seen) VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(version) DO UPDATE SET last_seen=excluded.last_seen, details=excluded.details",
                (version, engine, json.dumps(details, default=str), now, now))

    def versions(self) -> list[str]:
        return [r[0] for r in self._query("SELECT version FROM versions ORDER BY last_seen DESC")]

    # -- jobs ------------------------------------------------------------------------------
    def add_job(self, kind: str, project_id: int | None, status: str = "queued", message: str = "") -> int:
        with self._tx() as con:
            cur = con.execute("INSERT INTO jobs(kind, project_id, status, message, created_at) VALUES(?, ?, ?, ?, ?)",
                              (kind, project_id, status, message, time.time()))
            return int(cur.lastrowid)

    def finish_job(self, job_id: int, status: str, message: str = "") -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET status=?, message=?, finished_at=? WHERE id=?", (status, message, time.time(), job_id))

    def jobs(self, limit: int = 50) -> list[dict]:
        rows = self._query("SELECT id, kind, project_id, status, message, created_at, finished_at FROM jobs "
                           "ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(("id", "kind", "project_id", "status", "message", "created_at", "finished_at"), r)) for r in rows]

    # -- annotation counters (automatic fine-tuning) ------------------------------------------
    def bump_annotation_counter(self, project_id: int, n: int = 1) -> int:
        now = time.time()
        with self._tx() as con:
            con.execute("INSERT INTO annotation_counters(project_id, new_annotations, last_event) VALUES(?, 0, ?) "
                        "ON CONFLICT(project_id) DO NOTHING", (project_id, now))
            con.execute("UPDATE annotation_counters SET new_annotations=new_annotations+?, last_event=? WHERE project_id=?",
                        (n, now, project_id))
            return con.execute("SELECT new_annotations FROM annotation_counters WHERE project_id=?",
                               (project_id,)).fetchone()[0]

    def reset_annotation_counter(self, project_id: int) -> None:
        with self._tx() as con:
            con.execute("UPDATE annotation_counters SET new_annotations=0 WHERE project_id=?", (project_id,))
