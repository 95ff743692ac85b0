"""Label Studio feedback on "Start Training" (an immediate refusal) and the backend's status page."""

from __future__ import annotations

import base64
import io
import re
from html import escape

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.labelconfig import parse_label_config
from backend.services.readiness import training_readiness
from backend.services.status import time_left_s
from tests.support.configs import BRUSH_CONFIG
from tests.support.projects import brush_project, scene
from tests.support.regions import annotated_task, brush_region
from tests.support.status_state import HOSTILE, PROJECT, populate

BASIC = {"Authorization": "Basic " + base64.b64encode(b"u:pw").decode()}


def _ls_env(fake_ls, **extra):
    return {"LABEL_STUDIO_URL": fake_ls.url, "LABEL_STUDIO_API_KEY": fake_ls.api_key, **extra}


# -- the quick check before a fine-tune ----------------------------------------------------------------
def _task(task_id: int, labels: list[str]) -> dict:
    _, mask = scene(task_id)
    return annotated_task(task_id, 1, f"/data/upload/1/{task_id}.jpg", [brush_region(mask, lab) for lab in labels])


def test_readiness_counts_tasks_per_label_and_holds_out_like_cross_validation():
    cfg = parse_label_config(BRUSH_CONFIG)
    # cat on 3 tasks, duck on 2: only a cat-only task can be held out (a duck task would leave duck 1 to train)
    tasks = [_task(1, ["cat"]), _task(2, ["cat", "duck"]), _task(3, ["cat", "duck"])]
    r = training_readiness(tasks, cfg)
    assert r.tasks_per_label == {"cat": 3, "duck": 2} and r.holdable_tasks == 1 and r.ready
    r = training_readiness(tasks[1:] + [{"id": 9, "annotations": []}], cfg)
    assert r.tasks_per_label == {"cat": 2, "duck": 2} and not r.ready
    assert "1 more with 'cat'; 1 more with 'duck'" in r.refusal()
    empty = training_readiness([], cfg)
    assert not empty.ready and "per label: none. Submit at least 3 annotated tasks per label" in empty.refusal()
    # past its time budget it decides nothing (the job will tell)
    late = training_readiness(iter(tasks), cfg, budget_s=-1)
    assert not late.complete and not late.ready


def test_start_training_with_too_few_annotations_is_refused_at_once(harness_factory, fake_ls):
    brush_project(fake_ls, 3, 4, annotated=2)
    h = harness_factory(**_ls_env(fake_ls))
    h.setup(3, BRUSH_CONFIG)
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    # non-2xx: Label Studio shows its model card as "Error"; it keeps only the status line, so the why is there too
    assert r.status_code == 422 and r.json["status"] == "refused"
    assert "at least 3 annotated tasks" in r.status and "'cat': 2" in r.status and "1 more with 'cat'" in r.status
    job = h.service.store.jobs.get(r.json["job"])
    assert job["kind"] == "train" and job["status"] == "failed" and job["message"] == r.json["detail"]
    assert job["figures"]["tasks_per_label"] == {"cat": 2}
    assert h.service.store.jobs.list(status="queued") == []  # nothing was queued
    # one more accepted annotation and it is queued (answered 200, which Label Studio shows as "Training")
    fake_ls.tasks[2] = _task(3003, ["cat"]) | {"project": 3}
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert r.status_code == 200 and r.json["status"] == "ok" and "queued" in r.json["detail"]
    assert h.service.store.jobs.get(r.json["job"])["kind"] == "train"


def test_start_training_without_label_studio_access_is_still_queued(harness_factory):
    h = harness_factory()
    h.setup(7, BRUSH_CONFIG)
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert r.status_code == 200 and h.service.store.jobs.get(r.json["job"])["kind"] == "train"


# -- the status page ----------------------------------------------------------------------------------
def test_time_left_from_the_pace_so_far():
    job = {"status": "running", "progress_done": 25, "progress_total": 100, "started_at": 1000.0}
    assert time_left_s(job, now=1100.0) == pytest.approx(300.0)
    assert time_left_s({**job, "progress_done": 0}, now=1100.0) is None
    assert time_left_s({**job, "status": "queued"}, now=1100.0) is None
    assert time_left_s({**job, "progress_total": None}, now=1100.0) is None


