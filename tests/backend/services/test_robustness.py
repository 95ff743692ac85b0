"""Faults and untrusted input around the job system: an unauthenticated webhook, predictions deleted in
Label Studio, Label Studio errors and Retry-After answers, a full disk under a running job, and the
per-project example cache's bound."""

from __future__ import annotations

import base64
import email.utils
import itertools
import sqlite3
import time

import pytest
import requests
from flask import Flask, Response, request

from tests.support.configs import BRUSH_CONFIG, POLYGON_CONFIG
from tests.support.fakes import LoopbackServer
from tests.support.harness import BackendHarness
from tests.support.projects import brush_project

AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:pw").decode()}


class Collapse(BaseException):
    """Ends a lane thread without any except clause running (as a bug in the runner itself would)."""


class FaultyLabelStudio:
    """The fake Label Studio behind a proxy that answers chosen calls itself (a status and headers), once each."""

    def __init__(self, target: str):
        self.target = target
        self.faults: list[tuple[str, int, dict[str, str]]] = []  # (path prefix, status, headers), in order
        self.calls: list[tuple[str, int, float]] = []  # (path, status, monotonic time)
        app = Flask("faulty-label-studio")

        @app.route("/<path:path>", methods=["GET", "POST"])
        def forward(path: str):
            full = "/" + path
            for i, (prefix, status, headers) in enumerate(self.faults):
                if full.startswith(prefix):
                    del self.faults[i]
                    self.calls.append((full, status, time.monotonic()))
                    return Response('{"detail": "injected"}', status, headers, mimetype="application/json")
            r = requests.request(
                request.method,
                self.target + full,
                params=list(request.args.items(multi=True)),
                data=request.get_data(),
                headers={k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")},
                allow_redirects=False,
                timeout=60,
            )
            self.calls.append((full, r.status_code, time.monotonic()))
            return Response(r.content, r.status_code, content_type=r.headers.get("Content-Type"))

        self.server = LoopbackServer(app)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture()
def faulty_ls(fake_ls):
    proxy = FaultyLabelStudio(fake_ls.url)
    yield proxy
    proxy.close()


@pytest.fixture()
def make_backend(backend_factory, tmp_path, fake_ls):
    model_dirs = itertools.count()

    def make(ls_url: str | None = None, **env: str) -> BackendHarness:
        base = {
            "MODEL_DIR": str(tmp_path / f"model-{next(model_dirs)}"),  # each backend its own state
            "DCSAM_PREANNOTATE_CHUNK": "4",
            "DCSAM_PREANNOTATE_BACKOFF_S": "0",
            "DCSAM_SYNC_DEBOUNCE_S": "0",
        }
        if ls_url is not None:
            base.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
        return backend_factory(**{**base, **env})

    return make


def _preannotate(h: BackendHarness, project: int) -> dict:
    r = h.client.post("/jobs/preannotate", json={"project": project}, headers=AUTH)
    assert r.status_code == 202, r.json
    assert h.service.runner.wait_idle(120)
    return h.service.store.jobs.get(r.json["id"])


def _webhook(h: BackendHarness, action: str, project: int, headers=None, **extra):
    r = h.client.post("/webhook", json={"action": action, "project": {"id": project, **extra}}, headers=headers)
    # 422: a Start Training refused at once (too few annotations), which Label Studio records as an error
    assert r.status_code in (200, 400, 401, 422), r.get_data(as_text=True)
    return r


# -- the webhook without a secret: only re-reads from Label Studio --------------------------------------
def test_unverified_project_events_re_read_label_studio(make_backend, fake_ls):
    fake_ls.label_configs[41] = BRUSH_CONFIG
    h = make_backend(fake_ls.url, BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw")
    assert h.client.post("/setup", json={"project": "41.1", "schema": BRUSH_CONFIG}, headers=AUTH).status_code == 200
    projects = h.service.store.projects

    assert _webhook(h, "PROJECT_UPDATED", 41, label_config="<not xml").json["status"] == "ok"
    assert projects.get(41)["label_config"] == BRUSH_CONFIG  # Label Studio's, not the payload's
    fake_ls.label_configs[41] = POLYGON_CONFIG  # changed in Label Studio: the next event picks it up
    _webhook(h, "PROJECT_UPDATED", 41, label_config=BRUSH_CONFIG)
    assert projects.get(41)["label_config"] == POLYGON_CONFIG

    r = _webhook(h, "PROJECT_DELETED", 41)
    assert r.json["status"] == "ignored" and "404" in r.json["detail"]
    assert projects.get(41) is not None  # Label Studio still has it
    del fake_ls.label_configs[41]
    assert _webhook(h, "PROJECT_DELETED", 41).json["status"] == "ok"
    assert projects.get(41) is None


def test_unverified_events_of_unknown_projects_leave_no_rows(make_backend, fake_ls):
    fake_ls.label_configs[42] = BRUSH_CONFIG
    for ls_url in (fake_ls.url, None):  # Label Studio answers 404 for them; or no access to ask it
        h = make_backend(ls_url, BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw", DCSAM_TRAIN_EVERY="1")
        for project in range(5000, 5100):
            for action in ("ANNOTATION_CREATED", "START_TRAINING", "PROJECT_UPDATED", "PROJECT_DELETED"):
                assert _webhook(h, action, project).json["status"] == "ignored"
        assert h.service.store.jobs.counts() == {}
        assert all(h.service.store.projects.get(p) is None for p in range(5000, 5100))
        # a project Label Studio lists is learnt from Label Studio (its config validated), then served
        r = _webhook(h, "START_TRAINING", 42)
        if ls_url is None:
            assert r.json["status"] == "ignored" and h.service.store.projects.get(42) is None
        else:
            # project 42 has no annotation: its fine-tune is refused at once, and recorded
            assert r.json["status"] == "refused" and h.service.store.jobs.get(r.json["job"])["kind"] == "train"
            assert h.service.store.projects.get(42)["label_config"] == BRUSH_CONFIG


def test_verified_webhooks_are_believed_after_validation(make_backend, fake_ls):
    h = make_backend(None, BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw", DCSAM_WEBHOOK_SECRET="s3")
    secret = {"X-Webhook-Secret": "s3"}
    r = _webhook(h, "PROJECT_UPDATED", 43, headers=secret, label_config="<not xml")
    assert r.status_code == 400 and h.service.store.projects.get(43) is None
    assert _webhook(h, "PROJECT_UPDATED", 43, headers=secret, label_config=BRUSH_CONFIG).json["status"] == "ok"
    assert h.service.store.projects.get(43)["label_config"] == BRUSH_CONFIG
    assert _webhook(h, "PROJECT_DELETED", 43, headers=secret).json["status"] == "ok"  # no Label Studio to ask
    assert h.service.store.projects.get(43) is None
    # Label Studio's "Start Training" sends the backend's basic auth credentials: verified too
    r = _webhook(h, "START_TRAINING", 44, headers=AUTH)
    assert r.json["status"] == "ok" and h.service.store.jobs.get(r.json["job"])["kind"] == "train"
    assert _webhook(h, "PROJECT_DELETED", 43).status_code == 401  # a secret is set: nothing else gets in


# -- the ledger against Label Studio --------------------------------------------------------------------
def test_predictions_deleted_in_label_studio_are_made_again(make_backend, fake_ls):
    ids = brush_project(fake_ls, 31, 10)
    h = make_backend(fake_ls.url)
    version = h.service.version
    assert _preannotate(h, 31)["figures"]["imported"] == 10
    fake_ls.predictions = [p for p in fake_ls.predictions if p["task"] not in ids[2:5]]  # deleted in the UI
    job = _preannotate(h, 31)
    assert job["status"] == "done" and job["figures"]["imported"] == 3 and job["figures"]["existing"] == 7, job
    assert fake_ls.predictions_per_task(version) == {t: 1 for t in ids}
    fake_ls.predictions.clear()
    job = _preannotate(h, 31)
    assert job["figures"]["imported"] == 10 and job["figures"]["existing"] == 0, job
    assert fake_ls.predictions_per_task(version) == {t: 1 for t in ids}


def test_a_label_studio_error_fails_the_job_with_that_error(make_backend, fake_ls, faulty_ls):
    brush_project(fake_ls, 32, 3)
    h = make_backend(faulty_ls.url)
    faulty_ls.faults.append(("/api/tasks", 500, {}))
    job = _preannotate(h, 32)
    assert job["status"] == "failed" and "HTTP 500" in job["message"], job
    assert "no accepted annotation" not in job["message"]


def test_retry_after_is_honoured(make_backend, fake_ls, faulty_ls):
    ids = brush_project(fake_ls, 33, 3)
    h = make_backend(faulty_ls.url)
    faulty_ls.faults.append(("/api/projects/33/import/predictions", 503, {"Retry-After": "1"}))
    job = _preannotate(h, 33)
    assert job["status"] == "done", job
    imports = [(status, t) for path, status, t in faulty_ls.calls if path.endswith("/import/predictions")]
    assert [s for s, _ in imports] == [503, 201]
    assert imports[1][1] - imports[0][1] >= 0.9  # the backoff alone (DCSAM_PREANNOTATE_BACKOFF_S=0) is no wait
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}


def test_retry_after_values():
    from backend.services.preannotate import retry_after_s

    class Refused(Exception):
        def __init__(self, headers):
            self.headers = headers

    now = time.time()
    later = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s(Refused({"retry-after": "7"})) == 7
    assert 28 <= retry_after_s(Refused({"Retry-After": later}), now=now) <= 30
    assert retry_after_s(Refused({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}), now=now) == 0
    assert retry_after_s(Refused({"retry-after": "86400"})) == 60  # capped
    for headers in ({"retry-after": "soon"}, {"retry-after": "nan"}, {}, None):
        assert retry_after_s(Refused(headers)) is None
    assert retry_after_s(ValueError("no headers")) is None


# -- the job runner's own bookkeeping ---------------------------------------------------------------------
def _disk_full() -> sqlite3.OperationalError:
    """A real SQLITE_FULL error, as a full disk gives it."""
    con = sqlite3.connect(":memory:")
    con.execute("PRAGMA max_page_count=2")
    con.execute("CREATE TABLE t(x)")
    try:
        for _ in range(100):
            con.execute("INSERT INTO t VALUES(randomblob(4000))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        con.close()
    raise AssertionError("SQLite did not report a full database")


@pytest.mark.parametrize("when", ["mid_job", "at_finish"])
def test_a_job_resumes_by_itself_when_the_disk_has_room_again(make_backend, fake_ls, monkeypatch, when):
    ids = brush_project(fake_ls, 34, 10)
    h = make_backend(fake_ls.url)
    h.service.runner.retry_s = 0.05
    db, jobs, ledger = h.service.store.db, h.service.store.jobs, h.service.store.ledger
    full = {"now": False, "filled": False, "refused": 0}
    transaction = db.transaction

    def refusing_transaction():
        if full["now"]:
            full["refused"] += 1
            raise _disk_full()
        return transaction()

    def fill_disk_once():
        if not full["filled"]:
            full["filled"] = full["now"] = True

    monkeypatch.setattr(db, "transaction", refusing_transaction)
    if when == "mid_job":  # after the first page is booked: progress, resume point and ledger writes fail
        commit_page = ledger.commit_page

        def commit_then_fill(*args):
            commit_page(*args)
            fill_disk_once()

        monkeypatch.setattr(ledger, "commit_page", commit_then_fill)
    else:  # the job's work is done; recording its outcome fails
        finish = jobs.finish

        def fill_then_finish(*args, **kw):
            fill_disk_once()
            return finish(*args, **kw)

        monkeypatch.setattr(jobs, "finish", fill_then_finish)
    r = h.client.post("/jobs/preannotate", json={"project": 34})  # the last HTTP request of this test
    job_id = r.json["id"]
    deadline = time.monotonic() + 60
    while full["refused"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert full["refused"] >= 5 and jobs.get(job_id)["status"] == "running"
    assert h.service.runner.running  # the lanes survived
    full["now"] = False  # room again
    deadline = time.monotonic() + 120
    while jobs.get(job_id)["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    job = jobs.get(job_id)
    assert job["status"] == "done", job
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
    assert job["figures"]["imported"] == 10 and job["progress_done"] == 10
    assert "process" not in job["message"]  # not "interrupted (process ... stopped)": nothing stopped


def test_a_dead_lane_is_started_again_by_the_live_one_and_its_job_resumes(make_backend, fake_ls, monkeypatch):
    ids = brush_project(fake_ls, 35, 6)
    h = make_backend(fake_ls.url)
    runner = h.service.runner
    runner.recheck_s = 0.2
    ledger = h.service.store.ledger
    commit_page = ledger.commit_page
    collapsed = []

    def collapse_once(*args):
        if not collapsed:
            collapsed.append(True)
            raise Collapse("the lane thread ends here")
        commit_page(*args)

    monkeypatch.setattr(ledger, "commit_page", collapse_once)
    job_id = h.client.post("/jobs/preannotate", json={"project": 35}).json["id"]  # no HTTP request after this one
    deadline = time.monotonic() + 60
    while not collapsed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collapsed
    deadline = time.monotonic() + 120
    while h.service.store.jobs.get(job_id)["status"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    job = h.service.store.jobs.get(job_id)
    assert job["status"] == "done" and job["restarts"] == 1, job
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
    assert not runner.join(0.1, lane="model") and not runner.join(0.1, lane="sync")  # both lanes run


# -- bounded memory ------------------------------------------------------------------------------------------
def test_example_cache_keeps_the_most_recently_used_projects(make_backend, fake_ls):
    for project in (51, 52, 53):
        brush_project(fake_ls, project, 2)
    h = make_backend(fake_ls.url, DCSAM_MAX_PROJECTS_IN_MEMORY="2")
    examples = h.service.examples

    def predict(project: int) -> int:
        before = sum(1 for c in fake_ls.requests if c.path == "/api/tasks")
        task = {"id": project * 1000 + 2, "project": project, "data": {"image": f"/data/upload/{project}/1.jpg"}}
        r = h.predict(project, BRUSH_CONFIG, [task])
        assert r.status_code == 200, r.json
        return sum(1 for c in fake_ls.requests if c.path == "/api/tasks") - before

    assert [predict(p) for p in (51, 52, 51)] == [1, 1, 0]  # 51 is cached (recheck interval 30 s)
    first = examples.project(51)
    assert predict(53) == 1  # 52, the least recently used, is dropped
    assert examples.project(51) is first
    assert predict(52) == 1  # listed and encoded again
    assert predict(52) == 0


def test_settings_document_the_new_limit():
    from backend.settings import ENV_DOC, BackendSettings

    assert "DCSAM_MAX_PROJECTS_IN_MEMORY" in ENV_DOC
    assert BackendSettings.from_env({}).max_projects_in_memory == 64
    with pytest.raises(ValueError):
        BackendSettings.from_env({"DCSAM_MAX_PROJECTS_IN_MEMORY": "0"})
