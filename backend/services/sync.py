"""The ``sync_examples`` job: re-read a project's examples from Label Studio after a webhook.

Queued by annotation webhooks, at most one per project (later events merge into it, see
:meth:`backend.store.JobStore.add_or_merge`), on the ``sync`` lane so model jobs never delay it.
"""

from __future__ import annotations

from .deps import JobDeps
from .jobs import JobContext


def run_sync(deps: JobDeps, ctx: JobContext) -> tuple[str, str, None]:
    project_id = ctx.project_id
    if project_id is None:
        return "skipped", "no project id", None
    access = deps.label_studio.access_for(project_id)
    if access is None:
        return "skipped", "no Label Studio URL/token", None
    cfg = deps.label_studio.label_config(project_id, None)
    pe = deps.examples.ensure(project_id, cfg, access, force=True)
    return "done", f"{len(pe.keys())} label(s) with examples", None
