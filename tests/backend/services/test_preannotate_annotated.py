"""Issue 14 item 7: the pre-annotation a promoted fine-tune queues leaves out tasks with accepted annotations
(DCSAM_PREANNOTATE_SKIP_ANNOTATED, on by default); a pre-annotation asked for by hand still covers every task."""

from __future__ import annotations

import pytest

from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.harness import BackendHarness
from tests.support.regions import annotated_task, brush_region

PROJECT = 21


@pytest.fixture()
def project(fake_ls, perseg) -> tuple[list[int], list[int]]:
    """Three annotated cat tasks (examples and training data) and three unannotated ones; each task carries
    Label Studio's ``total_annotations`` (annotations that are not cancelled), as its task list does."""
    fake_ls.label_configs[PROJECT] = BRUSH_CONFIG
    annotated, plain = [], []
    for i, name in enumerate(("cat_00", "cat_01", "cat_02")):
        img, mask = perseg[name]
        for copy in range(2):
            task_id = PROJECT * 1000 + 2 * i + copy + 1
            path = f"/data/upload/{PROJECT}/{name}-{copy}.jpg"
            fake_ls.files[path] = image_bytes(img)
            if copy == 0:
                task = annotated_task(task_id, PROJECT, path, [brush_region(mask, "cat")])
                annotated.append(task_id)
            else:
                task = {"id": task_id, "project": PROJECT, "data": {"image": path}, "annotations": []}
                plain.append(task_id)
            fake_ls.tasks.append({**task, "total_annotations": len(task["annotations"])})
    return annotated, plain


@pytest.fixture()
def promoting(ls_backend_factory, monkeypatch):
    """``make(**env)``: a backend whose next fine-tune is promoted (the fine-tuned model scores higher)."""
    import backend.services.training as training

    scores = iter([[0.5], [0.6]] * 10)  # per fold: the serving model, then the fine-tuned one
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: next(scores))

    def make(**env: str) -> BackendHarness:
        defaults = {"DCSAM_TRAIN_STEPS": "2", "DCSAM_TRAIN_FOLDS": "2", "DCSAM_PREANNOTATE_BACKOFF_S": "0"}
        return ls_backend_factory(defaults, **env)

    return make


def _train_and_preannotate(h: BackendHarness) -> dict:
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert r.status_code == 200
    assert h.service.runner.wait_idle(600)
    train = h.client.get(f"/jobs/{r.json['job']}").json
    assert train["status"] == "done" and train["figures"]["promoted"], train
    assert h.service.runner.wait_idle(600)
    job = h.client.get(f"/jobs/{train['figures']['preannotate_job']}").json
    assert job["status"] == "done", job
    assert job["params"]["version"] == train["figures"]["new_version"]
    return job


def test_after_a_promotion_annotated_tasks_are_not_predicted_again(promoting, fake_ls, project):
    annotated, plain = project
    h = promoting()
    job = _train_and_preannotate(h)
    new = job["params"]["version"]
    assert fake_ls.predictions_per_task(new) == {t: 1 for t in plain}
    assert job["figures"]["imported"] == len(plain) and job["figures"]["annotated_left_out"] == len(annotated)
    metrics = h.client.get("/metrics").get_data(as_text=True)
    assert f'dcsam_preannotate_tasks_total{{outcome="annotated",project="{PROJECT}"}} {len(annotated)}' in metrics
    # asked for by hand, a pre-annotation still covers the annotated tasks
    r = h.client.post("/jobs/preannotate", json={"project": PROJECT})
    assert h.service.runner.wait_idle(600)
    assert h.client.get(f"/jobs/{r.json['id']}").json["status"] == "done"
    assert fake_ls.predictions_per_task(new) == {t: 1 for t in annotated + plain}


def test_the_setting_turns_the_skip_off(promoting, fake_ls, project):
    annotated, plain = project
    h = promoting(DCSAM_PREANNOTATE_SKIP_ANNOTATED="0")
    job = _train_and_preannotate(h)
    assert fake_ls.predictions_per_task(job["params"]["version"]) == {t: 1 for t in annotated + plain}
    assert job["figures"]["annotated_left_out"] == 0
