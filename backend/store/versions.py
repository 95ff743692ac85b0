"""The ``versions``, ``model_versions`` and ``active_versions`` tables.

``versions``: every base model_version a process served (engine, how it was chosen).
``model_versions``: fine-tuned checkpoints, one row each; ``active_versions``: the one a project serves.
"""

from __future__ import annotations

import json
import time

from .database import Database

MODEL_VERSION_COLUMNS = ("version", "project_id", "parent", "path", "digest", "figures", "created_at")


class VersionStore:
    def __init__(self, db: Database):
        self.db = db

    # -- base versions ----------------------------------------------------------------------
    def record_base(self, version: str, engine: str, details: dict) -> None:
        now = time.time()
        with self.db.transaction() as con:
            con.execute(
                "INSERT INTO versions(version, engine, details, first_seen, last_seen) VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(version) DO UPDATE SET last_seen=excluded.last_seen, details=excluded.details",
                (version, engine, json.dumps(details, default=str), now, now),
            )

    def base_versions(self) -> list[str]:
        return [r[0] for r in self.db.query("SELECT version FROM versions ORDER BY last_seen DESC")]

    # -- fine-tuned versions ------------------------------------------------------------------
    def active(self, project_id: int) -> str | None:
        rows = self.db.query("SELECT version FROM active_versions WHERE project_id=?", (project_id,))
        return rows[0][0] if rows else None

    def info(self, version: str) -> dict | None:
        rows = self.db.query(
            f"SELECT {', '.join(MODEL_VERSION_COLUMNS)} FROM model_versions WHERE version=?", (version,)
        )
        if not rows:
            return None
        out = dict(zip(MODEL_VERSION_COLUMNS, rows[0]))
        out["figures"] = json.loads(out["figures"] or "{}")
        return out

    def of_project(self, project_id: int) -> list[str]:
        """The project's fine-tuned versions, newest first."""
        rows = self.db.query(
            "SELECT version FROM model_versions WHERE project_id=? ORDER BY created_at DESC", (project_id,)
        )
        return [r[0] for r in rows]

    def fine_tuned(self) -> list[str]:
        return [r[0] for r in self.db.query("SELECT version FROM model_versions ORDER BY created_at DESC")]

    def add_active(self, version: str, project_id: int, parent: str, path: str, digest: str, figures: dict) -> None:
        """Record a new fine-tuned version and make it the project's active one, in one transaction."""
        now = time.time()
        with self.db.transaction() as con:
            con.execute(
                f"INSERT INTO model_versions({', '.join(MODEL_VERSION_COLUMNS)}) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (version, project_id, parent, path, digest, json.dumps(figures, default=str), now),
            )
            _set_active(con, project_id, version, now)

    def restore(self, rows: list[tuple], active: dict[int, str]) -> None:
        """Re-record fine-tuned versions (``MODEL_VERSION_COLUMNS`` tuples; known ones are kept) and the
        projects' active ones, in one transaction (a rebuild from the checkpoints on disk)."""
        now = time.time()
        marks = ", ".join("?" * len(MODEL_VERSION_COLUMNS))
        with self.db.transaction() as con:
            con.executemany(
                f"INSERT INTO model_versions({', '.join(MODEL_VERSION_COLUMNS)}) VALUES({marks}) "
                "ON CONFLICT(version) DO NOTHING",
                rows,
            )
            for project_id, version in active.items():
                _set_active(con, project_id, version, now)

    def set_active(self, project_id: int, version: str) -> None:
        with self.db.transaction() as con:
            _set_active(con, project_id, version, time.time())


def _set_active(con, project_id: int, version: str, now: float) -> None:
    con.execute(
        "INSERT INTO active_versions(project_id, version, updated_at) VALUES(?, ?, ?) "
        "ON CONFLICT(project_id) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
        (project_id, version, now),
    )
