"""Bad input at the edge: every case of issue 21 section A is a 400 (or a 401) with a short message, never a
500; real 500s carry an error id and keep the traceback in the log; /openapi.json describes the routes."""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pytest

from tests.support.configs import BRUSH_CONFIG, INTERACTIVE_CONFIG, SEQUENCE_CONFIG, VIDEO_CONFIG
from tests.support.fakes import image_bytes
from tests.support.regions import annotated_task, brush_region, data_url_png

HUGE = str(10**30)
BASIC = {"Authorization": "Basic " + base64.b64encode(b"u:pw").decode()}


def _short_400(r, *words: str) -> str:
    assert r.status_code == 400, (r.status_code, r.get_data(as_text=True)[:300])
    detail = r.json["detail"]
    assert "Traceback" not in detail and len(detail) < 600
    for word in words:
        assert word in detail, (word, detail)
    return detail


def _image_task(task_id: int = 1) -> dict:
    return {"id": task_id, "data": {"image": data_url_png(np.ones((16, 16), bool))}}


# -- ids --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("project", ["²", "١٢", 10**30, HUGE, HUGE + ".17", -1, 0, True, "x", [1], 1.5])
def test_bad_project_ids_are_a_400(harness_factory, project):
    h = harness_factory()
    _short_400(h.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG}), "project")
    body = {"project": project, "tasks": [_image_task()], "label_config": BRUSH_CONFIG}
    _short_400(h.client.post("/predict", json=body), "project")
    _short_400(h.client.post("/jobs/train", json={"project": project}), "project")
    _short_400(h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}), "project")


@pytest.mark.parametrize("query", ["project=%C2%B2", f"project={HUGE}", "project=-4", "limit=0", "limit=x"])
def test_bad_queries_are_a_400(harness_factory, query):
    h = harness_factory()
    _short_400(h.client.get(f"/jobs?{query}"))
    if query.startswith("project"):
        _short_400(h.client.get(f"/versions?{query}"), "project")


@pytest.mark.parametrize("job_id", [HUGE, "²", "0", "-1", "abc", "9" * 19])
def test_job_ids_are_bounded_to_sqlite_integers(harness_factory, job_id):
    h = harness_factory()
    _short_400(h.client.get(f"/jobs/{job_id}"), "job id")
    _short_400(h.client.post(f"/jobs/{job_id}/cancel"), "job id")
    assert h.client.get(f"/jobs/{2**63 - 1}").status_code == 404  # the largest id is a valid one: no such job


def test_label_studio_project_ids_still_parse(harness_factory):
    h = harness_factory()
    assert h.client.post("/setup", json={"project": "12.1719999999", "schema": BRUSH_CONFIG}).status_code == 200
    assert h.service.store.projects.get(12)["label_config"] == BRUSH_CONFIG
    assert h.client.post("/jobs/train", json={"project": str(2**63 - 1)}).status_code == 202


# -- label configs and nesting -----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [["<View/>"], {"a": 1}, 5])
def test_label_config_of_the_wrong_type_is_a_400(harness_factory, config):
    h = harness_factory()
    _short_400(h.client.post("/predict", json={"tasks": [_image_task()], "label_config": config}), "label_config")
    _short_400(h.client.post("/setup", json={"project": 1, "schema": config}), "schema")
    _short_400(h.client.post("/setup", json={"project": 1, "label_config": config}), "label_config")


def test_the_service_refuses_a_label_config_that_is_not_text(harness_factory):
    from backend.labelstudio.labelconfig import LabelConfigError

    h = harness_factory()
    with pytest.raises(LabelConfigError, match="XML text"):
        h.service.label_config(1, ["<View/>"])


@pytest.mark.parametrize(
    "endpoint", ["/setup", "/predict", "/webhook", "/jobs/preannotate", "/jobs/train", "/versions/x/activate"]
)
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a": ' * 100_000, b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"])
def test_deeply_nested_bodies_are_a_400(harness_factory, endpoint, body):
    h = harness_factory()
    _short_400(h.client.post(endpoint, data=body, content_type="application/json"), "nests deeper")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_a_400(harness_factory, literal):
    h = harness_factory()
    r = h.client.post(
        "/setup", data=b'{"project": 1, "extra_params": ' + literal + b"}", content_type="application/json"
    )
    _short_400(r, "not JSON")


def test_sizes_are_bounded(harness_factory):
    h = harness_factory()
    body = {"tasks": [{}] * 10_001, "label_config": BRUSH_CONFIG, "project": 1}
    _short_400(h.client.post("/predict", json=body), "tasks")
    _short_400(h.client.post("/setup", json={"project": 1, "schema": "<View>" + " " * 2_000_000 + "</View>"}))
    _short_400(h.client.post("/setup", json={"project": 1, "schema": BRUSH_CONFIG, "hostname": "h" * 5000}))
    _short_400(h.client.post("/versions/" + "v" * 300 + "/activate", json={"project": 1}), "version name")


