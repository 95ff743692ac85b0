"""Protocol tests of the Label Studio ML backend with Flask's test client and a fake Label Studio."""

from __future__ import annotations

import base64
import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from dcsam.masks import iou
from tests.support.configs import BITMASK_CONFIG, BRUSH_CONFIG, INTERACTIVE_CONFIG, POLYGON_CONFIG
from tests.support.fakes import LEGACY_TOKEN, image_bytes, make_pat
from tests.support.regions import annotated_task, brush_region, data_url_png, decode_brush


def _ls_env(fake_ls, **extra):
    return {"LABEL_STUDIO_URL": fake_ls.url, "LABEL_STUDIO_API_KEY": fake_ls.api_key, **extra}


def _cat_project(fake_ls, perseg, project=1):
    """Task 1 = cat_00 annotated (brush); cat_01 and cat_02 uploaded."""
    for name in ("cat_00", "cat_01", "cat_02"):
        fake_ls.files[f"/data/upload/{project}/{name}.jpg"] = image_bytes(perseg[name][0])
    img, mask = perseg["cat_00"]
    fake_ls.tasks.append(annotated_task(1, project, f"/data/upload/{project}/cat_00.jpg", [brush_region(mask, "cat")]))
    return [
        {"id": 2, "project": project, "data": {"image": f"/data/upload/{project}/cat_01.jpg"}},
        {"id": 3, "project": project, "data": {"image": f"/data/upload/{project}/cat_02.jpg"}},
    ]


# -- /health, /setup --------------------------------------------------------------------------------
def test_health_and_setup_answer_without_loading_the_model(harness_factory):
    h = harness_factory()
    r = h.client.get("/health")
    assert r.status_code == 200 and r.json["status"] == "UP" and r.json["model_loaded"] is False
    r = h.setup(3, BRUSH_CONFIG, hostname="http://ls.example", access_token="abc", extra_params={"a": [1]})
    assert r.status_code == 200
    version = r.json["model_version"]
    assert version.startswith("lite-")
    assert h.factory_calls == 0 and not h.service.runtime.loaded
    assert h.client.get("/").json["status"] == "UP"
    assert h.service.store.projects.get(3)["extra_params"] == {"a": [1]}


@pytest.mark.parametrize(
    "schema, message",
    [
        (
            '<View><Image name="image" value="$image"/>'
            '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>',
            "no mask control",
        ),
        (
            '<View><Text name="t" value="$text"/>'
            '<BrushLabels name="b" toName="t"><Label value="a"/></BrushLabels></View>',
            "no <Image>",
        ),
        ("<View><Image name='image' value='$image'", "not valid XML"),
        (None, "no label config"),
    ],
)
def test_setup_rejects_configs_it_cannot_serve(harness_factory, schema, message):
    h = harness_factory()
    r = h.client.post("/setup", json={"project": "1.2", "schema": schema})
    assert r.status_code == 400
    assert message in r.json["detail"]


@pytest.mark.parametrize("endpoint", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
def test_malformed_json_is_a_400(harness_factory, endpoint, body):
    h = harness_factory()
    r = h.client.post(endpoint, data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.json["detail"]


def test_predict_rejects_bad_task_lists(harness_factory):
    h = harness_factory()
    r = h.client.post("/predict", json={"tasks": "nope", "label_config": BRUSH_CONFIG})
    assert r.status_code == 400 and "tasks" in r.json["detail"]
    r = h.client.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "project": "9.1"})
    assert r.status_code == 400 and "label config" in r.json["detail"]


