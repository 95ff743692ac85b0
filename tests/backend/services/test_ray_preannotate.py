"""Pre-annotation on Ray (backend/services/preannotate_ray.py) against the fake Label Studio, on a local Ray
(2 CPUs, started once for the session): the same predictions as the single-process job, and exactly one
prediction per task when an inference actor is killed in the middle of a batch."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

from backend.services.jobs import JobError
from backend.services.preannotate import ray_address
from tests.support.harness import BackendHarness
from tests.support.projects import brush_project

JOB_ENV = {"DCSAM_PREANNOTATE_CHUNK": "4", "DCSAM_PREANNOTATE_BACKOFF_S": "0", "DCSAM_PREANNOTATE_AFTER_TRAIN": "0"}
RAY_ENV = {"DCSAM_RAY_ADDRESS": "local", "DCSAM_RAY_ACTORS": "2", "DCSAM_BATCH_SIZE": "2"}


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session: 2 CPUs, no dashboard, a small object store, logs in a temporary folder."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="dcsam-ray-t")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        namespace="dcsam",
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _run(h: BackendHarness, project: int) -> dict:
    r = h.client.post("/jobs/preannotate", json={"project": project})
    assert r.status_code == 202, r.json
    assert h.service.runner.wait_idle(300)
    return h.client.get(f"/jobs/{r.json['id']}").json


def _by_task(fake_ls, project: int) -> dict[int, dict]:
    """Each task's prediction (task ids made relative to the project), without the random region ids."""
    out = {}
    for p in fake_ls.predictions:
        if p["project"] == project:
            regions = [{k: v for k, v in r.items() if k != "id"} for r in p["result"]]
            out[p["task"] - project * 1000] = {"result": regions, "score": p["score"], "version": p["model_version"]}
    return out


def _same(got: dict[int, dict], expected: dict[int, dict]) -> None:
    """The same regions (brush RLE, labels, sizes: exactly) and scores. Scores may differ in the 7th digit: an
    actor runs torch on its own thread count and batches, which changes the order of float sums."""
    assert sorted(got) == sorted(expected)
    for task, want in expected.items():
        have = got[task]
        assert have["version"] == want["version"]
        assert have["score"] == pytest.approx(want["score"], abs=1e-5), task
        assert len(have["result"]) == len(want["result"]), task
        for a, b in zip(have["result"], want["result"]):
            assert a.get("score") == pytest.approx(b.get("score"), abs=1e-5), task
            assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}, task


def test_ray_address_rules():
    assert ray_address(None, None) is None  # in this process
    assert ray_address(None, "ray://head:10001") == "ray://head:10001"
    assert ray_address(True, None) == "local" and ray_address("auto", None) == "local"
    assert ray_address("auto", "head:6379") == "head:6379"
    assert ray_address("local", "head:6379") == "local"
    assert ray_address("head:6379", "head:6379") == "head:6379"
    with pytest.raises(JobError, match="DCSAM_RAY_ADDRESS"):
        ray_address("evil:6379", "head:6379")  # the cluster gets the Label Studio token: never one a request names
    with pytest.raises(JobError):
        ray_address(3, None)


def test_actor_shape_leaves_room_for_the_fetch_tasks():
    pytest.importorskip("ray")
    from backend.services.preannotate_ray import FETCH_CPUS, actor_shape

    two = actor_shape(0, {"CPU": 2.0}, 2.0)
    assert two.count == 2 and two.num_gpus == 0 and two.count * two.num_cpus + FETCH_CPUS <= 2.0
    assert two.torch_threads == 1
    one = actor_shape(1, {"CPU": 2.0}, 2.0)
    assert one.num_cpus == 1.5 and one.torch_threads == 1
    spread = actor_shape(2, {"CPU": 32.0}, 8.0)  # 4 nodes of 8: an actor must fit on one
    assert spread.num_cpus == 7.5 and spread.torch_threads == 7
    gpus = actor_shape(0, {"CPU": 16.0, "GPU": 4.0}, 16.0)
    assert gpus.count == 4 and gpus.num_gpus == 1.0
    assert actor_shape(8, {"CPU": 16.0, "GPU": 4.0}, 16.0).num_gpus == 0.5


