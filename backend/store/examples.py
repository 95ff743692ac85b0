"""The ``examples`` table: which accepted annotations serve as each project's in-context examples."""

from __future__ import annotations

from .database import Database

COLUMNS = ("control", "label", "annotation_id", "task_id", "updated_at")


class ExampleStore:
    def __init__(self, db: Database):
        self.db = db

    def replace(self, project_id: int, rows: list[tuple[str, str, int, int, str]]) -> None:
        """Replace the project's examples: rows of (control, label, annotation_id, task_id, updated_at)."""
        with self.db.transaction() as con:
            con.execute("DELETE FROM examples WHERE project_id=?", (project_id,))
            con.executemany(
                "INSERT INTO examples(project_id, control, label, annotation_id, task_id, updated_at) "
                "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(project_id, control, label, annotation_id) DO UPDATE SET "
                "task_id=excluded.task_id, updated_at=excluded.updated_at",
                [(project_id, *r) for r in rows],
            )

    def of_project(self, project_id: int) -> list[dict]:
        rows = self.db.query(
            "SELECT control, label, annotation_id, task_id, updated_at FROM examples "
            "WHERE project_id=? ORDER BY control, label, updated_at DESC",
            (project_id,),
        )
        return [dict(zip(COLUMNS, r)) for r in rows]

    def delete_project(self, project_id: int) -> None:
        with self.db.transaction() as con:
            con.execute("DELETE FROM examples WHERE project_id=?", (project_id,))
