from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cvat_server import FakeCvat

PERSEG_OBJECTS = ("cat", "colorful_sneaker", "duck_toy")  # perseg-mini objects; image 00 is the example


@pytest.fixture()
def cvat() -> Iterator[FakeCvat]:
    import cvat_sdk

    server = FakeCvat(version=cvat_sdk.version.VERSION).start()
    yield server
    server.close()


@pytest.fixture()
def client(cvat: FakeCvat, tmp_path: Path):
    """A logged-in SDK client with its own cache folder (the SDK caches tasks by server URL)."""
    from cvat_sdk import Client, Config

    c = Client(cvat.url, config=Config(cache_dir=tmp_path / "sdk-cache"))
    c.login((cvat.user, cvat.password))
    yield c
    c.close()


@pytest.fixture(scope="session")
def perseg_examples(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An examples folder: ``<object>/<object>_00.jpg`` + ``.png``, links to perseg-mini (never copies)."""
    root = tmp_path_factory.mktemp("perseg-examples")
    for name in PERSEG_OBJECTS:
        (root / name).mkdir()
        for ext in ("jpg", "png"):
            os.symlink(data_dir / "perseg-mini" / f"{name}_00.{ext}", root / name / f"{name}_00.{ext}")
    return root


@pytest.fixture(scope="session")
def perseg_detector(perseg_examples: Path):
    """The detection function on the three PerSeg objects, lite engine (its examples encoded once)."""
    from backend.cvat.func import create

    return create(examples=str(perseg_examples), engine="lite")
