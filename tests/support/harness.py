"""The backend app in-process (create_app with a Flask test client) for protocol and job tests."""

from __future__ import annotations

from pathlib import Path


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
        body = {
            "tasks": tasks,
            "project": f"{project}.1719999999",
            "label_config": config,
            "params": {"login": None, "password": None, "context": context},
        }
        return self.client.post("/predict", json=body, **kw)
