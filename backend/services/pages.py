"""Where a pre-annotation job's pages are downloaded and predicted: the :class:`PageModel` seam, and
:class:`LocalPages`, this process's (the Ray one is :class:`backend.services.preannotate_ray.RayPages`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ..labelstudio.labelconfig import LabelConfig
from ..labelstudio.media import LabelStudioAccess
from .deps import JobDeps
from .predictor import TaskOutcome


class PageModel(Protocol):
    """Downloads and predicts a job's pages. ``load`` runs in the listing thread while ``predict`` works on the
    previous page; neither writes to Label Studio or the ledger (the job does, once per page)."""

    def start(self, version: str, planned: tuple) -> None:
        """Before the first page of a model_version: ``planned`` is ``Predictor.plan``'s (examples, plan)."""

    def load(self, todo: list[dict], value_keys: list[str]) -> Any:
        """Start fetching the media of ``todo`` (the tasks to predict); what ``predict`` gets back."""

    def predict(self, todo: list[dict], loaded: Any) -> list[TaskOutcome]:
        """One outcome per task of ``todo``, in order."""

    def close(self) -> None:
        """Release what the pages used (threads, actors)."""


class LocalPages:
    """Pages in this process: downloads in a thread pool, the shared engine under the inference lock."""

    def __init__(
        self, deps: JobDeps, project_id: int, cfg: LabelConfig, access: LabelStudioAccess, pool: ThreadPoolExecutor
    ):
        self.deps, self.project_id, self.cfg, self.access = deps, project_id, cfg, access
        self.pool = pool  # the job's I/O pool (not owned)
        self.planned: tuple | None = None

    def start(self, version: str, planned: tuple) -> None:
        self.planned = planned

    def load(self, todo: list[dict], value_keys: list[str]) -> Any:
        return self.deps.predictor.load_many(todo, value_keys, self.access, self.pool)

    def predict(self, todo: list[dict], loaded: Any) -> list[TaskOutcome]:
        if not todo:
            return []
        return self.deps.predictor.predict_outcomes(
            self.project_id, todo, self.cfg, self.access, preloaded=loaded, planned=self.planned
        )

    def close(self) -> None:
        pass
