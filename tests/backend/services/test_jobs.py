"""Background jobs (backend/services: jobs, preannotate, training, sync, versions) against the fake Label Studio.

Every test runs on both databases (``database_url``): the SQLite file and a real PostgreSQL server.
"""

from __future__ import annotations

import base64
import itertools
import time

import pytest

from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.harness import BackendHarness
from tests.support.postgres import database_url, postgres_server  # noqa: F401  (fixtures)
from tests.support.projects import brush_project
from tests.support.regions import annotated_task, brush_region


class Crash(BaseException):
    """Kills the job thread the way SIGKILL kills a process: no bookkeeping, no except clause runs."""


JOB_DEFAULTS = {
    "DCSAM_PREANNOTATE_CHUNK": "4",
    "DCSAM_PREANNOTATE_BACKOFF_S": "0",
    "DCSAM_TRAIN_STEPS": "4",
    "DCSAM_PREANNOTATE_AFTER_TRAIN": "0",
}


@pytest.fixture()
def jobs_harness(ls_backend_factory, database_url, monkeypatch):  # noqa: F811
    """``make(**env)``: a backend on the test's database (every backend of a test shares it)."""
    # the Store reads DCSAM_DATABASE_URL from the environment when the service does not pass it
    monkeypatch.setenv("DCSAM_DATABASE_URL", database_url)

    def make(**env: str) -> BackendHarness:
        h = ls_backend_factory(JOB_DEFAULTS, DCSAM_DATABASE_URL=database_url, **env)
        assert h.service.store.db.dialect.name == ("postgresql" if database_url else "sqlite")
        return h

    return make


def _run(h: BackendHarness, project: int, **body) -> dict:
    r = h.client.post("/jobs/preannotate", json={"project": project, **body})
    assert r.status_code == 202, r.json
    assert h.service.runner.wait_idle(120)
    return h.client.get(f"/jobs/{r.json['id']}").json


def test_preannotate_predicts_every_task_exactly_once(jobs_harness, fake_ls):
    ids = brush_project(fake_ls, 3, 11)
    h = jobs_harness()
    job = _run(h, 3)
    version = h.service.version
    assert job["status"] == "done", job
    assert fake_ls.predictions_per_task(version) == {t: 1 for t in ids}
    assert job["progress_done"] == job["progress_total"] == 11
    assert job["figures"]["imported"] == 11 and job["figures"]["failed"] == 0 and job["figures"]["tasks_per_second"] > 0
    assert fake_ls.imports == 3  # pages of 4: one import per page
    regions = [p for p in fake_ls.predictions if p["result"]]
    assert len(regions) >= 8  # the red square is found on most tasks
    metrics = h.client.get("/metrics").get_data(as_text=True)
    assert 'dcsam_preannotate_tasks_total{outcome="imported",project="3"} 11' in metrics
    assert (
        "dcsam_preannotate_tasks_per_second" in metrics and 'dcsam_jobs{kind="preannotate",state="done"} 1' in metrics
    )
    # a second run finds nothing to do
    again = _run(h, 3)
    assert again["status"] == "done" and again["figures"]["imported"] == 0 and again["figures"]["existing"] == 11
    assert fake_ls.predictions_per_task(version) == {t: 1 for t in ids}


def test_crash_between_import_and_bookkeeping_resumes_without_duplicates(jobs_harness, fake_ls, monkeypatch):
    ids = brush_project(fake_ls, 4, 10)
    h = jobs_harness()
    calls = []

    ledger = h.service.store.ledger
    book_page = ledger.commit_page

    def crash_on_second(project_id, version, task_ids, job_id, params):
        calls.append(task_ids)
        if len(calls) == 2:
            raise Crash("simulated SIGKILL after the import, before the ledger")
        book_page(project_id, version, task_ids, job_id, params)

    monkeypatch.setattr(ledger, "commit_page", crash_on_second)
    r = h.client.post("/jobs/preannotate", json={"project": 4})
    job_id = r.json["id"]
    deadline = time.monotonic() + 60
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.service.runner.join(30, lane="model")
    version = h.service.version
    assert h.service.store.jobs.get(job_id)["status"] == "running"  # as a killed process leaves it
    assert len(fake_ls.predictions) == 8  # two pages imported, the second one not booked
    # "restart": a new app on the same MODEL_DIR; its runner finds the job orphaned and resumes it
    h2 = jobs_harness()
    h2.client.get("/health")
    assert h2.service.runner.wait_idle(120)
    job = h2.client.get(f"/jobs/{job_id}").json
    assert job["status"] == "done" and job["restarts"] == 1, job
    assert fake_ls.predictions_per_task(version) == {t: 1 for t in ids}
    assert job["figures"]["imported"] == 6 and job["figures"]["existing"] == 4 and job["progress_done"] == 10