# -- interactive /predict ---------------------------------------------------------------------------------------
def _keypoint(**value) -> dict:
    return {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "value": {"x": 50, "y": 50, **value}}


def _rectangle(**value) -> dict:
    base = {"x": 10, "y": 10, "width": 30, "height": 30, "rectanglelabels": ["cat"]}
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "value": {**base, **value}}


@pytest.mark.parametrize(
    "context, words",
    [
        ({"result": [_keypoint(x="nan")]}, ["x", "finite"]),
        ({"result": [_keypoint(x="inf")]}, ["x", "finite"]),
        ({"result": [_keypoint(x=1e300)]}, ["x", "0 to 100"]),
        ({"result": [_keypoint(y=-1e9)]}, ["y", "0 to 100"]),
        ({"result": [_rectangle(width="nan")]}, ["width", "finite"]),
        ({"result": [_rectangle(height=250)]}, ["height", "0 to 100"]),
        ({"result": [{**_keypoint(), "value": [50, 50]}]}, ["value"]),
        ({"result": [{**_keypoint(), "value": 5}]}, ["value"]),
        ({"result": [_keypoint(keypointlabels=5)]}, ["keypointlabels"]),
        ({"result": [_keypoint(keypointlabels=[5])]}, ["keypointlabels"]),
        ({"result": [{**_keypoint(), "type": "keypoint", "value": {"x": 1, "y": 1, "keypoint": 7}}]}, ["keypoint"]),
        ({"result": [{**_keypoint(), "is_positive": "false"}]}, ["is_positive"]),
        ({"result": 5}, ["result"]),
        ({"result": [5]}, ["result"]),
        ({"result": "abc"}, ["result"]),
    ],
)
def test_bad_interactive_contexts_are_a_400(harness_factory, context, words):
    h = harness_factory()
    _short_400(h.predict(1, INTERACTIVE_CONFIG, [_image_task()], context), "context", *words)


def test_bad_params_and_tasks_are_a_400(harness_factory):
    h = harness_factory()
    for body in (
        {"tasks": [_image_task()], "label_config": BRUSH_CONFIG, "params": 5},
        {"tasks": [_image_task()], "label_config": BRUSH_CONFIG, "params": {"context": [1]}},
        {"tasks": [{"id": 1, "data": [1, 2]}], "label_config": BRUSH_CONFIG},
        {"tasks": [{"id": {"a": 1}, "data": {}}], "label_config": BRUSH_CONFIG},
        {"tasks": [5], "label_config": BRUSH_CONFIG},
        {"label_config": BRUSH_CONFIG},
    ):
        _short_400(h.client.post("/predict", json=body))


def test_keypoints_on_a_video_only_config_are_a_400(harness_factory):
    h = harness_factory()
    task = {"id": 1, "data": {"video": "/data/upload/1/v.mp4"}}
    _short_400(h.predict(1, VIDEO_CONFIG, [task], {"result": [_keypoint()]}), "mask control")


def test_label_studio_interactive_context_passes(harness_factory):
    """The context Label Studio sends (docs/labelstudio-backend.md 1.7), extra keys included, is answered."""
    h = harness_factory()
    region = {
        "id": "fBWv1t0S2L",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": 16,
        "original_height": 16,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": 49.4, "y": 59.9, "width": 0.32, "keypointlabels": ["cat"]},
    }
    task = {**_image_task(17), "meta": {}, "project": 3, "annotations": [], "predictions": [], "drafts": []}
    body = {
        "tasks": [task],
        "project": "3.1719999999",
        "label_config": INTERACTIVE_CONFIG,
        "params": {"login": None, "password": None, "context": {"result": [region]}, "hostname": "http://ls"},
    }
    r = h.client.post("/predict", json=body)
    assert r.status_code == 200 and len(r.json["results"]) == 1


# -- frame numbers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frame", ["inf", "-inf", "nan", float("inf"), "1e400", [1], None])
def test_frame_numbers_that_are_no_numbers_are_no_frames(frame):
    from backend.services.video import sequence_id

    assert sequence_id({"data": {"video": "v", "frame": frame}}, "video", "frame") is None
    assert sequence_id({"data": {"video": "v", "frame": "7"}}, "video", "frame") == ("v", 7)


@pytest.mark.parametrize("frame", [b'"inf"', b"1e400", b"-1e400"])
def test_tasks_with_infinite_frames_are_predicted_as_images(harness_factory, fake_ls, frame):
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), bool)
    img[16:48, 16:48] = 255
    mask[16:48, 16:48] = True
    fake_ls.files["/data/upload/1/a.png"] = image_bytes(img, "PNG")
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/a.png", [brush_region(mask, "car")]))
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    raw = (
        b'{"project": "1.17", "label_config": %s, "tasks": [{"id": 2, "project": 1, '
        b'"data": {"image": "/data/upload/1/a.png", "video": "v1", "frame": %s}}]}'
    ) % (json.dumps(SEQUENCE_CONFIG).encode(), frame)
    r = h.client.post("/predict", data=raw, content_type="application/json")
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    [prediction] = r.json["results"]
    assert [region["type"] for region in prediction["result"]] == ["brushlabels"]  # segmented as a plain image


