"""End-to-end: "Start Training" from a real Label Studio 1.23.2 on a DC-SAM project served by the training-free
cold start (no trained prompt generator), with `dcsam serve` over loopback.

The backend runs DC-SAM's real architectures at their smallest: SAM 2.1 tiny with RANDOM weights, asked for
explicitly (DCSAM_RANDOM_SAM_WEIGHTS=1, named in model_version), at 256 px (DCSAM_SAM_IMAGE_SIZE), so that the
fine-tune and its cross-validation run in minutes on two CPU cores. What is checked is the loop, not the scores:
the job trains the project prompter, cross-validates it against the cold start, and either promotes it (Label
Studio then sees the new model_version) or rejects it with both scores in the job record (serving untouched).
"""

from __future__ import annotations

import cv2
import pytest

from dcsam.data.synthetic import SyntheticEpisodes
from tests.backend.e2e.test_jobs import _wait_train
from tests.support.configs import BRUSH_CONFIG
from tests.support.label_studio import LEGACY_TOKEN, Backend
from tests.support.regions import brush_result

pytestmark = pytest.mark.slow

TINY_ENV = {
    "DCSAM_ENGINE": "dcsam",
    "DCSAM_RANDOM_SAM_WEIGHTS": "1",
    "DCSAM_SAM": "sam2.1_hiera_t",
    "DCSAM_SAM_IMAGE_SIZE": "256",
    "DCSAM_IMAGE_SIZE": "128",
    "DCSAM_BACKBONE_INPUT_SIZE": "256",
    "DCSAM_ALLOW_DOWNLOAD": "0",
    # a short schedule: 20 steps of 2 queries, 2 views per image
    "DCSAM_ENGINE_OPTIONS": '{"project_steps": 20, "project_views": 2, "project_batch": 2}',
    "DCSAM_TRAIN_FOLDS": "2",
    "DCSAM_TRAIN_PATIENCE": "0",
    "DCSAM_EXAMPLES_PER_LABEL": "1",
    "DCSAM_PREANNOTATE_AFTER_TRAIN": "0",
}


def test_start_training_on_the_dcsam_cold_start_from_label_studio(ls, workdir):
    # 6 annotated tasks of one label (a synthetic shape among a distractor) and 1 task to predict
    ds = SyntheticEpisodes(image_size=128, classes=6, distractors=1, seed=0)
    folder = workdir / "scenes"
    folder.mkdir()
    scenes = {}
    for i in range(7):
        img, mask = ds.scene(0, i)
        path = folder / f"scene_{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        scenes[path.stem] = (path, mask)
    project = ls.create_project("dcsam-cold-start", BRUSH_CONFIG)
    ids = ls.upload_many(project, [p for p, _ in scenes.values()])
    backend = Backend(workdir, "dcsam", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_TOKEN, **TINY_ENV)
    try:
        health = backend.get("/health").json()
        base = health["model_version"]
        assert base.startswith("dcsam-sam2.1_hiera_t-coldstart-random-"), health  # random weights, said so
        ml = ls.connect_backend(project, backend.url)
        assert ls.call("GET", f"/api/ml/{ml['id']}").json()["model_version"] == base
        for i in range(6):
            ls.annotate(ids[f"scene_{i}"], brush_result(scenes[f"scene_{i}"][1], "cat"))
        ls.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
        train = _wait_train(backend, project, timeout=900)
        assert train["status"] == "done", train  # trained: not refused for want of a trained prompt generator
        figures = train["figures"]
        print(f"\ntraining job: {train['message']} {figures}")
        # cross-validated against the cold start: 0 steps (the cold start itself) and the project prompter
        assert set(figures["choices"]) == {"0 steps", "default steps"}, figures
        assert figures["folds"] == 2 and len(figures["per_fold"]) == 2 and figures["val_pairs"] == 6, figures
        before, after = figures["val_miou_before"], figures["val_miou_after"]
        assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
        assert figures["choices"]["0 steps"] == before  # 0 steps is the cold start: the same masks, the same score
        ls.retrieve_predictions(project, [ids["scene_6"]])
        served = {p["model_version"] for p in ls.predictions(ids["scene_6"])}
        ml_now = ls.call("GET", f"/api/ml/{ml['id']}").json()
        if figures["promoted"]:
            new = figures["new_version"]
            assert after > before and figures["chosen_steps"] == "default steps", figures
            assert new != base and ml_now["model_version"] == new, ml_now
            assert new in served, served
        else:
            assert "not promoted" in train["message"] and f"{before:.4f}" in train["message"], train
            assert f"{after:.4f}" in train["message"], train
            assert ml_now["model_version"] == base and served == {base}, (ml_now, served)
            assert backend.get("/health").json()["model_version"] == base
    finally:
        backend.close()
