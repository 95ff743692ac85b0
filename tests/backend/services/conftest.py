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


@pytest.fixture()
def ls_backend_factory(backend_factory, lite_base, fake_ls):
    """``make(defaults, **env)``: a backend connected to the fake Label Studio, with ``defaults`` overridden
    by ``env``; the session's shared engine is left untrained afterwards."""

    def make(defaults: dict[str, str], **env: str) -> BackendHarness:
        connected = {"LABEL_STUDIO_URL": fake_ls.url, "LABEL_STUDIO_API_KEY": fake_ls.api_key}
        return backend_factory(**{**connected, **defaults, **env})

    yield make
    lite_base.engine.load_trainable_state_dict({})
