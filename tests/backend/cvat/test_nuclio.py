"""The Nuclio handler in-process, with nuclio-sdk's own Event and Context, on real images."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcsam.io import read_mask
from dcsam.masks import iou

nuclio_sdk = pytest.importorskip("nuclio_sdk")
ROOT = Path(__file__).resolve().parents[3]
FUNCTION_DIR = ROOT / "serverless" / "dcsam" / "nuclio"


@pytest.fixture(scope="module")
def function(perseg_examples: Path):
    """main.py loaded as Nuclio loads it (``handler: main:handler``), initialised once."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DCSAM_CVAT_EXAMPLES", str(perseg_examples))
    patch.setenv("DCSAM_ENGINE", "lite")
    spec = importlib.util.spec_from_file_location("main", FUNCTION_DIR / "main.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    context = nuclio_sdk.Context(logger=nuclio_sdk.Logger(logging.DEBUG, "test"))
    main.init_context(context)
    patch.undo()
    return main, context


def call(function, body) -> tuple[int, object]:
    main, context = function
    event = nuclio_sdk.Event(body=body, content_type="application/json", method="POST", path="/")
    response = main.handler(context, event)
    return response.status_code, json.loads(response.body)


def bitmap_mask(values: list[int], width: int, height: int) -> np.ndarray:
    """CVAT server's reading of a Nuclio ``mask``: the box's 0/1 bitmap, then x1, y1, x2, y2 (inclusive)."""
    x1, y1, x2, y2 = values[-4:]
    out = np.zeros((height, width), bool)
    out[y1 : y2 + 1, x1 : x2 + 1] = np.asarray(values[:-4], bool).reshape(y2 - y1 + 1, x2 - x1 + 1)
    return out


@pytest.mark.slow
def test_the_handler_answers_the_json_cvat_reads(function, data_dir: Path):
    import cv2

    image = data_dir / "perseg-mini" / "cat_01.jpg"
    body = json.dumps({"image": base64.b64encode(image.read_bytes()).decode(), "threshold": 0.5})
    status, result = call(function, body.encode())
    assert status == 200 and isinstance(result, list)
    assert {r["label"] for r in result} <= {"cat", "colorful_sneaker", "duck_toy"}
    [cat] = [r for r in result if r["label"] == "cat"]
    assert set(cat) == {"confidence", "label", "type", "points", "mask"} and cat["type"] == "mask"
    assert 0.5 <= float(cat["confidence"]) <= 1.0
    truth = read_mask(image.with_suffix(".png"))
    height, width = truth.shape
    polygon = np.zeros((height, width), np.uint8)
    cv2.fillPoly(polygon, [np.round(np.asarray(cat["points"]).reshape(-1, 2)).astype(np.int32)], 1)
    scores = iou(bitmap_mask(cat["mask"], width, height), truth), iou(polygon > 0, truth)
    print(f"Nuclio cat_01: mask IoU {scores[0]:.3f}, polygon IoU {scores[1]:.3f}")
    assert scores[0] > 0.88 and scores[1] > 0.85
    # the same request as a decoded JSON object (Nuclio hands JSON bodies over decoded)
    status, again = call(function, json.loads(body))
    assert status == 200 and [r["label"] for r in again] == [r["label"] for r in result]
    # a threshold above every score: nothing
    assert call(function, {"image": json.loads(body)["image"], "threshold": 1.0}) == (200, [])


@pytest.mark.slow
def test_bad_requests_get_a_400_that_says_why(function):
    status, result = call(function, {"image": base64.b64encode(b"not an image").decode()})
    assert status == 400 and "not a readable image" in result["error"]
    status, result = call(function, {"image": "%%%"})
    assert status == 400 and "base64 'image'" in result["error"]
    status, result = call(function, b"[1, 2]")
    assert status == 400 and "not a JSON object" in result["error"]


def test_function_yaml_builds_on_the_backend_image_and_declares_a_detector():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    backend_image = compose["services"]["dcsam-backend"]["image"].split(":")[0]
    for name in ("function.yaml", "function-gpu.yaml"):
        doc = yaml.safe_load((FUNCTION_DIR / name).read_text())
        assert doc["metadata"]["annotations"]["type"] == "detector"
        labels = json.loads(doc["metadata"]["annotations"]["spec"])
        assert all({"id", "name", "type"} <= set(label) for label in labels)
        assert doc["spec"]["handler"] == "main:handler" and (FUNCTION_DIR / "main.py").is_file()
        assert doc["spec"]["build"]["baseImage"].split(":")[0] == backend_image
        env = {e["name"]: e["value"] for e in doc["spec"]["env"]}
        mounts = [v["volumeMount"]["mountPath"] for v in doc["spec"]["volumes"]]
        assert env["DCSAM_CVAT_EXAMPLES"] in mounts