def test_status_page_shows_projects_examples_jobs_and_versions(harness_factory, fake_ls):
    h = harness_factory(**_ls_env(fake_ls, BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw"))
    h.client.environ_base["HTTP_AUTHORIZATION"] = BASIC["Authorization"]  # for populate's requests
    state = populate(h, fake_ls)
    del h.client.environ_base["HTTP_AUTHORIZATION"]
    assert h.client.get("/status").status_code == 401  # basic auth, like every route but /webhook
    assert h.client.get("/status.json").status_code == 401
    r = h.client.get("/status?refresh=0", headers=BASIC)
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert (
        "script-src" not in r.headers["Content-Security-Policy"]
        and "default-src 'none'" in r.headers["Content-Security-Policy"]
    )
    page = r.get_data(as_text=True)
    # the engine and versions
    assert f'<code id="engine">{h.service.choice.engine}</code>' in page
    assert h.service.version in page and state.version in page
    # examples per label, with thumbnails that are real JPEGs of the examples (two cat examples)
    cat = re.search(r'<div class="label" data-label="cat">(.*?)</div>', page, re.S).group(1)
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', cat)
    assert len(thumbs) == 2 and "2 examples" in cat
    for t in thumbs:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(t))))
        assert max(img.shape[:2]) <= 160 and img.shape[2] == 3
    # user text is escaped: the hostile label appears as text, never as markup
    assert HOSTILE not in page and "<img src=x" not in page
    assert escape(HOSTILE) in page
    # jobs: the running one's progress bar, the refusal and why
    running = re.search(rf'<tr class="job" data-status="running".*?<td>{state.running_job}</td>(.*?)</tr>', page, re.S)
    assert running and 'aria-valuenow="30"' in running.group(1) and "30 / 100" in running.group(1)
    assert "not enough accepted annotations" in page and "Start Training again" in page
    # the versions plot: one promoted candidate, one rejected, both with the serving model's score
    svg = re.search(r"<svg class=\"plot\".*?</svg>", page, re.S).group(0)
    assert svg.count('class="run-after promoted"') == 1 and svg.count('class="run-after rejected"') == 1
    assert svg.count('class="run-before"') == 2
    # the same data as JSON
    data = h.client.get("/status.json", headers=BASIC).json
    [project] = data["projects"]
    assert project["id"] == PROJECT and project["active_version"] == state.version
    assert {e["label"] for e in project["examples"]} == {"cat", HOSTILE}
    assert [r["promoted"] for r in project["training_runs"]] == [True, False]
    jobs = {j["id"]: j for j in data["jobs"]}
    assert jobs[state.running_job]["fraction"] == pytest.approx(0.3)
    assert jobs[state.refused_job]["status"] == "failed" and jobs[state.refused_job]["message"] == state.refusal


def test_status_page_of_a_new_backend_says_what_to_do(harness_factory):
    h = harness_factory()
    page = h.client.get("/status").get_data(as_text=True)
    assert "No project yet" in page and "No job yet" in page
    assert h.client.get("/status?refresh=-1").status_code == 400
    assert '<meta http-equiv="refresh" content="10">' in page  # refreshes itself by default


def test_a_forgotten_project_leaves_no_thumbnails(harness_factory, fake_ls):
    h = harness_factory(**_ls_env(fake_ls))
    populate(h, fake_ls)
    folder = h.settings.model_dir / "thumbnails" / str(PROJECT)
    assert len(list(folder.glob("*.jpg"))) == 3
    h.service.forget_project(PROJECT)
    assert list(folder.glob("*.jpg")) == []


def test_only_jobs_that_still_move_get_a_progress_bar():
    from backend.labelstudio.status_page import render_status

    def job(i: int, status: str) -> dict:
        return {
            "id": i,
            "kind": "train",
            "project_id": 1,
            "status": status,
            "progress_done": 6,
            "progress_total": 7,
            "fraction": 6 / 7,
            "time_left_s": 42.0 if status == "running" else None,
            "message": "",
        }

    page = render_status({"jobs": [job(1, "running"), job(2, "done"), job(3, "failed")]})
    rows = re.findall(r'<tr class="job".*?</tr>', page, re.S)
    assert len(rows) == 3 and all("6 / 7" in row for row in rows)
    assert 'aria-valuenow="86"' in rows[0] and "about 42 s left" in rows[0]
    assert not any("progressbar" in row for row in rows[1:])