def test_import_retries_never_duplicate(jobs_harness, fake_ls):
    ids = brush_project(fake_ls, 5, 6)
    fake_ls.fail_imports = 1  # refused: nothing stored
    fake_ls.fail_after_store = 1  # stored, but the answer is lost
    h = jobs_harness()
    job = _run(h, 5)
    assert job["status"] == "done", job
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
    assert h.service.metrics.value("dcsam_preannotate_import_retries_total", project="5") == 2


def test_import_gives_up_after_the_retries(jobs_harness, fake_ls):
    brush_project(fake_ls, 6, 5)
    fake_ls.fail_imports = 100
    h = jobs_harness(DCSAM_PREANNOTATE_RETRIES="2")
    job = _run(h, 6)
    assert job["status"] == "failed" and "failed 3 time(s)" in job["message"] and "injected failure" in job["message"]
    assert fake_ls.predictions == []


def test_failed_media_is_reported_not_imported(jobs_harness, fake_ls):
    ids = brush_project(fake_ls, 7, 6)
    del fake_ls.files[f"/data/upload/7/t{ids[3]}.jpg"]
    h = jobs_harness()
    job = _run(h, 7)
    assert job["status"] == "done" and job["figures"]["failed"] == 1 and job["figures"]["failed_ids"] == [ids[3]]
    assert sorted(fake_ls.predictions_per_task()) == [t for t in ids if t != ids[3]]
    assert "1 failed" in job["message"]


def test_cancel_a_running_preannotation(jobs_harness, fake_ls, monkeypatch):
    ids = brush_project(fake_ls, 9, 10)
    h = jobs_harness()
    ledger = h.service.store.ledger
    book_page = ledger.commit_page

    def cancel_after_booking(project_id, version, task_ids, job_id, params):
        book_page(project_id, version, task_ids, job_id, params)
        h.client.post(f"/jobs/{job_id}/cancel")

    monkeypatch.setattr(ledger, "commit_page", cancel_after_booking)
    job = _run(h, 9)
    assert job["status"] == "cancelled" and job["cancel_requested"]
    assert len(fake_ls.predictions) == 4  # the first page; it stopped before the second
    monkeypatch.setattr(ledger, "commit_page", book_page)
    job = _run(h, 9)
    assert job["status"] == "done"
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
    r = h.client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already done" in r.json["detail"]


def test_job_endpoints_reject_bad_input(jobs_harness):
    h = jobs_harness()
    assert h.client.post("/jobs/preannotate", json={}).status_code == 400
    for bad in ("abc", -3, 0, True):
        r = h.client.post("/jobs/preannotate", json={"project": bad})
        assert r.status_code == 400 and "project" in r.json["detail"], bad
    assert h.client.post("/jobs/preannotate", json={"project": 1, "page_size": 0}).status_code == 400
    assert h.client.post("/jobs/preannotate", data="nope", content_type="application/json").status_code == 400
    assert h.client.get("/jobs/12345").status_code == 404
    assert h.client.post("/jobs/12345/cancel").status_code == 404
    assert h.client.get("/jobs?limit=x").status_code == 400
    assert h.client.post("/versions/nope/activate", json={"project": 1}).status_code == 400
    r = h.client.post(f"/versions/{h.service.version}/activate", json={})
    assert r.status_code == 400 and "which project" in r.json["detail"]


