"""What counts as a labelled example in a Label Studio task: the one accepted-annotation rule.

An accepted annotation is a submitted one: a dict with an id that is not cancelled (skipped). Drafts
are not annotations in Label Studio's API, so they never appear here. A task's *latest* accepted
annotation (newest ``updated_at``, then the highest id) is its current truth: an older one is never
used in its place, even when the latest one is empty (a person removed every region on purpose).
"""

from __future__ import annotations

from typing import Any

from .labelconfig import ControlTag
from .outputs import region_labels

MAX_ID = 2**63 - 1  # SQLite's INTEGER: larger ids overflow in the store


def parse_project_id(value: Any) -> int | None:
    """``"12.1719999999"`` (Label Studio's ``<id>.<created_at>``), ``12``, ``"12"`` or ``{"id": 12}`` -> 12;
    anything else, and ids outside 1..2**63-1, -> None."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str):
        head = value.strip().split(".", 1)[0]
        # isdigit() alone accepts "²" and other digits int() refuses; 19 digits bound int()'s work
        value = int(head) if head.isascii() and head.isdigit() and len(head) <= 19 else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= MAX_ID else None


def is_skipped(annotation: Any) -> bool:
    """A cancelled (skipped) annotation: a person said there is nothing to label here, not an example."""
    return isinstance(annotation, dict) and bool(annotation.get("was_cancelled"))


def is_accepted(annotation: Any) -> bool:
    return isinstance(annotation, dict) and not is_skipped(annotation) and annotation.get("id") is not None


def accepted_annotations(task: dict) -> list[dict]:
    return [a for a in task.get("annotations") or [] if is_accepted(a)]


def latest_accepted(task: dict) -> dict | None:
    """The task's latest accepted annotation, or None."""
    return max(accepted_annotations(task), key=lambda a: (str(a.get("updated_at") or ""), int(a["id"])), default=None)


def control_labels(result: list, control: ControlTag) -> set[str]:
    """The labels of ``control`` that regions of an annotation's ``result`` carry."""
    labels: set[str] = set()
    for region in result or []:
        if isinstance(region, dict) and region.get("from_name") == control.name:
            labels.update(lab for lab in region_labels(region, control.type) if lab in control.labels)
    return labels
