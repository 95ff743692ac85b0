"""Backend state for the status page tests: a project with examples (a hostile label among them), a refused
"Start Training", a running job with progress, a promoted version and a rejected fine-tune."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tests.support.fakes import image_bytes
from tests.support.projects import scene
from tests.support.regions import annotated_task, brush_region

PROJECT = 5
HOSTILE = '<img src=x onerror="document.title=1">'  # a label is user text: it must show as text
STATUS_CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="cat"/><Label value="&lt;img src=x onerror=&quot;document.title=1&quot;&gt;"/>'
    "</BrushLabels></View>"
)
OTHER_HOST_OWNER = "another-host.example:1:feedface"  # a job another machine runs: its row is left alone


@dataclass
class StatusState:
    running_job: int
    refused_job: int
    refusal: str
    version: str
    rejected_job: int


def populate(h, fake_ls) -> StatusState:
    """Build the state through the backend's own routes and store; call before any other request to ``h``
    (the running job is claimed before the job runner starts)."""
    store = h.service.store
    running = store.jobs.add("preannotate", PROJECT, {})
    assert store.jobs.claim(OTHER_HOST_OWNER, ("preannotate",))["id"] == running
    store.jobs.update(running, done=30, total=100, message="pre-annotating page 2")
    fake_ls.label_configs[PROJECT] = STATUS_CONFIG
    labels = ["cat", "cat", HOSTILE]
    for i, label in enumerate(labels + [None]):
        img, mask = scene(i)
        path = f"/data/upload/{PROJECT}/s{i}.jpg"
        fake_ls.files[path] = image_bytes(img)
        if label is not None:
            fake_ls.tasks.append(annotated_task(100 + i, PROJECT, path, [brush_region(mask, label)]))
    assert h.setup(PROJECT, STATUS_CONFIG).status_code == 200
    unlabelled = {"id": 103, "project": PROJECT, "data": {"image": f"/data/upload/{PROJECT}/s3.jpg"}}
    r = h.predict(PROJECT, STATUS_CONFIG, [unlabelled])  # encodes the examples: rows and thumbnails
    assert r.status_code == 200, r.json
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert r.status_code == 422, r.json  # 2 cat tasks, 1 hostile: nothing can be held out
    refused = r.json["job"]
    base = h.service.version
    state = h.service.runtime.base().engine.trainable_state_dict()
    version = h.service.versions.promote(
        PROJECT, state, {"val_miou_before": 0.41, "val_miou_after": 0.58, "promoted": True}, base
    )
    time.sleep(0.01)  # the rejected run comes after the promoted one in the plot's order
    rejected = store.jobs.add_finished(
        "train",
        PROJECT,
        "done",
        f"not promoted: cross-validated mIoU 0.5800 -> 0.5500; still serving {version}",
        {"val_miou_before": 0.58, "val_miou_after": 0.55, "promoted": False, "parent_version": version},
    )
    return StatusState(running, refused, r.json["detail"], version, rejected)
