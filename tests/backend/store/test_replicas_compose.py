"""docker-compose.replicas.yml: PostgreSQL and two backend replicas sharing one database and one MODEL_DIR.

No images are built here; the file is checked as YAML against docker-compose.yml (and with
``docker compose config`` where a compose binary is installed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BASE, REPLICAS = REPO / "docker-compose.yml", REPO / "docker-compose.replicas.yml"


def _services(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def test_the_replicas_share_postgresql_and_the_model_dir():
    base, over = _services(BASE), _services(REPLICAS)
    assert over["postgres"]["image"].endswith("postgres:15}") and over["postgres"]["healthcheck"]
    first = {**base["dcsam-backend"]["environment"], **over["dcsam-backend"]["environment"]}
    second = over["dcsam-backend-2"]["environment"]
    assert set(first) <= set(second), set(first) - set(second)  # the replica misses no setting of the first
    for env in (first, second):
        assert (
            env["DCSAM_DATABASE_URL"].startswith("postgresql://dcsam:")
            and "@postgres:5432/dcsam" in env["DCSAM_DATABASE_URL"]
        )
        assert env["MODEL_DIR"] == "/data/models"
    assert first["DCSAM_DATABASE_URL"] == second["DCSAM_DATABASE_URL"]
    assert (
        "dcsam-data:/data" in base["dcsam-backend"]["volumes"]
        and "dcsam-data:/data" in over["dcsam-backend-2"]["volumes"][0]
    )
    for name in ("dcsam-backend", "dcsam-backend-2"):
        assert "hostname" not in {**base.get(name, {}), **over[name]}  # leases tell replicas apart by hostname
        assert over[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert over["dcsam-backend-2"]["image"] == base["dcsam-backend"]["image"]
    assert "dcsam-postgres" in yaml.safe_load(REPLICAS.read_text())["volumes"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose binary to run `config`")
def test_docker_compose_accepts_the_override(tmp_path):
    env = {
        "LABEL_STUDIO_PASSWORD": "x",
        "LABEL_STUDIO_USER_TOKEN": "y",
        "DCSAM_POSTGRES_PASSWORD": "z",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        ["docker-compose", "-f", str(BASE), "-f", str(REPLICAS), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "dcsam-backend-2" in out.stdout