def test_jobs_endpoints_honour_basic_auth(jobs_harness):
    h = jobs_harness(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw")
    for method, path in (
        ("get", "/jobs"),
        ("get", "/jobs/1"),
        ("post", "/jobs/1/cancel"),
        ("post", "/jobs/preannotate"),
        ("post", "/jobs/train"),
        ("post", "/versions/x/activate"),
    ):
        assert getattr(h.client, method)(path, json={"project": 1}).status_code == 401, path
    cred = {"Authorization": "Basic " + base64.b64encode(b"u:pw").decode()}
    assert h.client.get("/jobs", headers=cred).status_code == 200


def test_cancelling_a_queued_job_is_immediate(jobs_harness):
    h = jobs_harness()
    job = h.service.store.jobs.add("train", 11, {}, run_after=time.time() + 3600)
    r = h.client.post(f"/jobs/{job}/cancel")
    assert r.status_code == 200 and r.json["status"] == "cancelled"


# -- fine-tuning ------------------------------------------------------------------------------------------
def _train_project(fake_ls, perseg, project: int) -> None:
    fake_ls.label_configs[project] = BRUSH_CONFIG
    for i, name in enumerate(("cat_00", "cat_01", "cat_02", "duck_toy_00", "duck_toy_01")):
        img, mask = perseg[name]
        path = f"/data/upload/{project}/{name}.jpg"
        fake_ls.files[path] = image_bytes(img)
        label = "cat" if name.startswith("cat") else "duck"
        fake_ls.tasks.append(annotated_task(project * 1000 + i + 1, project, path, [brush_region(mask, label)]))


def _train(h: BackendHarness, project: int) -> dict:
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert r.status_code in (200, 422)  # 422: refused at once, recorded as a failed train job
    assert h.service.runner.wait_idle(300)
    return h.client.get(f"/jobs/{r.json['job']}").json


@pytest.mark.parametrize(
    ("project", "annotated", "run", "message"),
    [
        (8, 0, _run, "no accepted annotation"),  # pre-annotation needs an example
        (15, 2, _train, "at least 3 annotated tasks"),  # training needs two to train and one to validate per label
    ],
)
def test_jobs_without_enough_annotations_fail_clearly(jobs_harness, fake_ls, project, annotated, run, message):
    brush_project(fake_ls, project, 4, annotated=annotated)
    job = run(jobs_harness(), project)
    assert job["status"] == "failed" and message in job["message"]


def test_training_promotes_only_a_better_model_and_rolls_back(jobs_harness, fake_ls, perseg, monkeypatch):
    import backend.services.training as training

    _train_project(fake_ls, perseg, 12)
    h = jobs_harness()
    base = h.service.version
    scores = itertools.cycle([[0.50], [0.62]])  # per fold: the serving model, then the fine-tuned one
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: next(scores))
    job = _train(h, 12)
    assert job["status"] == "done", job
    f = job["figures"]
    assert f["promoted"] and f["val_miou_before"] == 0.5 and f["val_miou_after"] == 0.62
    assert f["folds"] == f["val_tasks"] == 3 and f["val_pairs"] == 3 and f["train"]["steps"] == 4  # cat: 3 folds
    new = f["new_version"]
    assert new.startswith(base) and new != base
    assert h.setup(12, BRUSH_CONFIG).json["model_version"] == new
    assert h.setup(13, BRUSH_CONFIG).json["model_version"] == base  # other projects keep the base weights
    versions = h.client.get("/versions?project=12").json
    assert versions["versions"][0] == new and base in versions["versions"]
    assert (h.settings.model_dir / "12" / f"{new}.pt").is_file()
    # the engine serves the new weights for project 12
    with h.service.runtime.inference_lock:
        h.service.prepare(12)
        assert h.service.runtime.base().engine.trained
    # not better: recorded, not promoted
    scores2 = itertools.cycle([[0.70], [0.60]])
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: next(scores2))
    job2 = _train(h, 12)
    assert job2["status"] == "done" and not job2["figures"]["promoted"] and "not promoted" in job2["message"]
    assert job2["figures"]["val_miou_before"] == 0.7 and job2["figures"]["val_miou_after"] == 0.6
    assert h.setup(12, BRUSH_CONFIG).json["model_version"] == new
    # rollback is one call
    r = h.client.post(f"/versions/{base}/activate", json={"project": 12})
    assert r.status_code == 200 and r.json == {"project": 12, "model_version": base, "previous": new}
    assert h.setup(12, BRUSH_CONFIG).json["model_version"] == base
    with h.service.runtime.inference_lock:
        h.service.prepare(12)
        assert not h.service.runtime.base().engine.trained
    r = h.client.post(f"/versions/{new}/activate")
    assert r.status_code == 200 and r.json["project"] == 12
    assert h.setup(12, BRUSH_CONFIG).json["model_version"] == new