# -- /predict, batch ----------------------------------------------------------------------------------
def test_predict_brush_one_result_per_task_in_order_with_version(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    broken = {"id": 4, "project": 1, "data": {"image": "/data/upload/1/missing.jpg"}}
    fake_ls.files["/data/upload/1/garbage.jpg"] = b"this is not a jpeg"
    garbage = {"id": 5, "project": 1, "data": {"image": "/data/upload/1/garbage.jpg"}}
    no_key = {"id": 6, "project": 1, "data": {"other": "x"}}
    h = harness_factory(**_ls_env(fake_ls))
    version = h.setup(1, BRUSH_CONFIG).json["model_version"]
    r = h.predict(1, BRUSH_CONFIG, [tasks[0], broken, garbage, tasks[1], no_key])
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == 5
    # a task whose media fails gets no prediction ([]): Label Studio asks again later instead of storing an empty one
    assert results[1] == [] and results[2] == [] and results[4] == []
    assert all(results[i]["model_version"] == version for i in (0, 3))
    for i, name in ((0, "cat_01"), (3, "cat_02")):
        [region] = results[i]["result"]
        gt = perseg[name][1]
        assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
        assert region["value"]["brushlabels"] == ["cat"]
        assert (region["original_height"], region["original_width"]) == gt.shape
        assert 0.0 <= region["score"] <= 1.0
        assert iou(decode_brush(region), gt) >= 0.8
    assert h.service.runtime.loads == 1


def test_predictions_carry_the_version_of_the_weights_that_made_them(harness_factory, fake_ls, perseg, monkeypatch):
    """A promotion can land between a request reading the project's version and its model call: each mask is
    labelled with the version whose weights were loaded for it, not the one read first."""
    tasks, h, gt, (x, y) = _click_on_a_cat(harness_factory, fake_ls, perseg)
    served = h.setup(1, BRUSH_CONFIG).json["model_version"]
    monkeypatch.setattr(h.service.predictor, "version_for", lambda project_id: "read-before-a-promotion")
    [pred] = h.predict(1, BRUSH_CONFIG, tasks[:1]).json["results"]
    assert pred["result"] and pred["model_version"] == served
    keypoint = _keypoint(gt, x, y)
    [pred] = h.predict(1, INTERACTIVE_CONFIG, tasks[:1], context={"result": [keypoint]}).json["results"]
    assert pred["result"] and pred["model_version"] == served


def test_task_without_examples_gets_no_prediction_and_a_log_line(harness_factory, fake_ls, perseg, caplog):
    fake_ls.files["/data/upload/1/cat_01.jpg"] = image_bytes(perseg["cat_01"][0])
    h = harness_factory(**_ls_env(fake_ls))
    with caplog.at_level(logging.WARNING):
        r = h.predict(1, BRUSH_CONFIG, [{"id": 2, "data": {"image": "/data/upload/1/cat_01.jpg"}}])
    assert r.status_code == 200
    assert r.json["results"] == [[]]  # one element per task: no prediction, so none is stored and it is asked again
    assert any("no accepted annotation" in rec.message for rec in caplog.records)


def test_polygon_output_in_percent(harness_factory, fake_ls, perseg):
    import cv2

    img, mask = perseg["cat_00"]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2)
    h_, w_ = mask.shape
    points = [[float(x) / w_ * 100, float(y) / h_ * 100] for x, y in c]
    region = {
        "from_name": "poly",
        "to_name": "img",
        "type": "polygonlabels",
        "original_width": w_,
        "original_height": h_,
        "value": {"points": points, "closed": True, "polygonlabels": ["cat"]},
    }
    fake_ls.files["/data/upload/1/cat_00.jpg"] = image_bytes(img)
    fake_ls.files["/data/upload/1/cat_01.jpg"] = image_bytes(perseg["cat_01"][0])
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/cat_00.jpg", [region], key="picture"))
    h = harness_factory(**_ls_env(fake_ls))
    r = h.predict(1, POLYGON_CONFIG, [{"id": 2, "data": {"picture": "/data/upload/1/cat_01.jpg"}}])
    [out] = r.json["results"][0]["result"]
    assert out["type"] == "polygonlabels" and out["value"]["polygonlabels"] == ["cat"] and out["value"]["closed"]
    pts = np.asarray(out["value"]["points"])
    assert pts.shape[1] == 2 and len(pts) >= 3 and pts.min() >= 0 and pts.max() <= 100
    gt = perseg["cat_01"][1]
    drawn = np.zeros(gt.shape, np.uint8)
    cv2.fillPoly(drawn, [np.round(pts * [gt.shape[1] / 100, gt.shape[0] / 100]).astype(np.int32)], 1)
    assert (out["original_height"], out["original_width"]) == gt.shape
    assert iou(drawn > 0, gt) >= 0.75