def test_fetch_tasks_get_the_media_settings_and_no_secret():
    pytest.importorskip("ray")
    from backend.services.preannotate_ray import media_settings
    from backend.settings import BackendSettings

    env = {"DCSAM_MAX_DOWNLOAD_MB": "3", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "LABEL_STUDIO_API_KEY": "k"}
    shipped = media_settings(BackendSettings.from_env(env))
    assert shipped.max_download_bytes == 3 * 1024**2
    assert shipped.basic_auth_pass is None and shipped.label_studio_api_key is None


@pytest.mark.parametrize(
    ("argv", "sent", "warned"),
    [(["--ray"], "auto", False), (["--ray", "local"], "local", False), (["--ray", "head:6379"], "head:6379", True)],
)
def test_cli_ray_flag_asks_the_backend(argv, sent, warned, capsys):
    from flask import Flask, jsonify, request

    from backend.cli_preannotate import main
    from tests.support.fakes import LoopbackServer

    bodies = []
    app = Flask("fake-backend")

    @app.post("/jobs/preannotate")
    def start():
        body = request.get_json()
        bodies.append(body)
        params = {"ray": body["ray"]} if body["ray"] != "head:6379" else {}  # as if the job did not take it
        return jsonify({"id": 7, "status": "queued", "params": params}), 202

    server = LoopbackServer(app)
    try:
        assert main(["--project", "3", "--backend", server.url, "--no-wait", *argv]) == 0
    finally:
        server.close()
    assert bodies == [{"project": 3, "ray": sent}]
    assert ("does not carry --ray" in capsys.readouterr().err) is warned