def test_cancelled_or_failed_training_leaves_the_serving_model(jobs_harness, fake_ls, perseg, monkeypatch):
    import backend.services.training as training

    _train_project(fake_ls, perseg, 14)
    h = jobs_harness(DCSAM_TRAIN_STEPS="50")
    base = h.service.version
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: [0.1])  # any run would be promoted

    def cancel_at_step(step, total, figs):
        if step == 3:
            h.service.store.jobs.request_cancel(h.service.runner.current["model"])

    engine = h.service.runtime.base().engine
    twin = h.service.runtime.training_engine()  # fine-tuning runs on the serving engine's twin
    orig = twin.finetune
    monkeypatch.setattr(
        twin,
        "finetune",
        lambda eps, steps=None, progress=None: orig(
            eps, steps=steps, progress=lambda s, t, f: (cancel_at_step(s, t, f), progress(s, t, f))
        ),
    )
    job = _train(h, 14)
    assert job["status"] == "cancelled", job
    assert h.setup(14, BRUSH_CONFIG).json["model_version"] == base
    with h.service.runtime.inference_lock:
        h.service.prepare(14)
        assert not engine.trained  # the half-trained head was dropped
    monkeypatch.setattr(twin, "finetune", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    job = _train(h, 14)
    assert job["status"] == "failed" and "out of memory" in job["message"]
    assert h.setup(14, BRUSH_CONFIG).json["model_version"] == base


def test_training_compares_the_engines_step_choices_by_cross_validation(jobs_harness, fake_ls, perseg, monkeypatch):
    import backend.services.training as training

    _train_project(fake_ls, perseg, 19)
    h = jobs_harness(DCSAM_TRAIN_STEPS="")  # no fixed step count: the engine's choices are compared
    engine = h.service.runtime.training_engine()  # fine-tuning runs on the serving engine's twin
    monkeypatch.setattr(engine, "finetune_step_choices", lambda: [0, 3])
    ran = []
    orig = engine.finetune
    monkeypatch.setattr(
        engine,
        "finetune",
        lambda eps, steps=None, progress=None: (ran.append(steps), orig(eps, steps=steps, progress=progress))[1],
    )
    # serving weights score 0.5; a 0-step fine-tune 0.6, a 3-step one 0.55
    monkeypatch.setattr(
        training, "validation_ious", lambda *a, **k: [0.5] if not engine.trained else [0.6 if ran[-1] == 0 else 0.55]
    )
    job = _train(h, 19)
    f = job["figures"]
    assert job["status"] == "done" and f["promoted"], job
    assert f["choices"] == {"0 steps": 0.6, "3 steps": 0.55} and f["chosen_steps"] == "0 steps"
    assert f["val_miou_before"] == 0.5 and f["val_miou_after"] == 0.6
    assert ran == [0, 3] * f["folds"] + [0]  # each choice once per fold, then the best one on everything
    assert job["progress_done"] == job["progress_total"] == 2 * f["folds"] + 1


def test_real_fine_tune_scores_before_and_after(jobs_harness, fake_ls, perseg):
    _train_project(fake_ls, perseg, 16)
    h = jobs_harness(DCSAM_TRAIN_STEPS="6")
    job = _train(h, 16)
    f = job["figures"]
    assert job["status"] == "done", job
    assert 0 <= f["val_miou_before"] <= 1 and 0 <= f["val_miou_after"] <= 1
    assert f["promoted"] == (f["val_miou_after"] > f["val_miou_before"])
    assert (h.setup(16, BRUSH_CONFIG).json["model_version"] != h.service.version) == f["promoted"]


def test_automatic_training_after_n_annotations_is_debounced(jobs_harness, fake_ls):
    h = jobs_harness(DCSAM_TRAIN_EVERY="3", DCSAM_TRAIN_DEBOUNCE_S="3600")
    h.setup(17, BRUSH_CONFIG)  # an unverified webhook only acts on projects set up here
    ev = {"action": "ANNOTATION_CREATED", "project": {"id": 17}, "annotation": {"id": 1, "was_cancelled": False}}
    out = [h.client.post("/webhook", json=ev).json for _ in range(2)]
    assert all("train_job" not in o for o in out)
    third = h.client.post("/webhook", json=ev).json
    fourth = h.client.post("/webhook", json=ev).json
    assert third["train_job"] == fourth["train_job"]  # debounced into one queued job
    [job] = h.service.store.jobs.list(kind="train")
    assert job["status"] == "queued" and job["run_after"] > time.time() + 3000
    cancelled = {**ev, "annotation": {"id": 2, "was_cancelled": True}}
    assert "train_job" not in h.client.post("/webhook", json=cancelled).json


def test_cli_preannotate_follows_the_job(jobs_harness, fake_ls, capsys):
    from backend.cli_preannotate import main
    from tests.support.fakes import LoopbackServer

    ids = brush_project(fake_ls, 18, 6)
    h = jobs_harness()
    server = LoopbackServer(h.app)
    try:
        assert main(["--project", "18", "--backend", server.url, "--poll", "0.1"]) == 0
        err = capsys.readouterr().err
        assert "done: 6 prediction(s)" in err
        assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
        assert main(["--project", "0", "--backend", server.url]) == 2
        from dcsam.cli import main as dcsam_main  # `dcsam preannotate` hands its arguments to the same parser

        assert dcsam_main(["preannotate", "--project", "18", "--backend", server.url, "--no-wait"]) == 0
        assert dcsam_main(["preannotate", "--project", "-1"]) == 2
        assert main(["--project", "18", "--backend", "ftp://x"]) == 2
        assert main(["--project", "18", "--backend", "http://127.0.0.1:1"]) == 2
        assert "cannot reach the backend" in capsys.readouterr().err
    finally:
        server.close()


def test_jobs_of_a_process_that_dies_later_are_recovered(jobs_harness, fake_ls):
    """The owner is alive when the runner starts (e.g. a killed worker not yet reaped), and dies afterwards."""
    import socket
    import subprocess
    import sys

    from backend.services.jobs import pid_alive as _pid_alive

    ids = brush_project(fake_ls, 19, 5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    h = jobs_harness()
    h.service.runner.recheck_s = 0.2
    job_id = h.service.store.jobs.add("preannotate", 19, {})
    assert h.service.store.jobs.claim(f"{socket.gethostname()}:{child.pid}:x", ("preannotate",))["id"] == job_id
    h.client.get("/health")  # starts the runner: the owner is alive, the job is left alone
    time.sleep(0.5)
    assert h.service.store.jobs.get(job_id)["status"] == "running"
    child.kill()
    deadline = time.monotonic() + 10
    while _pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until reaped: already dead for us
        time.sleep(0.05)
    assert not _pid_alive(child.pid)
    child.wait()
    deadline = time.monotonic() + 60
    while h.service.store.jobs.get(job_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert h.service.runner.wait_idle(120)
    job = h.service.store.jobs.get(job_id)
    assert job["status"] == "done" and job["restarts"] == 1, job
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}


# -- example syncs: one job system, merged per project, recovered like the others -----------------------
def _sync_jobs(h) -> list[dict]:
    return h.service.store.jobs.list(kind="sync_examples", limit=1000)


def test_a_burst_of_webhooks_runs_at_most_two_syncs(jobs_harness, fake_ls):
    brush_project(fake_ls, 21, 3)
    h = jobs_harness(DCSAM_SYNC_DEBOUNCE_S="0.5")
    h.setup(21, BRUSH_CONFIG)
    payload = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "task": 21001, "project": 21},
        "project": {"id": 21},
    }
    jobs = {h.client.post("/webhook", json=payload).json["job"] for _ in range(100)}
    assert h.service.runner.wait_idle(120)
    syncs = _sync_jobs(h)
    assert 1 <= len(syncs) <= 2 and {j["id"] for j in syncs} == jobs, syncs
    assert all(j["status"] == "done" for j in syncs), syncs
    assert [e["task_id"] for e in h.service.store.examples.of_project(21)] == [21001]
    listings = sum(1 for r in fake_ls.requests if r.path == "/api/tasks")
    assert listings <= 2  # each sync lists the project's annotations once; 100 events did not list 100 times