def test_bitmask_output_is_png_with_alpha(harness_factory, fake_ls, perseg):
    img, mask = perseg["cat_00"]
    region = {
        "from_name": "bm",
        "to_name": "image",
        "type": "bitmasklabels",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "value": {"imageDataURL": data_url_png(mask), "bitmasklabels": ["cat"]},
    }
    fake_ls.files["/data/upload/1/cat_00.jpg"] = image_bytes(img)
    fake_ls.files["/data/upload/1/cat_02.jpg"] = image_bytes(perseg["cat_02"][0])
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/cat_00.jpg", [region]))
    h = harness_factory(**_ls_env(fake_ls))
    [out] = h.predict(1, BITMASK_CONFIG, [{"id": 3, "data": {"image": "/data/upload/1/cat_02.jpg"}}]).json["results"][
        0
    ]["result"]
    url = out["value"]["imageDataURL"]
    assert url.startswith("data:image/png;base64,") and out["value"]["bitmasklabels"] == ["cat"]
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.mode == "RGBA" and png.size == (out["original_width"], out["original_height"])
    alpha = np.asarray(png)[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert iou(alpha > 0, perseg["cat_02"][1]) >= 0.8


# -- examples: selection, caching, invalidation ---------------------------------------------------
def test_examples_are_the_latest_k_accepted_annotations_per_label(perseg):
    from backend.labelstudio.labelconfig import parse_label_config
    from backend.services.examples import select_examples

    cfg = parse_label_config(BRUSH_CONFIG)
    m = perseg["cat_00"][1]
    tasks = [
        annotated_task(1, 1, "a", [brush_region(m, "cat")], annotation_id=11, updated_at="2026-01-01T00:00:00Z"),
        annotated_task(2, 1, "b", [brush_region(m, "cat")], annotation_id=12, updated_at="2026-03-01T00:00:00Z"),
        annotated_task(
            3, 1, "c", [brush_region(m, "cat")], annotation_id=13, updated_at="2026-05-01T00:00:00Z", cancelled=True
        ),
        annotated_task(4, 1, "d", [brush_region(m, "duck"), brush_region(m, "unknown")], annotation_id=14),
        annotated_task(
            5, 1, "e", [brush_region(m, "cat", from_name="other")], annotation_id=15, updated_at="2026-09-01T00:00:00Z"
        ),
    ]
    chosen = select_examples(tasks, cfg, k=1)
    assert {k.split("\x1f")[1]: [r.annotation_id for r in v] for k, v in chosen.items()} == {"cat": [12], "duck": [14]}
    chosen = select_examples(tasks, cfg, k=5)
    assert [r.annotation_id for r in chosen["tag\x1fcat"]] == [12, 11]


def test_webhook_acknowledges_and_invalidates_the_example_cache(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    h = harness_factory(**_ls_env(fake_ls), DCSAM_EXAMPLES_RECHECK_S="3600")

    def listings():
        return sum(1 for r in fake_ls.requests if r.path == "/api/tasks")

    h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert listings() == 1
    h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert listings() == 1  # cached, no webhook, recheck interval not reached
    assert h.service.store.examples.of_project(1)[0]["annotation_id"] == 10
    # the annotation is replaced by a newer one on another task
    fake_ls.tasks[0]["annotations"][0]["was_cancelled"] = True
    fake_ls.tasks.append(
        annotated_task(
            3,
            1,
            "/data/upload/1/cat_02.jpg",
            [brush_region(perseg["cat_02"][1], "cat")],
            annotation_id=31,
            updated_at="2026-11-02T00:00:00Z",
        )
    )
    payload = {
        "action": "ANNOTATION_UPDATED",
        "annotation": {"id": 10, "task": 1, "project": 1},
        "project": {"id": 1},
        "task": {"id": 1},
    }
    r = h.client.post("/webhook", json=payload)
    assert r.status_code == 200 and r.json["status"] == "ok"
    assert h.service.runner.wait_idle(60)
    assert [e["annotation_id"] for e in h.service.store.examples.of_project(1)] == [31]
    assert h.service.store.jobs.list()[0]["status"] == "done"
    before = listings()
    h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert listings() == before  # the background sync already refreshed it


def test_updated_at_safety_net_without_webhook(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    h = harness_factory(**_ls_env(fake_ls), DCSAM_EXAMPLES_RECHECK_S="0")
    h.predict(1, BRUSH_CONFIG, tasks[:1])
    pe = h.service.examples.project(1)
    first = dict(pe.fingerprints)
    fake_ls.tasks[0]["annotations"][0]["updated_at"] = "2026-12-01T00:00:00Z"
    fake_ls.tasks[0]["annotations"][0]["result"] = [brush_region(perseg["cat_00"][1][::-1].copy(), "cat")]
    h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert pe.fingerprints != first
    assert h.service.store.examples.of_project(1)[0]["updated_at"] == "2026-12-01T00:00:00Z"


@pytest.mark.parametrize(
    "payload", [{"action": "SOMETHING_NEW", "project": {"id": 1}}, {"action": "LABEL_LINK_CREATED"}, {"no": "action"}]
)
def test_unknown_webhook_events_are_ignored_with_200(harness_factory, payload):
    h = harness_factory()
    r = h.client.post("/webhook", json=payload)
    assert r.status_code == 200 and r.json["status"] == "ignored"


def test_start_training_is_acknowledged_and_recorded(harness_factory):
    h = harness_factory()
    h.setup(7, BRUSH_CONFIG)  # an unverified webhook only acts on projects set up here
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7, "label_config": BRUSH_CONFIG}})
    assert r.status_code == 200
    assert h.service.runner.wait_idle(30) and h.service.runner.wait_idle(30)
    [train] = h.service.store.jobs.list(kind="train")
    # queued as a fine-tune (backend/training.py); without a Label Studio URL/token it cannot read annotations
    assert r.json["job"] == train["id"] and train["status"] == "failed" and "Label Studio URL/token" in train["message"]


