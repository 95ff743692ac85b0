"""Two `dcsam serve` replicas on one PostgreSQL database and one MODEL_DIR, as on two machines.

Each replica runs in its own UTS namespace with its own hostname (``unshare --uts``, root only), so neither
can judge the other's jobs by pid: only the job leases (``DCSAM_JOB_LEASE_S``) tell a dead replica from a
live one, as between two machines.

* A queue of pre-annotation jobs (fake Label Studio) runs on both replicas, each job once.
* A replica SIGKILLed mid-job (real Label Studio 1.23.2) has its job finished by the other once the lease
  lapses, with exactly one prediction per task.
* A version promoted by one backend is served by a replica (and a rollback too).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest

import tests.support.label_studio as harness
from tests.support.label_studio import LEGACY_TOKEN, Backend, LabelStudio
from tests.support.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)
from tests.support.projects import brush_project, scene
from tests.support.regions import brush_result

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="replicas with their own hostnames need root and unshare (a UTS namespace each)",
    ),
]

LEASE_S = 5.0  # the shortest lease the settings allow: a dead replica's job is taken over within seconds
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="cat"/></BrushLabels></View>'
)
STARTED = re.compile(r"job (\d+) \(preannotate, project \d+\) started")


@contextmanager
def _own_hostname(name: str) -> Iterator[None]:
    """Start the next `dcsam serve` of tests.support.label_studio in a UTS namespace named ``name``."""
    start = harness.start_process

    def in_namespace(command: list[str], env: dict[str, str], log: Path):
        wrapped = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *command]
        return start(wrapped, env, log)

    harness.start_process = in_namespace
    try:
        yield
    finally:
        harness.start_process = start


def _replica(workdir: Path, name: str, model_dir: Path, url: str, api_key: str, database: str, **env) -> Backend:
    with _own_hostname(name):
        return Backend(
            workdir,
            name,
            model_dir=model_dir,
            LABEL_STUDIO_URL=url,
            LABEL_STUDIO_API_KEY=api_key,
            DCSAM_ENGINE="lite",
            DCSAM_ENGINE_OPTIONS='{"size": 256}',
            DCSAM_DATABASE_URL=database,
            DCSAM_JOB_LEASE_S=str(LEASE_S),
            DCSAM_PREANNOTATE_BACKOFF_S="0",
            **env,
        )


def _started_jobs(*replicas: Backend) -> Counter:
    """How many times each job id was started, over every replica's log."""
    return Counter(int(m) for r in replicas for m in STARTED.findall(r.log.read_text()))


def test_two_replicas_run_a_queue_of_jobs_each_once(postgres_server, tmp_path, fake_ls):  # noqa: F811
    database = postgres_server.new_database()
    projects = {p: brush_project(fake_ls, p, 6) for p in range(40, 48)}
    model_dir = tmp_path / "shared-model-dir"
    replicas = []
    try:
        for name in ("replica-a", "replica-b"):
            replicas.append(
                _replica(tmp_path, name, model_dir, fake_ls.url, fake_ls.api_key, database, DCSAM_PREANNOTATE_CHUNK="3")
            )
        a, b = replicas
        jobs = [a.post("/jobs/preannotate", json={"project": p}).json()["id"] for p in projects]
        assert len(set(jobs)) == len(projects)
        finished = [b.wait_job(job, 600) for job in jobs]
        assert all(j["status"] == "done" and j["restarts"] == 0 for j in finished), finished
        started = _started_jobs(a, b)
        assert started == Counter(dict.fromkeys(jobs, 1)), started  # every job started once, on one replica
        version = a.get("/health").json()["model_version"]
        assert fake_ls.predictions_per_task(version) == {t: 1 for ids in projects.values() for t in ids}
        split = Counter(j["owner"].split(":")[0] for j in finished)
        print(f"\n{len(jobs)} jobs over two replicas: {dict(split)}")
    finally:
        for r in replicas:
            r.close()


