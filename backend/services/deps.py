"""What a background job may use: a narrow set of collaborators, not the whole service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..labelstudio.labelconfig import LabelConfig, LabelConfigError
from ..labelstudio.media import LabelStudioAccess, LabelStudioError
from ..labelstudio.projects import LabelStudioProjects
from ..metrics import Metrics
from ..settings import BackendSettings
from ..store import PredictionLedger, ProjectStore
from .examples import ExampleManager
from .jobs import JobContext, JobError
from .predictor import Predictor
from .runtime import ModelRuntime
from .versions import VersionRegistry


@dataclass
class JobDeps:
    settings: BackendSettings
    runtime: ModelRuntime
    versions: VersionRegistry
    examples: ExampleManager
    predictor: Predictor
    ledger: PredictionLedger
    projects: ProjectStore
    label_studio: LabelStudioProjects
    metrics: Metrics
    prepare: Callable[[int | None], str]  # put the project's weights into the engine (inference lock held)
    submit_preannotate: Callable[..., int]

    def version_for(self, project_id: int | None) -> str:
        return self.versions.active(project_id)

    def project_access(self, ctx: JobContext, what: str) -> tuple[int, LabelStudioAccess]:
        """The job's project id and its Label Studio access, or a JobError that says what is missing."""
        project_id = ctx.project_id
        if project_id is None:
            raise JobError(f"{what} needs a project id")
        access = self.label_studio.access_for(project_id)
        if access is None:
            raise JobError(
                f"project {project_id}: no Label Studio URL/token: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the backend to the project in Label Studio first (its "
                "/setup passes them)"
            )
        return project_id, access

    def project_config(self, project_id: int, access: LabelStudioAccess) -> LabelConfig:
        """The project's label config: from /setup, else read from Label Studio."""
        project = self.projects.get(project_id)
        xml = project and project.get("label_config")
        if not xml:
            try:
                xml = access.api_get(f"/api/projects/{int(project_id)}").get("label_config")
            except (LabelStudioError, AttributeError) as exc:
                raise JobError(f"project {project_id}: cannot read its label config from Label Studio: {exc}") from exc
        try:
            return self.label_studio.label_config(project_id, xml)
        except LabelConfigError as exc:
            raise JobError(f"project {project_id}: label config: {exc}") from exc