# -- auth ---------------------------------------------------------------------------------------
def test_basic_auth_protects_everything_but_the_webhook(harness_factory):
    h = harness_factory(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p w")
    cred = {"Authorization": "Basic " + base64.b64encode(b"u:p w").decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"u:nope").decode()}
    for method, path in (
        ("get", "/health"),
        ("post", "/setup"),
        ("post", "/predict"),
        ("get", "/versions"),
        ("get", "/metrics"),
    ):
        r = getattr(h.client, method)(path, json={}, headers=wrong)
        assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert h.client.get("/health", headers=cred).status_code == 200
    assert h.client.post("/setup", json={"project": "1.1", "schema": BRUSH_CONFIG}, headers=cred).status_code == 200
    # LS sends webhooks without basic auth: accepted (no secret configured)
    assert h.client.post("/webhook", json={"action": "PROJECT_CREATED", "project": {"id": 1}}).status_code == 200


def test_webhook_secret_header_or_query_token(harness_factory):
    h = harness_factory(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p", DCSAM_WEBHOOK_SECRET="s3cret")
    body = {"action": "PROJECT_CREATED", "project": {"id": 1}}
    assert h.client.post("/webhook", json=body).status_code == 401
    assert h.client.post("/webhook?token=wrong", json=body).status_code == 401
    assert h.client.post("/webhook?token=s3cret", json=body).status_code == 200
    assert h.client.post("/webhook", json=body, headers={"X-Webhook-Secret": "s3cret"}).status_code == 200


# -- media and tokens ------------------------------------------------------------------------------
def test_token_is_only_sent_to_the_label_studio_host(harness_factory, fake_ls, external, perseg):
    _cat_project(fake_ls, perseg)
    external.files["cat_01.jpg"] = image_bytes(perseg["cat_01"][0])
    external.files["cat_02.jpg"] = image_bytes(perseg["cat_02"][0])
    fake_ls.presign_target = external.url
    h = harness_factory(**_ls_env(fake_ls))
    r = h.predict(
        1,
        BRUSH_CONFIG,
        [
            {"id": 2, "data": {"image": f"{external.url}/img/cat_01.jpg"}},
            {"id": 3, "data": {"image": "s3://bucket/cat_02.jpg"}},
        ],
    )
    assert [len(p["result"]) for p in r.json["results"]] == [1, 1]
    # downloaded by a pool: in any order
    assert sorted(rec.path for rec in external.requests) == ["/bucket/cat_02.jpg", "/img/cat_01.jpg"]
    assert all(rec.authorization is None for rec in external.requests)
    presign = [rec for rec in fake_ls.requests if rec.path.startswith("/tasks/3/presign")]
    assert presign and presign[0].authorization == f"Token {LEGACY_TOKEN}"


def test_personal_access_token_is_exchanged_for_access_tokens(harness_factory, fake_ls, perseg):
    fake_ls.api_key = make_pat()
    tasks = _cat_project(fake_ls, perseg)
    h = harness_factory(**_ls_env(fake_ls))
    r = h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert len(r.json["results"][0]["result"]) == 1
    assert fake_ls.refreshes >= 1
    used = [rec.authorization for rec in fake_ls.requests if rec.path.startswith(("/api/tasks", "/data/upload"))]
    assert used and all(a.startswith("Bearer ") and a[7:] in fake_ls.access_tokens for a in used)
    assert all(fake_ls.api_key not in (rec.authorization or "") for rec in fake_ls.requests)


def test_setup_credentials_are_used_when_the_environment_has_none(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    h = harness_factory()
    h.setup(1, BRUSH_CONFIG, hostname=fake_ls.url, access_token=fake_ls.api_key)
    r = h.predict(1, BRUSH_CONFIG, tasks[:1])
    assert len(r.json["results"][0]["result"]) == 1


def test_local_files_stay_inside_the_document_root(harness_factory, fake_ls, perseg, tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "cat_01.jpg").write_bytes(image_bytes(perseg["cat_01"][0]))
    (tmp_path / "secret.jpg").write_bytes(image_bytes(perseg["cat_02"][0]))
    os.symlink(tmp_path / "secret.jpg", root / "imgs" / "link.jpg")
    _cat_project(fake_ls, perseg)
    h = harness_factory(**_ls_env(fake_ls), LOCAL_FILES_DOCUMENT_ROOT=str(root))
    r = h.predict(
        1,
        BRUSH_CONFIG,
        [
            {"id": 2, "data": {"image": "/data/local-files/?d=imgs/cat_01.jpg"}},
            {"id": 3, "data": {"image": "/data/local-files/?d=../secret.jpg"}},
            {"id": 4, "data": {"image": "/data/local-files/?d=imgs/link.jpg"}},
            {"id": 5, "data": {"image": "/data/local-files/?d=" + str(tmp_path / "secret.jpg")}},
        ],
    )
    results = r.json["results"]
    assert len(results[0]["result"]) == 1 and results[1:] == [[], [], []]  # refused: no prediction
    # read from disk, never from Label Studio; escapes are refused outright (not fetched elsewhere either);
    # an absolute ?d= is relative to the root, as in Label Studio: not found there, so only LS is asked
    asked = [rec.query for rec in fake_ls.requests if rec.path.startswith("/data/local-files")]
    assert asked == ["d=" + str(tmp_path / "secret.jpg")]


def test_oversized_images_fail_only_their_task(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    big = np.zeros((1200, 1300, 3), np.uint8)
    fake_ls.files["/data/upload/1/big.png"] = image_bytes(big, "PNG")
    h = harness_factory(**_ls_env(fake_ls), DCSAM_MAX_IMAGE_PIXELS=str(1_000_000))
    r = h.predict(1, BRUSH_CONFIG, [{"id": 9, "data": {"image": "/data/upload/1/big.png"}}, tasks[0]])
    big_one, ok = r.json["results"]
    assert big_one == [] and len(ok["result"]) == 1
    h2 = harness_factory(**_ls_env(fake_ls), DCSAM_MAX_DOWNLOAD_MB="0.001")
    r = h2.predict(1, BRUSH_CONFIG, tasks[:1])
    assert r.status_code == 200 and r.json["results"] == [[]]


# -- interactive -------------------------------------------------------------------------------------
def _inside_point(mask: np.ndarray) -> tuple[float, float]:
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return float(x), float(y)


def _keypoint(gt: np.ndarray, x: float, y: float) -> dict:
    """A positive smart-keypoint region at pixel (x, y) of an image shaped like ``gt``."""
    H, W = gt.shape
    return {
        "id": "k1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": W,
        "original_height": H,
        "value": {"x": x / W * 100, "y": y / H * 100, "width": 0.5, "keypointlabels": ["cat"]},
    }


def _click_on_a_cat(harness_factory, fake_ls, perseg):
    """The cat project, a backend, cat_01's ground truth and a point well inside it."""
    tasks = _cat_project(fake_ls, perseg)
    gt = perseg["cat_01"][1]
    return tasks, harness_factory(**_ls_env(fake_ls)), gt, _inside_point(gt)


def test_interactive_keypoint_and_box_return_one_region_for_the_mask_control(harness_factory, fake_ls, perseg):
    tasks, h, gt, (x, y) = _click_on_a_cat(harness_factory, fake_ls, perseg)
    H, W = gt.shape
    keypoint = _keypoint(gt, x, y)
    r = h.predict(1, INTERACTIVE_CONFIG, tasks[:1], context={"result": [keypoint]})  # is_positive missing: positive
    [pred] = r.json["results"]
    [region] = pred["result"]
    assert (
        region["from_name"] == "tag" and region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"]
    )
    mask = decode_brush(region)
    assert mask.shape == gt.shape and mask[round(y), round(x)]
    assert iou(mask, gt) >= 0.7
    ys, xs = np.nonzero(gt)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    rect = {
        "id": "b1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "value": {
            "x": x0 / W * 100,
            "y": y0 / H * 100,
            "width": (x1 - x0) / W * 100,
            "height": (y1 - y0) / H * 100,
            "rotation": 0,
            "rectanglelabels": ["cat"],
        },
    }
    [region] = h.predict(1, INTERACTIVE_CONFIG, tasks[:1], context={"result": [rect]}).json["results"][0]["result"]
    mask = decode_brush(region)
    outside = np.ones_like(mask)
    outside[y0:y1, x0:x1] = False
    assert not (mask & outside).any()
    assert iou(mask, gt) >= 0.7


def test_interactive_negative_click_removes_that_spot(harness_factory, fake_ls, perseg):
    tasks, h, gt, (x, y) = _click_on_a_cat(harness_factory, fake_ls, perseg)
    H, W = gt.shape

    def kp(px, py, positive):
        return {
            "from_name": "kp",
            "to_name": "image",
            "type": "keypointlabels",
            "is_positive": positive,
            "value": {"x": px / W * 100, "y": py / H * 100, "keypointlabels": ["cat"]},
        }

    neg = (x, max(0.0, y - 25))
    [region] = h.predict(1, INTERACTIVE_CONFIG, tasks[:1], context={"result": [kp(x, y, True), kp(*neg, False)]}).json[
        "results"
    ][0]["result"]
    mask = decode_brush(region)
    assert mask[round(y), round(x)] and not mask[round(neg[1]), round(neg[0])]


# -- versions, metrics, model loading -------------------------------------------------------------
def test_versions_metrics_and_model_loaded_once(harness_factory, fake_ls, perseg):
    tasks = _cat_project(fake_ls, perseg)
    h = harness_factory(**_ls_env(fake_ls))
    version = h.setup(1, BRUSH_CONFIG).json["model_version"]
    assert h.client.get("/versions").json["versions"][0] == version
    for _ in range(2):
        h.predict(1, BRUSH_CONFIG, tasks)
    h.client.post("/webhook", json={"action": "NOPE"})
    text = h.client.get("/metrics").get_data(as_text=True)
    assert "dcsam_predictions_total 4" in text
    assert "dcsam_model_loads_total 1" in text and "dcsam_model_loaded 1" in text
    assert 'dcsam_webhook_events_total{action="other"} 1' in text and "NOPE" not in text
    assert h.factory_calls == 1


def test_model_load_failure_is_a_clear_500_and_health_stays_up(tmp_path):
    from backend.labelstudio.app import create_app
    from backend.settings import BackendSettings

    def broken(config):
        raise RuntimeError("weights missing")

    settings = BackendSettings.from_env({"MODEL_DIR": str(tmp_path), "DCSAM_ENGINE": "lite"})
    client = create_app(settings, segmenter_factory=broken).test_client()
    r = client.post(
        "/predict",
        json={
            "tasks": [{"id": 1, "data": {"image": "data:image/png;base64,AAAA"}}],
            "label_config": BRUSH_CONFIG,
            "project": "1.1",
        },
    )
    # no LS access -> no examples -> empty prediction, the model is not even needed
    assert r.status_code == 200 and r.json["results"] == [[]]
    assert client.get("/health").status_code == 200