def test_a_killed_replicas_job_is_finished_by_the_other_after_its_lease(
    postgres_server,  # noqa: F811
    ls: LabelStudio,
    workdir: Path,
):
    database = postgres_server.new_database()
    folder = workdir / "replicas"
    folder.mkdir()
    paths = []
    for i in range(80):
        img, _ = scene(i, size=128)
        paths.append(folder / f"r{i:03d}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    project = ls.create_project("replicas", CONFIG)
    ids = ls.upload_many(project, paths)
    assert len(ids) == 80
    ls.annotate(ids["r000"], brush_result(scene(0, size=128)[1], "cat"))
    model_dir = workdir / "replicas-model-dir"
    replicas = {}
    try:
        for name in ("replica-a", "replica-b"):
            replicas[name] = _replica(
                workdir, name, model_dir, ls.url, LEGACY_TOKEN, database, DCSAM_PREANNOTATE_CHUNK="10"
            )
        first = replicas["replica-a"]
        r = first.post("/jobs/preannotate", json={"project": project})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = first.wait_job(job_id, 900, until=lambda j: j["progress_done"] >= 20)
        assert job["status"] == "running", job
        owner = job["owner"].split(":")[0]
        victim = replicas[owner]
        survivor = next(b for name, b in replicas.items() if name != owner)
        victim.kill()  # SIGKILL mid-job: no shutdown code runs, its lease is left to lapse
        killed_at = time.monotonic()
        seen = {p["task"] for p in ls.project_predictions(project)}
        assert 0 < len(seen) < 80, len(seen)
        taken = survivor.wait_job(job_id, 120, until=lambda j: j["owner"] and not j["owner"].startswith(owner))
        takeover_s = time.monotonic() - killed_at
        assert taken["restarts"] == 1, taken  # recovered once, by its lapsed lease, and claimed by the survivor
        job = survivor.wait_job(job_id, 900)
        assert job["status"] == "done", job
        assert job["restarts"] == 1 and job["progress_done"] == job["progress_total"] == 80, job
        version = survivor.get("/health").json()["model_version"]
        per_task: dict[int, Counter] = {}
        for p in ls.project_predictions(project):
            per_task.setdefault(p["task"], Counter())[p["model_version"]] += 1
        assert set(per_task) == set(ids.values()), f"missing: {set(ids.values()) - set(per_task)}"
        dupes = {t: c for t, c in per_task.items() if c[version] != 1 or sum(c.values()) != 1}
        assert not dupes, f"tasks without exactly one prediction of {version}: {dupes}"
        assert _started_jobs(victim, survivor)[job_id] == 2  # once on each replica, the second a resume
        print(f"\ntakeover after SIGKILL with a {LEASE_S:.0f} s lease: {takeover_s:.1f} s; job {job['figures']}")
    finally:
        for b in replicas.values():
            b.close()


def test_a_promotion_by_one_backend_is_served_by_a_replica(
    postgres_server,  # noqa: F811
    tmp_path,
    fake_ls,
    harness_factory,
    monkeypatch,
):
    """An in-process backend promotes a version (its checkpoint in the shared MODEL_DIR, the active row in the
    database) and later rolls back; the replica process answers /predict with that choice each time, told
    nothing but what the database and MODEL_DIR hold."""
    database = postgres_server.new_database()
    brush_project(fake_ls, 50, 4)
    model_dir = tmp_path / "shared-model-dir"
    monkeypatch.setenv("DCSAM_DATABASE_URL", database)  # the Store reads it when the service does not pass it
    here = harness_factory(MODEL_DIR=str(model_dir), DCSAM_DATABASE_URL=database)
    assert here.service.store.db.dialect.name == "postgresql"
    replica = None
    try:
        with _own_hostname("replica-b"):
            replica = Backend(
                tmp_path,
                "replica-b",
                model_dir=model_dir,
                LABEL_STUDIO_URL=fake_ls.url,
                LABEL_STUDIO_API_KEY=fake_ls.api_key,
                DCSAM_ENGINE="lite",
                DCSAM_DATABASE_URL=database,
            )
        base = replica.get("/health").json()["model_version"]
        assert base == here.service.version
        task = {"id": 50002, "data": {"image": "/data/upload/50/t50002.jpg"}}
        body = {"tasks": [task], "project": "50.1719999999", "label_config": fake_ls.label_configs[50]}
        assert replica.post("/predict", json=body).json()["results"][0]["model_version"] == base
        state = here.service.runtime.base().engine.trainable_state_dict()
        promoted = here.service.versions.promote(50, state, {"val_miou_after": 0.6, "promoted": True}, base)
        assert (model_dir / "50" / f"{promoted}.pt").is_file()
        [pred] = replica.post("/predict", json=body).json()["results"]
        assert pred["model_version"] == promoted and pred["result"], pred
        assert replica.get("/versions?project=50").json()["model_version"] == promoted
        here.service.activate_version(50, base)  # a rollback through the other backend
        assert replica.post("/predict", json=body).json()["results"][0]["model_version"] == base
    finally:
        if replica is not None:
            replica.close()


def test_the_server_fixture_is_a_real_postgresql(postgres_server: PostgresServer):  # noqa: F811
    with postgres_server.connect("postgres") as con:
        assert con.execute("SHOW server_version").fetchone()[0].split(".")[0].isdigit()
