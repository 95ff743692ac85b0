"""Fine-tuned model versions per project: checkpoints under ``MODEL_DIR/<project>/``, one active each.

* A project with no fine-tuned version serves the base weights, announced as the base ``model_version``.
* A promoted fine-tune writes ``MODEL_DIR/<project>/<version>.pt`` atomically (``dcsam.checkpoints``),
  then records it and makes it active in one database transaction; a crash in between leaves at most an
  unreferenced file, never a half-written active checkpoint.
* Replicas sharing a PostgreSQL database (``DCSAM_DATABASE_URL``) and one ``MODEL_DIR`` (a shared
  filesystem) serve each other's promotions: :meth:`VersionRegistry.active` reads the active version from
  the database at every request, and a version the engine does not hold is loaded from its checkpoint
  before the next model call (``Service.prepare``).
* Rolling back is :meth:`VersionRegistry.activate` with an earlier version (or the base one).
* A lost database (an empty file beside checkpoints) is rebuilt from the checkpoints, which carry their
  version, parent and project: :meth:`VersionRegistry.rebuild_from_checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dcsam.checkpoints import load_checkpoint, save_checkpoint
from dcsam.errors import CheckpointError

from ..store import VersionStore

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "backend-trainable-state"


class VersionError(Exception):
    pass


class VersionRegistry:
    def __init__(self, rows: VersionStore, model_dir: Path, base_version: str, engine: str):
        self.rows = rows
        self.dir = Path(model_dir)
        self.base_version = base_version
        self.engine = engine
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    # -- queries ------------------------------------------------------------------------------------
    def active(self, project_id: int | None) -> str:
        if project_id is None:
            return self.base_version
        return self.rows.active(project_id) or self.base_version

    def info(self, version: str) -> dict | None:
        return self.rows.info(version)

    def project_versions(self, project_id: int) -> list[dict]:
        return [info for v in self.rows.of_project(project_id) if (info := self.info(v)) is not None]

    def all_versions(self) -> list[str]:
        return self.rows.fine_tuned()

    def trainable_state(self, version: str) -> dict | None:
        """The saved trainable weights of a fine-tuned version (None = the base weights)."""
        if version == self.base_version:
            return None
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
        info = self.info(version)
        if info is None:
            raise VersionError(f"unknown model version {version!r}")
        obj = load_checkpoint(self.checkpoint_path(info), CHECKPOINT_KIND)
        state = obj["state_dict"]
        with self._lock:
            self._cache[version] = state
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return state

    def checkpoint_path(self, info: dict) -> Path:
        """Where a version's checkpoint is: its recorded path, or the same file under this replica's MODEL_DIR
        (replicas sharing a database may mount the shared MODEL_DIR at different paths)."""
        recorded = Path(info["path"])
        if recorded.is_file():
            return recorded
        here = self.dir / str(int(info["project_id"])) / recorded.name
        return here if here.is_file() else recorded

    # -- changes ------------------------------------------------------------------------------------
    def next_version(self, project_id: int) -> str:
        n = len(self.rows.of_project(project_id)) + 1
        while True:
            version = f"{self.base_version}-p{project_id}-ft{n}"
            if self.info(version) is None:
                return version
            n += 1

    def promote(self, project_id: int, trainable_state: dict[str, Any], figures: dict, parent: str) -> str:
        """Write the checkpoint atomically, record it and make it the project's active version."""
        version = self.next_version(project_id)
        folder = self.dir / str(int(project_id))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.pt"
        digest = save_checkpoint(
            path,
            CHECKPOINT_KIND,
            trainable_state,
            {"engine": self.engine, "base": self.base_version},
            version=version,
            parent=parent,
            project=int(project_id),
        )
        self.rows.add_active(version, project_id, parent, str(path), digest, figures)
        return version

    def activate(self, project_id: int | None, version: str) -> tuple[int, str]:
        """Serve ``version`` for its project (the base version needs ``project_id``); returns (project, version)."""
        if version == self.base_version:
            if project_id is None:
                raise VersionError(
                    f"{version} is the base version of every project: say which project "
                    '(?project=ID or {"project": ID})'
                )
        else:
            info = self.info(version)
            if info is None:
                raise VersionError(f"unknown model version {version!r}; see GET /versions")
            if project_id is not None and info["project_id"] != project_id:
                raise VersionError(f"{version} belongs to project {info['project_id']}, not {project_id}")
            project_id = info["project_id"]
            if not self.checkpoint_path(info).is_file():
                raise VersionError(f"{version}: its checkpoint {info['path']} is missing")
            self.trainable_state(version)  # readable before it becomes active
        self.rows.set_active(project_id, version)
        return project_id, version

    def rebuild_from_checkpoints(self) -> dict[int, str]:
        """Record the versions whose checkpoints are under ``MODEL_DIR/<project>/`` and make each project's
        newest one of this base model active (for an emptied database); {project: active version}."""
        found = []
        for path in sorted(self.dir.glob("*/*.pt")):
            if not path.parent.name.isdigit():
                continue
            try:
                obj = load_checkpoint(path, CHECKPOINT_KIND)
            except CheckpointError as exc:
                log.error("not rebuilding a version from %s: %s", path, exc)
                continue
            version, project, parent = obj.get("version"), obj.get("project"), obj.get("parent")
            if not isinstance(version, str) or not isinstance(project, int):
                log.error("not rebuilding a version from %s: it does not say its version and project", path)
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]  # as save_checkpoint computes it
            figures = {"rebuilt_from_checkpoint": True}
            base = (obj.get("settings") or {}).get("base")
            found.append((path.stat().st_mtime, version, project, parent, str(path), digest, figures, base))
        if not found:
            return {}
        found.sort()
        active = {project: version for _, version, project, *_, base in found if base == self.base_version}
        rows = [(v, p, parent, path, digest, json.dumps(fig), t) for t, v, p, parent, path, digest, fig, _ in found]
        self.rows.restore(rows, active)
        log.error(
            "the backend database %s was empty while %d fine-tuned checkpoint(s) exist: it was lost or replaced. "
            "Rebuilt their versions from the checkpoints; each project now serves its newest one %s (check with "
            "GET /versions?project=ID and roll back with POST /versions/<version>/activate)",
            self.rows.db.path,  # the SQLite file, or the PostgreSQL URL without its password
            len(found),
            active,
        )
        return active
