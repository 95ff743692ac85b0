from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dcsam.io import read_image, read_mask
from dcsam.masks import resize_mask
from tests.support.fakes import ExternalHost, FakeLabelStudio
from tests.support.harness import BackendHarness


@pytest.fixture(scope="session")
def perseg(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """perseg-mini images (downscaled to a 400 px long side to keep the tests fast) with their masks."""
    out = {}
    for name in ("cat_00", "cat_01", "cat_02", "duck_toy_00", "duck_toy_01"):
        img = read_image(data_dir / "perseg-mini" / f"{name}.jpg")
        mask = read_mask(data_dir / "perseg-mini" / f"{name}.png")
        scale = 400 / max(img.shape[:2])
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        out[name] = (cv2.resize(img, size, interpolation=cv2.INTER_AREA), resize_mask(mask, size[1], size[0]))
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


@pytest.fixture()
def harness_factory(tmp_path, lite_base):
    def make(**env: str) -> BackendHarness:
        return BackendHarness(tmp_path, lite_base, **env)

    return make


# -- a real Label Studio for the end-to-end modules (one per module, fresh data dir) ----------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def ls(workdir):
    from tests.support.label_studio import LabelStudio

    server = LabelStudio(workdir)
    yield server
    server.close()