@pytest.mark.slow
def test_ray_gives_the_same_predictions_as_one_process(local_ray, ls_backend_factory, fake_ls):
    n = 9
    brush_project(fake_ls, 3, n)
    brush_project(fake_ls, 4, n)  # the same images and example, in another project
    local = ls_backend_factory(JOB_ENV)
    job = _run(local, 3)
    assert job["status"] == "done" and job["figures"]["imported"] == n, job
    on_ray = ls_backend_factory(JOB_ENV, **RAY_ENV)
    job = _run(on_ray, 4)
    assert job["status"] == "done", job
    assert job["figures"]["imported"] == n and job["figures"]["failed"] == 0
    assert job["progress_done"] == job["progress_total"] == n
    assert fake_ls.imports == 2 * 3  # pages of 4: one import per page, on both paths
    expected, got = _by_task(fake_ls, 3), _by_task(fake_ls, 4)
    assert sorted(got) == list(range(1, n + 1))
    assert sum(1 for p in got.values() if p["result"]) >= n - 2  # the red square is found
    _same(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("death", ["sigkill", "gone"])
def test_an_actor_killed_mid_batch_loses_and_duplicates_nothing(
    local_ray, ls_backend_factory, fake_ls, monkeypatch, death
):
    """``sigkill``: the actor's process dies; Ray restarts it and runs its batches again there. ``gone``: the
    actor is killed for good; the driver sends its batches to the other actor."""
    from backend.services import preannotate_ray

    n = 12
    ids = brush_project(fake_ls, 5, n)
    seen: dict = {"pages": 0}
    run = preannotate_ray.ActorPool.run

    def run_and_kill(pool, calls):
        # page 2: send the first batch to the first actor, then kill that actor before it can answer
        seen["pages"] += 1
        if seen["pages"] == 1:
            seen["actor"] = pool.actors[0]
            seen["pid"] = local_ray.get(seen["actor"].pid.remote())
        if seen["pages"] == 2:
            first = calls[0]

            def submit_then_kill(actor):
                if "killed" in seen:  # the batch sent again, elsewhere
                    return first(actor)
                seen["killed"] = actor is seen["actor"]  # the pool sends a page's first batch to its first actor
                ref = first(actor)
                if death == "sigkill":
                    os.kill(seen["pid"], signal.SIGKILL)
                else:
                    local_ray.kill(seen["actor"], no_restart=True)
                return ref

            calls = [submit_then_kill, *calls[1:]]
        if seen["pages"] == 3:
            seen["actors_left"] = len(pool.actors)
            # the examples and weights went to each live actor once, not with every batch
            seen["fetches"] = local_ray.get([a.snapshot_fetches.remote() for a in pool.actors])
            if death == "sigkill":
                seen["new_pid"] = local_ray.get(seen["actor"].pid.remote())
        return run(pool, calls)

    monkeypatch.setattr(preannotate_ray.ActorPool, "run", run_and_kill)
    h = ls_backend_factory(JOB_ENV, **RAY_ENV)
    job = _run(h, 5)
    assert job["status"] == "done", job
    assert seen["pages"] == 3 and seen["killed"]
    assert seen["fetches"] == [1] * seen["actors_left"]
    if death == "sigkill":
        assert seen["new_pid"] != seen["pid"]  # restarted by Ray, in a new process, and kept in the pool
        assert seen["actors_left"] == 2
    else:
        assert seen["actors_left"] == 1  # dropped from the pool; its batch went to the other actor
    assert job["figures"]["imported"] == n and job["figures"]["failed"] == 0
    assert fake_ls.predictions_per_task(h.service.version) == {t: 1 for t in ids}
    # and the answers are the ones a run without a kill gives
    brush_project(fake_ls, 6, n)
    monkeypatch.setattr(preannotate_ray.ActorPool, "run", run)
    assert _run(h, 6)["status"] == "done"
    _same(_by_task(fake_ls, 5), _by_task(fake_ls, 6))


@pytest.mark.slow
def test_frame_sequences_stay_in_the_backend_and_plain_images_go_to_the_actors(
    local_ray, ls_backend_factory, fake_ls, data_dir, monkeypatch
):
    """A project with a frame-sequence video and two plain images: the video propagates in the backend (its
    frames in order), the plain images go to the actors; the same predictions as the single-process job."""
    from backend.services import preannotate_ray
    from tests.support.configs import SEQUENCE_CONFIG
    from tests.support.fakes import image_bytes
    from tests.support.video import davis_frames, sequence_project

    frames = davis_frames(data_dir, "car-shadow", 7)
    for project in (7, 8):
        fake_ls.label_configs[project] = SEQUENCE_CONFIG
        sequence_project(fake_ls, frames[:5], "car-shadow", project * 1000 + 1, project=project)
        for i in (5, 6):  # no video or frame key: plain image tasks
            ref = f"/data/upload/{project}/plain_{i}.jpg"
            fake_ls.files[ref] = image_bytes(frames[i][0])
            task = {"id": project * 1000 + 1 + i, "project": project, "data": {"image": ref}, "annotations": []}
            fake_ls.tasks.append(task)
    sent: list[int] = []
    run = preannotate_ray.ActorPool.run

    def counting(pool, calls):
        sent.append(len(calls))
        return run(pool, calls)

    monkeypatch.setattr(preannotate_ray.ActorPool, "run", counting)
    local = ls_backend_factory(JOB_ENV)
    assert _run(local, 7)["status"] == "done"
    on_ray = ls_backend_factory(JOB_ENV, **RAY_ENV)
    job = _run(on_ray, 8)
    assert job["status"] == "done" and job["figures"]["imported"] == 7 and job["figures"]["failed"] == 0, job
    assert on_ray.service.metrics.value("dcsam_video_propagations_total", kind="sequence") == 1
    assert sum(sent) == 2  # the two plain images, a batch each (2 actors); no frame reaches an actor
    _same(_by_task(fake_ls, 8), _by_task(fake_ls, 7))