# -- secrets ----------------------------------------------------------------------------------------------------
def test_non_ascii_credentials_are_a_401(harness_factory):
    h = harness_factory(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw", DCSAM_WEBHOOK_SECRET="s3cret")
    for user_pass in ("ü:pw", "u:pä", "日本:語"):
        cred = {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}
        assert h.client.get("/health", headers=cred).status_code == 401, user_pass
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert h.client.post("/webhook", json=body, headers={"X-Webhook-Secret": "sécret"}).status_code == 401
    assert h.client.post("/webhook?token=s%C3%A9cret", json=body).status_code == 401
    assert h.client.post("/webhook?token=%E6%97%A5", json=body).status_code == 401
    assert h.client.post("/webhook?token=s3cret", json=body).status_code == 200
    assert h.client.get("/health", headers=BASIC).status_code == 200


def test_non_ascii_configured_secrets_still_match(harness_factory):
    h = harness_factory(BASIC_AUTH_USER="jürgen", BASIC_AUTH_PASS="pä", DCSAM_WEBHOOK_SECRET="sé")
    cred = {"Authorization": "Basic " + base64.b64encode("jürgen:pä".encode()).decode()}
    assert h.client.get("/health", headers=cred).status_code == 200
    assert h.client.post("/webhook?token=s%C3%A9", json={"action": "NOPE"}).status_code == 200


# -- 500s -------------------------------------------------------------------------------------------------------
def test_a_500_carries_an_error_id_and_keeps_the_traceback_in_the_log(harness_factory, monkeypatch, caplog):
    h = harness_factory()

    def broken(project_id):
        raise RuntimeError("secret internals at /srv/model")

    monkeypatch.setattr(h.service, "list_versions", broken)
    with caplog.at_level(logging.ERROR, logger="backend.labelstudio.app"):
        r = h.client.get("/versions")
    assert r.status_code == 500
    answer = r.json
    error_id = answer.pop("error_id")
    assert answer == {"status": 500, "detail": "internal error"} and len(error_id) >= 8
    assert "secret" not in r.get_data(as_text=True) and "RuntimeError" not in r.get_data(as_text=True)
    [record] = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert record.exc_info and "secret internals" in str(record.exc_info[1])


# -- webhook metric labels --------------------------------------------------------------------------------------
def test_webhook_action_labels_are_bounded_to_known_events(harness_factory):
    h = harness_factory()
    for i in range(20):
        assert h.client.post("/webhook", json={"action": f"MADE_UP_{i}"}).json["status"] == "ignored"
    _short_400(h.client.post("/webhook", json={"action": "A" * 5_000_000}), "action")
    h.client.post("/webhook", json={"action": "PROJECT_CREATED", "project": {"id": 1}})
    h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    text = h.client.get("/metrics").get_data(as_text=True)
    lines = [line for line in text.splitlines() if line.startswith("dcsam_webhook_events_total{")]
    assert sorted(lines) == [
        'dcsam_webhook_events_total{action="START_TRAINING"} 1.0',
        'dcsam_webhook_events_total{action="other"} 21.0',
    ]
    assert len(text) < 100_000


def test_label_studio_webhook_payload_passes(harness_factory):
    h = harness_factory()
    assert h.setup(3, BRUSH_CONFIG).status_code == 200  # a project set up here: its events are acted on
    body = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 5, "task": 17, "result": [], "was_cancelled": False, "ground_truth": False},
        "task": {"id": 17, "data": {"image": "x"}, "project": 3},
        "project": {"id": 3, "label_config": BRUSH_CONFIG, "title": "p"},
    }
    r = h.client.post("/webhook", json=body)
    assert r.status_code == 200 and r.json["status"] == "ok"
    r = h.client.post("/webhook", json={**body, "project": None})  # the task names the project
    assert r.status_code == 200 and r.json["status"] == "ok"


# -- OpenAPI ----------------------------------------------------------------------------------------------------
def test_openapi_document_describes_every_route_and_honours_basic_auth(harness_factory):
    h = harness_factory(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="pw")
    assert h.client.get("/openapi.json").status_code == 401
    doc = h.client.get("/openapi.json", headers=BASIC).json
    assert doc["openapi"].startswith("3.1")
    routes = {
        rule.rule.replace("<", "{").replace(">", "}")
        for rule in h.app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert routes == set(doc["paths"])
    predict = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert predict == {"$ref": "#/components/schemas/PredictBody"}
    assert doc["components"]["schemas"]["PredictBody"]["properties"]["tasks"]["maxItems"] == 10_000
