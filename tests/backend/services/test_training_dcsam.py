"""Start Training on a DC-SAM project served by the training-free cold start (no trained prompt generator):
the job trains the project prompter, cross-validates it against the cold start, and either promotes it as
a new model version or rejects it with both scores recorded and serving untouched."""

from __future__ import annotations

import pytest
import torch

from dcsam import InContextSegmenter
from dcsam.data.synthetic import SyntheticEpisodes
from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.harness import BackendHarness
from tests.support.models import TINY_DCSAM
from tests.support.regions import annotated_task, brush_region

PROJECT = 31
# the real architectures at their smallest (random-weight SAM 2.1 tiny, small inputs), a short schedule
TINY = dict(TINY_DCSAM, options={"project_steps": 20, "project_views": 2, "project_batch": 2})


@pytest.fixture(scope="module")
def dcsam_base():
    torch.manual_seed(0)  # the random SAM weights
    return InContextSegmenter.from_config(**TINY)


@pytest.fixture()
def harness(tmp_path, dcsam_base, fake_ls):
    made: list[BackendHarness] = []

    def make(**env: str) -> BackendHarness:
        h = BackendHarness(
            tmp_path,
            dcsam_base,
            DCSAM_ENGINE="dcsam",
            DCSAM_ALLOW_DOWNLOAD="0",
            LABEL_STUDIO_URL=fake_ls.url,
            LABEL_STUDIO_API_KEY=fake_ls.api_key,
            DCSAM_PREANNOTATE_AFTER_TRAIN="0",
            **env,
        )
        made.append(h)
        return h

    yield make
    for h in made:
        h.service.runner.stop()
    dcsam_base.engine.load_trainable_state_dict({})


def _project(fake_ls) -> dict:
    """6 annotated tasks of one label (synthetic scenes: the target shape among a distractor), 1 query task
    (served 1-shot, DCSAM_EXAMPLES_PER_LABEL=1)."""
    fake_ls.label_configs[PROJECT] = BRUSH_CONFIG
    ds = SyntheticEpisodes(image_size=128, classes=6, distractors=1, seed=0)
    for i in range(7):
        img, mask = ds.scene(0, i)
        path = f"/data/upload/{PROJECT}/scene_{i}.png"
        fake_ls.files[path] = image_bytes(img, "PNG")
        if i < 6:
            fake_ls.tasks.append(annotated_task(PROJECT * 1000 + i, PROJECT, path, [brush_region(mask, "cat")]))
    return {"id": PROJECT * 1000 + 6, "data": {"image": path}}


@pytest.mark.slow
def test_start_training_on_the_cold_start_trains_and_cross_validates(harness, fake_ls, dcsam_base):
    query = _project(fake_ls)
    h = harness(DCSAM_TRAIN_FOLDS="2", DCSAM_TRAIN_PATIENCE="0", DCSAM_EXAMPLES_PER_LABEL="1")
    assert h.setup(PROJECT, BRUSH_CONFIG).status_code == 200
    base = h.service.version
    serving = dcsam_base.engine
    assert serving.version.endswith("-coldstart-random") and not serving.trained
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert r.status_code == 200, r.json
    job = int(r.json["job"])
    assert h.service.runner.wait_idle(600)
    done = h.client.get(f"/jobs/{job}").json
    assert done["status"] == "done", done  # trained, not refused for want of a trained prompt generator
    figures = done["figures"]
    # cross-validated against the cold start: 0 steps (the cold start itself) and the project prompter
    assert set(figures["choices"]) == {"0 steps", "default steps"}, figures
    assert figures["folds"] == 2 and len(figures["per_fold"]) == 2 and figures["val_pairs"] == 6
    before, after = figures["val_miou_before"], figures["val_miou_after"]
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert figures["choices"]["0 steps"] == before  # 0 steps is the cold start: the same masks, the same score
    r = h.predict(PROJECT, BRUSH_CONFIG, [query])
    assert r.status_code == 200, r.json
    [result] = r.json["results"]
    if figures["promoted"]:
        new = figures["new_version"]
        assert after > before and figures["chosen_steps"] == "default steps"
        assert result["model_version"] == new
        assert "-pp-" in serving.version and set(serving.trainable_state_dict()) == {"project_prompter", "format"}
        listed = h.client.get(f"/versions?project={PROJECT}").json["versions"]
        assert listed[0]["version"] == new
    else:
        assert "not promoted" in done["message"] and f"{before:.4f}" in done["message"]
        assert result["model_version"] == base
        assert serving.version.endswith("-coldstart-random") and serving.trainable_state_dict() == {}
    print("decision", figures["promoted"], before, after, figures["per_fold"], figures.get("steps_run"))
