from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from dcsam.io import read_image, read_mask

from .fakes import ExternalHost, FakeLabelStudio, image_bytes

BRUSH_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="duck"/></BrushLabels></View>"""
POLYGON_CONFIG = """<View><Image name="img" value="$picture"/>
<PolygonLabels name="poly" toName="img"><Label value="cat"/></PolygonLabels></View>"""
BITMASK_CONFIG = """<View><Image name="image" value="$image" smoothing="false"/>
<BitmaskLabels name="bm" toName="image"><Label value="cat"/></BitmaskLabels></View>"""
INTERACTIVE_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>
<RectangleLabels name="box" toName="image" smart="true"><Label value="cat"/></RectangleLabels></View>"""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="session")
def perseg(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """perseg-mini images (downscaled to a 400 px long side to keep the tests fast) with their masks."""
    out = {}
    for name in ("cat_00", "cat_01", "cat_02", "duck_toy_00", "duck_toy_01"):
        img = read_image(data_dir / "perseg-mini" / f"{name}.jpg")
        mask = read_mask(data_dir / "perseg-mini" / f"{name}.png")
        scale = 400 / max(img.shape[:2])
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        out[name] = (cv2.resize(img, size, interpolation=cv2.INTER_AREA),
                     cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0)
    return out


@pytest.fixture(scope="session")
def lite_base():
    from dcsam.api import InContextSegmenter

    return InContextSegmenter.from_config(engine="lite")


@pytest.fixture()
def fake_ls():
    ls = FakeLabelStudio().start()
    yield ls
    ls.close()


@pytest.fixture()
def external():
    host = ExternalHost().start()
    yield host
    host.close()


def brush_region(mask: np.ndarray, label: str, from_name: str = "tag") -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {"id": "r1", "from_name": from_name, "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def annotated_task(task_id: int, project: int, image_ref: str, result: list, *, key: str = "image",
                   annotation_id: int | None = None, updated_at: str = "2026-11-01T10:00:00Z",
                   cancelled: bool = False) -> dict:
    return {"id": task_id, "project": project, "data": {key: image_ref},
            "annotations": [{"id": annotation_id or task_id * 10, "result": result, "was_cancelled": cancelled,
                             "updated_at": updated_at, "task": task_id, "project": project}]}


class BackendHarness:
    """create_app() with a settings dict, a counting model factory and a Flask test client."""

    def __init__(self, tmp_path: Path, lite_base, **env: str):
        from backend.labelstudio.app import create_app
        from backend.settings import BackendSettings

        base_env = {"MODEL_DIR": str(tmp_path / "model"), "DCSAM_ENGINE": "lite"}
        base_env.update(env)
        self.settings = BackendSettings.from_env(base_env)
        self.factory_calls = 0

        def factory(config):
            self.factory_calls += 1
            return lite_base

        self.app = create_app(self.settings, segmenter_factory=factory)
        self.service = self.app.extensions["dcsam_service"]
        self.client = self.app.test_client()

    def setup(self, project: int, config: str, **extra):
        return self.client.post("/setup", json={"project": f"{project}.1719999999", "schema": config, **extra})

    def predict(self, project: int, config: str, tasks: list, context: dict | None = None, **kw):
        body = {"tasks": tasks, "project": f"{project}.1719999999", "label_config": config,
                "params": {"login": None, "password": None, "context": context}}
        return self.client.post("/predict", json=body, **kw)


@pytest.fixture()
def harness_factory(tmp_path, lite_base):
    def make(**env: str) -> BackendHarness:
        return BackendHarness(tmp_path, lite_base, **env)

    return make


def decode_brush(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return np.asarray(decode_rle(region["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0


def data_url_png(mask: np.ndarray) -> str:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., 3] = mask.astype(np.uint8) * 255
    return "data:image/png;base64," + base64.b64encode(image_bytes(rgba, "PNG")).decode()


# -- a real Label Studio for the end-to-end modules (one per module, fresh data dir) ----------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def ls(workdir):
    from .ls_harness import LabelStudio

    server = LabelStudio(workdir)
    yield server
    server.close()
