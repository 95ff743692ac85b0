"""End-to-end: a real Label Studio 1.23.2 talks to `dcsam serve` (lite engine) over loopback.

Label Studio is installed into its own venv by scripts/setup_label_studio.sh (skipped, with the reason,
only when that install is impossible), started with a fresh data dir, and stopped at the end.
"""

from __future__ import annotations

import re
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from dcsam.io import read_mask
from dcsam.masks import iou
from tests.support.label_studio import LEGACY_TOKEN, Backend
from tests.support.regions import brush_result, decode_brush, polygon_mask

pytestmark = pytest.mark.slow

BRUSH = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""
POLYGON = """<View><Image name="image" value="$image"/>
<PolygonLabels name="outline" toName="image"><Label value="duck"/></PolygonLabels></View>"""
INTERACTIVE = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="sneaker"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="sneaker"/></KeyPointLabels>
<RectangleLabels name="box" toName="image" smart="true"><Label value="sneaker"/></RectangleLabels></View>"""


@pytest.fixture(scope="module")
def backend_legacy(ls, workdir):
    """auto engine, no SAM checkpoint, downloads off: must fall back to lite, loudly."""
    server = Backend(
        workdir,
        "legacy",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY="0123456789abcdef0123456789abcdef01234567",
        DCSAM_ENGINE="auto",
        DCSAM_ALLOW_DOWNLOAD="0",
        DCSAM_CACHE_DIR=str(workdir / "empty-cache"),
    )
    yield server
    server.close()


def _check_predictions(ls, tasks, version, check_region):
    for name, task in tasks.items():
        preds = ls.predictions(task["id"])
        assert len(preds) == 1, f"{name}: {len(preds)} predictions"
        assert preds[0]["model_version"] == version
        assert len(preds[0]["result"]) == 1, f"{name}: {preds[0]['result']}"
        check_region(name, preds[0]["result"][0])


def test_brush_project_retrieve_predictions_legacy_token(ls, backend_legacy, data_dir):
    perseg = data_dir / "perseg-mini"
    project = ls.create_project("E2E brush", BRUSH)
    tasks = ls.upload(project, [perseg / f"cat_0{i}.jpg" for i in range(3)])
    ls.annotate(tasks["cat_00"]["id"], brush_result(read_mask(perseg / "cat_00.png"), "cat"))

    ml = ls.connect_backend(project, backend_legacy.url)
    assert ml["state"] == "CO", ml
    health = backend_legacy.get("/health").json()
    assert health["engine"] == "lite"
    version = ml["model_version"] or ls.call("GET", f"/api/ml/{ml['id']}").json()["model_version"]
    assert version == health["model_version"] and version.startswith("lite-")
    log = backend_legacy.log.read_text()
    assert "WARNING" in log and "falls back to the bundled LITE engine" in log
    hooks = ls.call("GET", "/api/webhooks", params={"project": project}).json()
    assert any(h["url"] == backend_legacy.url + "/webhook" for h in hooks)

    others = {k: v for k, v in tasks.items() if k != "cat_00"}
    ls.retrieve_predictions(project, [t["id"] for t in others.values()])

    def check(name, region):
        gt = read_mask(perseg / f"{name}.png")
        w, h = Image.open(perseg / f"{name}.jpg").size
        assert region["type"] == "brushlabels" and region["from_name"] == "tag"
        assert region["value"]["brushlabels"] == ["cat"]
        assert (region["original_width"], region["original_height"]) == (w, h)
        mask = decode_brush(region)
        assert mask.shape == gt.shape
        score = iou(mask, gt)
        print(f"{name}: IoU {score:.3f}")
        assert score >= 0.8

    _check_predictions(ls, others, version, check)

    # the webhook LS created reaches the backend: a new annotation is an ANNOTATION_CREATED event
    ls.annotate(tasks["cat_01"]["id"], brush_result(read_mask(perseg / "cat_01.png"), "cat"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if 'dcsam_webhook_events_total{action="ANNOTATION_CREATED"}' in backend_legacy.get("/metrics").text:
            break
        time.sleep(0.5)
    metrics = backend_legacy.get("/metrics").text
    assert 'dcsam_webhook_events_total{action="ANNOTATION_CREATED"}' in metrics
    assert "dcsam_model_loads_total 1" in metrics


def test_polygon_project_with_personal_access_token(ls, workdir, data_dir):
    perseg = data_dir / "perseg-mini"
    pat = ls.create_personal_access_token()
    ls.pat = pat
    ls.set_legacy_tokens(False)
    backend = None
    try:
        # the legacy token really is refused now, so only the PAT can work
        import requests

        r = requests.get(
            ls.url + "/api/projects", headers={"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}
        )
        assert r.status_code == 401
        backend = Backend(workdir, "pat", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=pat, DCSAM_ENGINE="lite")
        project = ls.create_project("E2E polygon", POLYGON)
        tasks = ls.upload(project, [perseg / f"duck_toy_0{i}.jpg" for i in range(3)])
        gt0 = read_mask(perseg / "duck_toy_00.png")
        contours, _ = cv2.findContours(gt0.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        c = max(contours, key=cv2.contourArea).reshape(-1, 2)
        h0, w0 = gt0.shape
        ls.annotate(
            tasks["duck_toy_00"]["id"],
            [
                {
                    "from_name": "outline",
                    "to_name": "image",
                    "type": "polygonlabels",
                    "original_width": w0,
                    "original_height": h0,
                    "image_rotation": 0,
                    "value": {
                        "points": [[x / w0 * 100, y / h0 * 100] for x, y in c.tolist()],
                        "closed": True,
                        "polygonlabels": ["duck"],
                    },
                }
            ],
        )
        ml = ls.connect_backend(project, backend.url)
        assert ml["state"] == "CO", ml
        version = backend.get("/health").json()["model_version"]
        others = {k: v for k, v in tasks.items() if k != "duck_toy_00"}
        ls.retrieve_predictions(project, [t["id"] for t in others.values()])

        def check(name, region):
            gt = read_mask(perseg / f"{name}.png")
            w, h = Image.open(perseg / f"{name}.jpg").size
            assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["duck"]
            assert (region["original_width"], region["original_height"]) == (w, h)
            score = iou(polygon_mask(region["value"]["points"], w, h), gt)
            print(f"{name}: IoU {score:.3f}")
            assert score >= 0.8

        _check_predictions(ls, others, version, check)
        # an unauthorised call shows as "HTTP 401" / ": 401 ..." (not a port or a duration that contains 401)
        assert not re.search(r"(HTTP |: |\s)401(\s|$)", backend.log.read_text())
    finally:
        ls.set_legacy_tokens(True)
        ls.pat = None
        if backend is not None:
            backend.close()


def test_interactive_annotating(ls, backend_legacy, data_dir):
    perseg = data_dir / "perseg-mini"
    project = ls.create_project("E2E interactive", INTERACTIVE)
    tasks = ls.upload(project, [perseg / f"colorful_sneaker_0{i}.jpg" for i in range(2)])
    ls.annotate(
        tasks["colorful_sneaker_00"]["id"],
        [
            {**r, "value": {**r["value"], "brushlabels": ["sneaker"]}}
            for r in brush_result(read_mask(perseg / "colorful_sneaker_00.png"), "sneaker")
        ],
    )
    ml = ls.connect_backend(project, backend_legacy.url, interactive=True)
    assert ml["state"] == "CO", ml
    gt = read_mask(perseg / "colorful_sneaker_01.png")
    h, w = gt.shape
    dist = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    task_id = tasks["colorful_sneaker_01"]["id"]
    keypoint = {
        "id": "kp1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,  # no is_positive: positive
        "value": {"x": x / w * 100, "y": y / h * 100, "width": 0.5, "keypointlabels": ["sneaker"]},
    }
    ys, xs = np.nonzero(gt)
    box = {
        "id": "bx1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "is_positive": True,
        "value": {
            "x": xs.min() / w * 100,
            "y": ys.min() / h * 100,
            "width": (xs.max() + 1 - xs.min()) / w * 100,
            "height": (ys.max() + 1 - ys.min()) / h * 100,
            "rotation": 0,
            "rectanglelabels": ["sneaker"],
        },
    }
    for prompt in (keypoint, box):
        r = ls.call(
            "POST",
            f"/api/ml/{ml['id']}/interactive-annotating",
            json={"task": task_id, "context": {"result": [prompt]}},
        )
        data = r.json().get("data")
        assert data and "errors" not in r.json(), r.json()
        [region] = data["result"]
        assert region["type"] == "brushlabels" and region["from_name"] == "tag"
        assert region["value"]["brushlabels"] == ["sneaker"]
        assert (region["original_width"], region["original_height"]) == (w, h)
        mask = decode_brush(region)
        score = iou(mask, gt)
        print(f"interactive {prompt['type']}: IoU {score:.3f}")
        assert score >= 0.8
    # interactive calls are not stored as predictions
    assert ls.predictions(task_id) == []


def test_a_task_opened_before_any_example_gets_its_mask_once_one_exists(ls, workdir, data_dir):
    """Issue 14 item 1, the labelling loop as a person lives it: a task opened before any example exists must
    not keep an empty prediction of the current model_version (Label Studio would never ask for it again)."""
    perseg = data_dir / "perseg-mini"
    project = ls.create_project("E2E before any example", BRUSH)
    tasks = ls.upload(project, [perseg / f"cat_0{i}.jpg" for i in range(3)])
    backend = Backend(
        workdir, "before-examples", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_TOKEN, DCSAM_ENGINE="lite"
    )
    try:
        ml = ls.connect_backend(project, backend.url)
        assert ml["state"] == "CO", ml
        version = backend.get("/health").json()["model_version"]
        # a person opens a task, then retrieves predictions for all, before anything is annotated
        opened = tasks["cat_01"]["id"]
        ls.open_task(opened)
        assert backend.metric("dcsam_requests_total", endpoint="predict", status="200") == 1  # LS did ask
        ls.retrieve_predictions(project, [t["id"] for t in tasks.values()])
        assert backend.metric("dcsam_requests_total", endpoint="predict", status="200") == 2
        assert ls.project_predictions(project) == []  # nothing stored: nothing to stick
        ls.open_task(opened)  # reopening asks again (the task still has no prediction)
        assert backend.metric("dcsam_requests_total", endpoint="predict", status="200") == 3
        # the person labels one task; the webhook tells the backend
        ls.annotate(tasks["cat_00"]["id"], brush_result(read_mask(perseg / "cat_00.png"), "cat"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if backend.metric("dcsam_webhook_events_total", action="ANNOTATION_CREATED") >= 1:
                break
            time.sleep(0.5)
        assert backend.metric("dcsam_webhook_events_total", action="ANNOTATION_CREATED") >= 1
        # Retrieve Predictions on every task, with no deletion step: each ends with a mask
        ls.retrieve_predictions(project, [t["id"] for t in tasks.values()])

        def check(name, region):
            gt = read_mask(perseg / f"{name}.png")
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"]
            mask = decode_brush(region)
            print(f"{name}: IoU {iou(mask, gt):.3f}")
            assert mask.any() and iou(mask, gt) >= 0.8

        _check_predictions(ls, tasks, version, check)
        log = backend.log.read_text()
        assert "no accepted annotation with any of the labels" in log  # the person is told why, in the log
        assert re.search(rf"/predict project {project}: 3 task\(s\), 3 prediction\(s\)", log)
    finally:
        backend.close()