def test_queued_syncs_left_by_a_crash_run_after_restart(jobs_harness, fake_ls):
    import socket

    brush_project(fake_ls, 22, 3)
    h = jobs_harness()
    h.setup(22, BRUSH_CONFIG)
    assert h.service.runner.wait_idle(120)  # the sync /setup queued has run: this process is then "killed"
    h.service.runner.stop()
    store = h.service.store.jobs
    # what a killed process leaves: a sync it was running and one queued behind it
    running = store.add("sync_examples", 22, {})
    assert store.claim(f"{socket.gethostname()}:999999999:gone-sync", ("sync_examples",))["id"] == running
    queued = store.add("sync_examples", 22, {})
    h2 = jobs_harness()
    h2.client.get("/health")  # starts the runner of the "restarted" process
    assert h2.service.runner.wait_idle(120)
    left = {j["id"]: j for j in _sync_jobs(h2)}
    assert not [j for j in left.values() if j["status"] in ("queued", "running")], left
    assert left[running]["status"] == "done" and left[running]["restarts"] == 1
    assert left[queued]["status"] == "done"
    assert [e["task_id"] for e in h2.service.store.examples.of_project(22)] == [22001]


# -- leases: the heartbeat renews them; a runner whose job was taken over stops and records nothing ----------
def test_the_heartbeat_renews_a_running_jobs_lease_and_a_lost_job_records_nothing(tmp_path, database_url):  # noqa: F811
    import threading

    from backend.services.jobs import JobKind, JobRunner
    from backend.store import Store

    store = Store(tmp_path / "model", database_url)
    started, seen_lost = threading.Event(), threading.Event()

    def work(ctx):
        started.set()
        for _ in range(2400):  # bounded: about 2 minutes of check points
            try:
                ctx.check_cancel()
            except Exception:
                seen_lost.set()
                raise
            time.sleep(0.05)
        return ("done", "finished here", None)

    runner = JobRunner(store.jobs, {"work": JobKind(work, resumable=True)}, poll_s=0.05, lease_s=1.5)
    job_id = store.jobs.add("work", 7, {})
    runner.start()
    try:
        assert started.wait(60)
        first = store.jobs.get(job_id)
        assert first["status"] == "running" and first["lease_until"] is not None
        deadline = time.monotonic() + 60
        while store.jobs.get(job_id)["lease_until"] <= first["lease_until"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.jobs.get(job_id)["lease_until"] > first["lease_until"]  # renewed by the heartbeat
        # what another replica does after this one stalled past its lease: recover the job and claim it
        store.jobs.requeue(job_id, 0, "taken over", owner=first["owner"])
        assert store.jobs.claim("another-host.example:1:cafe", ("work",), lease_s=600)["id"] == job_id
        assert seen_lost.wait(60)  # the heartbeat saw it, the job stopped at its next check point
        assert runner.wait_idle(0.1) is False  # still running: the other replica's now
        deadline = time.monotonic() + 10
        while runner.current["model"] is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        job = store.jobs.get(job_id)
        assert job["status"] == "running" and job["owner"] == "another-host.example:1:cafe", job
        assert job["message"] == "taken over" and job["restarts"] == 1
    finally:
        runner.stop()
