"""The ``projects`` and ``annotation_counters`` tables: what /setup and webhooks tell about a project."""

from __future__ import annotations

import json
import time
from typing import Any

from .database import Database


class ProjectStore:
    def __init__(self, db: Database):
        self.db = db

    def save(
        self,
        project_id: int,
        *,
        label_config: str | None = None,
        hostname: str | None = None,
        access_token: str | None = None,
        extra_params: Any = None,
    ) -> None:
        """Insert or update; fields given as None keep their stored value."""
        now = time.time()
        extra = json.dumps(extra_params) if extra_params is not None else None
        with self.db.transaction() as con:
            con.execute(
                "INSERT INTO projects(id, updated_at) VALUES(?, ?) ON CONFLICT(id) DO NOTHING", (project_id, now)
            )
            con.execute(
                "UPDATE projects SET label_config=COALESCE(?, label_config), hostname=COALESCE(?, hostname), "
                "access_token=COALESCE(?, access_token), extra_params=COALESCE(?, extra_params), updated_at=? "
                "WHERE id=?",
                (label_config, hostname, access_token, extra, now, project_id),
            )

    def get(self, project_id: int) -> dict | None:
        rows = self.db.query(
            "SELECT label_config, hostname, access_token, extra_params, examples_rev FROM projects WHERE id=?",
            (project_id,),
        )
        if not rows:
            return None
        label_config, hostname, token, extra, rev = rows[0]
        return {
            "label_config": label_config,
            "hostname": hostname,
            "access_token": token,
            "extra_params": json.loads(extra) if extra else None,
            "examples_rev": rev,
        }

    def overview(self) -> list[dict]:
        """Every project set up here, by id: what a status page may show (never the access token)."""
        rows = self.db.query("SELECT id, label_config, hostname, examples_rev, updated_at FROM projects ORDER BY id")
        return [
            {"id": pid, "label_config": cfg, "hostname": host, "examples_rev": rev, "updated_at": updated}
            for pid, cfg, host, rev, updated in rows
        ]

    def bump_examples_rev(self, project_id: int) -> int:
        """Mark the project's examples stale (a webhook said its annotations changed)."""
        now = time.time()
        with self.db.transaction() as con:
            con.execute(
                "INSERT INTO projects(id, updated_at) VALUES(?, ?) ON CONFLICT(id) DO NOTHING", (project_id, now)
            )
            con.execute(
                "UPDATE projects SET examples_rev = examples_rev + 1, updated_at=? WHERE id=?", (now, project_id)
            )
            return con.execute("SELECT examples_rev FROM projects WHERE id=?", (project_id,)).fetchone()[0]

    def examples_rev(self, project_id: int) -> int:
        rows = self.db.query("SELECT examples_rev FROM projects WHERE id=?", (project_id,))
        return rows[0][0] if rows else 0

    def delete(self, project_id: int) -> None:
        with self.db.transaction() as con:
            con.execute("DELETE FROM projects WHERE id=?", (project_id,))

    # -- annotation counters (automatic fine-tuning) ------------------------------------------
    def bump_annotation_counter(self, project_id: int, n: int = 1) -> int:
        now = time.time()
        with self.db.transaction() as con:
            con.execute(
                "INSERT INTO annotation_counters(project_id, new_annotations, last_event) VALUES(?, 0, ?) "
                "ON CONFLICT(project_id) DO NOTHING",
                (project_id, now),
            )
            con.execute(
                "UPDATE annotation_counters SET new_annotations=new_annotations+?, last_event=? WHERE project_id=?",
                (n, now, project_id),
            )
            return con.execute(
                "SELECT new_annotations FROM annotation_counters WHERE project_id=?", (project_id,)
            ).fetchone()[0]

    def reset_annotation_counter(self, project_id: int) -> None:
        with self.db.transaction() as con:
            con.execute("UPDATE annotation_counters SET new_annotations=0 WHERE project_id=?", (project_id,))
