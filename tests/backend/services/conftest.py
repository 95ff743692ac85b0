from __future__ import annotations

import pytest

from tests.support.harness import BackendHarness


@pytest.fixture()
def backend_factory(tmp_path, lite_base):
    """``make(**env)``: a backend on the session's lite engine; every one made is stopped after the test."""
    made: list[BackendHarness] = []

    def make(**env: str) -> BackendHarness:
        h = BackendHarness(tmp_path, lite_base, **env)
        made.append(h)
        return h

    yield make
    for h in made:
        h.service.runner.stop()
