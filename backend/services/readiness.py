"""A quick check, before a fine-tune is queued, that the project has enough accepted annotations for one.

Label Studio's "Start Training" waits for the backend's answer, and a non-2xx answer is the one thing
its model card shows (the "Error" state). So ``START_TRAINING`` is checked at once: the fine-tune's
cross-validation (:func:`dcsam.training.crossval.assign_folds`) can hold a task out only where every label
on it has at least :data:`MIN_TASKS_PER_LABEL` annotated tasks (2 to train, 1 to validate); if no task can
be held out, the fine-tune would be refused after downloading every image. The check reads only the
annotations (no image), within a time budget; when it cannot tell, the fine-tune is queued as before and
the job reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..labelstudio.annotations import control_labels, latest_accepted
from ..labelstudio.labelconfig import LabelConfig

MIN_TASKS_PER_LABEL = 3  # as assign_folds: two training tasks must remain for each label of a held-out task


@dataclass
class Readiness:
    tasks_per_label: dict[str, int] = field(default_factory=dict)  # label -> annotated tasks with it
    holdable_tasks: int = 0  # tasks cross-validation can hold out
    complete: bool = True  # False: the listing ran past its time budget (nothing is decided)

    @property
    def ready(self) -> bool:
        return self.holdable_tasks > 0

    def refusal(self) -> str:
        """The user's message: what is missing, per label, and what to do."""
        counts = ", ".join(f"{label!r}: {n}" for label, n in sorted(self.tasks_per_label.items())) or "none"
        short = {
            label: MIN_TASKS_PER_LABEL - n
            for label, n in sorted(self.tasks_per_label.items())
            if n < MIN_TASKS_PER_LABEL
        }
        todo = "; ".join(f"{n} more with {label!r}" for label, n in short.items()) or (
            f"at least {MIN_TASKS_PER_LABEL} annotated tasks per label"
        )
        return (
            f"not enough accepted annotations to fine-tune: a label needs at least {MIN_TASKS_PER_LABEL} annotated "
            f"tasks (2 to train, 1 to validate). Annotated tasks per label: {counts}. Submit {todo}, then Start "
            "Training again"
        )


def training_readiness(tasks: Iterable[dict], cfg: LabelConfig, *, budget_s: float = 20.0) -> Readiness:
    """Count each task's latest accepted annotation's labels (mask controls, as the fine-tune does)."""
    deadline = time.monotonic() + budget_s
    labels_of: dict[int, set[str]] = {}
    out = Readiness()
    for task in tasks:
        if time.monotonic() > deadline:
            out.complete = False
            return out
        ann = latest_accepted(task)
        if ann is None:
            continue
        result = list(ann.get("result") or [])
        labels = {label for control in cfg.mask_controls for label in control_labels(result, control)}
        if labels:
            labels_of[int(task["id"])] = labels
    for labels in labels_of.values():
        for label in labels:
            out.tasks_per_label[label] = out.tasks_per_label.get(label, 0) + 1
    out.holdable_tasks = sum(
        all(out.tasks_per_label[label] >= MIN_TASKS_PER_LABEL for label in labels) for labels in labels_of.values()
    )
    return out
