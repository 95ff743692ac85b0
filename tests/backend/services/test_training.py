"""Fine-tuning beside serving (backend/services/training.py, runtime.py): /predict answers during a fine-tune,
the promotion swaps the weights between two requests, the serving engine never holds a run's weights."""

from __future__ import annotations

import threading

import pytest

from backend.services.runtime import InferenceLock
from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.harness import BackendHarness
from tests.support.regions import annotated_task, brush_region

NAMES = ("cat_00", "cat_01", "cat_02", "duck_toy_00", "duck_toy_01")
GATE_S = 300.0  # how long the paused fine-tune waits for the test (a hang guard, not a measurement)


@pytest.fixture()
def harness(ls_backend_factory):
    def make(**env: str) -> BackendHarness:
        return ls_backend_factory({"DCSAM_PREANNOTATE_AFTER_TRAIN": "0"}, **env)

    return make


def _project(fake_ls, perseg, project: int, queries: int) -> list[dict]:
    """5 annotated tasks (3 cat, 2 duck) and ``queries`` unannotated ones; returns the unannotated tasks."""
    fake_ls.label_configs[project] = BRUSH_CONFIG
    for i, name in enumerate(NAMES):
        img, mask = perseg[name]
        path = f"/data/upload/{project}/{name}.jpg"
        fake_ls.files[path] = image_bytes(img)
        label = "cat" if name.startswith("cat") else "duck"
        fake_ls.tasks.append(annotated_task(project * 1000 + i + 1, project, path, [brush_region(mask, label)]))
    out = []
    for i in range(queries):  # the same photos again, as tasks nobody annotated
        path = f"/data/upload/{project}/{NAMES[i % len(NAMES)]}.jpg"
        out.append({"id": project * 1000 + 100 + i, "data": {"image": path}})
    return out


def _start_training(h: BackendHarness, project: int) -> int:
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert r.status_code == 200, r.json
    return int(r.json["job"])


def test_predict_answers_while_a_fine_tune_runs(harness, fake_ls, perseg, monkeypatch):
    """10 /predict calls complete while the training job is still running (it is paused mid-fine-tune until
    they are answered, so the order is certain); the promotion then reaches the next request."""
    import backend.services.training as training

    queries = _project(fake_ls, perseg, 21, 10)
    h = harness(DCSAM_TRAIN_STEPS="5")
    assert h.setup(21, BRUSH_CONFIG).status_code == 200
    base = h.service.version
    serving = h.service.runtime.base().engine
    serving_version = serving.version
    twin = h.service.runtime.training_engine()
    assert twin is not serving
    scores = iter([[0.4], [0.9]] * 10)  # per fold: the serving model, then the fine-tuned one: promoted
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: next(scores))

    in_step, gate = threading.Event(), threading.Event()
    steps_seen: list[int] = []
    orig = twin.finetune

    def paused_finetune(eps, steps=None, progress=None):
        def on_step(step, total, figs):
            steps_seen.append(step)
            if len(steps_seen) == 2:  # the first run is mid-way: hold it there until the requests are answered
                in_step.set()
                gate.wait(GATE_S)
            progress(step, total, figs)

        return orig(eps, steps=steps, progress=on_step)

    monkeypatch.setattr(twin, "finetune", paused_finetune)
    job = _start_training(h, 21)
    assert in_step.wait(GATE_S), "the fine-tune never started"
    answered = []
    for task in queries:
        r = h.predict(21, BRUSH_CONFIG, [task])
        assert r.status_code == 200, r.json
        [result] = r.json["results"]
        assert result["model_version"] == base and result["result"], result  # a real mask, from the serving weights
        status = h.client.get(f"/jobs/{job}").json
        answered.append(status["status"])
        assert serving.version == serving_version  # the serving engine never holds the run's weights
    assert answered == ["running"] * 10  # every call completed while the fine-tune was still running
    assert steps_seen == [1, 2]  # ... and paused in its first run
    gate.set()
    assert h.service.runner.wait_idle(300)
    done = h.client.get(f"/jobs/{job}").json
    assert done["status"] == "done" and done["figures"]["promoted"], done
    new = done["figures"]["new_version"]
    assert done["figures"]["feature_cache"]["hits"] > 0  # the images were encoded once for the whole job
    # the next request is served by the promoted weights
    r = h.predict(21, BRUSH_CONFIG, [queries[0]])
    assert r.status_code == 200 and r.json["results"][0]["model_version"] == new
    assert serving.trained and serving.version != serving_version


def test_a_cancelled_fine_tune_never_touches_the_serving_weights(harness, fake_ls, perseg, monkeypatch):
    import backend.services.training as training

    _project(fake_ls, perseg, 22, 0)
    h = harness(DCSAM_TRAIN_STEPS="50")
    runtime = h.service.runtime
    serving = runtime.base().engine
    with runtime.inference_lock:
        h.service.prepare(22)
    tag, version = runtime.weights_tag, serving.version
    monkeypatch.setattr(training, "validation_ious", lambda *a, **k: [0.1])
    twin = runtime.training_engine()
    orig = twin.finetune

    def cancel_at_step_3(eps, steps=None, progress=None):
        def on_step(step, total, figs):
            if step == 3:
                assert serving.version == version  # mid-run: the serving engine is untouched
                h.service.store.jobs.request_cancel(h.service.runner.current["model"])
            progress(step, total, figs)

        return orig(eps, steps=steps, progress=on_step)

    monkeypatch.setattr(twin, "finetune", cancel_at_step_3)
    job = _start_training(h, 22)
    assert h.service.runner.wait_idle(300)
    assert h.client.get(f"/jobs/{job}").json["status"] == "cancelled"
    # nothing to reload: the serving engine kept its weights and knows it
    assert runtime.weights_tag == tag and serving.version == version and not serving.trained


def test_training_gives_way_to_waiting_model_calls():
    """yield_to_serving returns only once no model call holds or waits for the inference lock."""
    lock = InferenceLock()
    order: list[str] = []
    with lock:
        assert lock.locked() and lock.wanted == 1
        assert not lock.wait_idle(0)  # a model call is running: training would pause
        waiter = threading.Thread(target=lambda: (lock.wait_idle(GATE_S), order.append("training resumed")))
        waiter.start()
        order.append("model call done")
    waiter.join(GATE_S)
    assert order == ["model call done", "training resumed"]
    assert lock.wait_idle(0) and lock.wanted == 0 and not lock.locked()
    assert lock.acquire(blocking=False)
    assert not lock.acquire(blocking=False) and lock.wanted == 1  # a failed try does not count as wanting it
    lock.release()
    assert lock.wanted == 0
