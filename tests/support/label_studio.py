"""Run a real Label Studio 1.23.2 (its own venv, fresh data dir, loopback) and `dcsam serve` for E2E tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("LS_VENV", REPO / ".venv-ls"))
SETUP_SCRIPT = REPO / "scripts" / "setup_label_studio.sh"
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "admin@example.com", "adminpass123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_label_studio() -> Path:
    """Install Label Studio into LS_VENV when missing; skip (with the reason) only if that is impossible."""
    exe = LS_VENV / "bin" / "label-studio"
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT), str(LS_VENV)], capture_output=True, text=True, timeout=1500)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot install Label Studio 1.23.2 into {LS_VENV}: {exc}")
    if proc.returncode != 0 or not exe.exists():
        pytest.skip(
            f"cannot install Label Studio 1.23.2 into {LS_VENV} (no network / PyPI?): "
            f"{(proc.stdout + proc.stderr)[-800:]}"
        )
    return exe


def start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in its own session (so :func:`stop` ends its workers too), output to ``log``, run from the repo."""
    with open(log, "wb") as fh:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path, auth=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2, auth=auth).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this harness created for it
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class LabelStudio:
    """A Label Studio process and a small API client (legacy token, or a Personal Access Token)."""

    def __init__(self, workdir: Path):
        self.exe = ensure_label_studio()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "ls-data"
        self.home = workdir / "ls-home"
        self.data.mkdir(parents=True)
        self.home.mkdir()
        self.log = workdir / "label-studio.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO"))}
        env.update(
            {
                "HOME": str(self.home),
                "LABEL_STUDIO_USERNAME": USER,
                "LABEL_STUDIO_PASSWORD": PASSWORD,
                "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN,
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data),
                "LABEL_STUDIO_HOST": self.url,
                "COLLECT_ANALYTICS": "false",
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            }
        )
        command = [str(self.exe), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        self.proc = start_process([*command, "-p", str(self.port), "--data-dir", str(self.data)], env, self.log)
        try:
            wait_http(self.url + "/health", 300, self.proc, self.log)
        except Exception:
            stop(self.proc)
            raise
        self.pat: str | None = None
        self._access: str | None = None

    def close(self) -> None:
        stop(self.proc)

    # -- auth ----------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        if self.pat:
            if self._access is None:
                r = requests.post(self.url + "/api/token/refresh/", json={"refresh": self.pat}, timeout=30)
                r.raise_for_status()
                self._access = r.json()["access"]
            return {"Authorization": f"Bearer {self._access}"}
        return {"Authorization": f"Token {LEGACY_TOKEN}"}

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kw) -> requests.Response:
        for attempt in range(2):
            r = requests.request(method, self.url + path, headers=self.headers(), timeout=300, **kw)
            if r.status_code == 401 and self.pat and attempt == 0:
                self._access = None  # access tokens live 5 minutes
                continue
            break
        assert r.status_code in expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r

    def create_personal_access_token(self) -> str:
        s = requests.Session()
        s.get(self.url + "/user/login/", timeout=30)
        r = s.post(
            self.url + "/user/login/",
            data={"csrfmiddlewaretoken": s.cookies["csrftoken"], "email": USER, "password": PASSWORD},
            headers={"Referer": self.url + "/user/login/"},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code in (302, 303), f"login failed: {r.status_code}"
        r = s.post(
            self.url + "/api/token/",
            headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": self.url + "/"},
            timeout=30,
        )
        assert r.status_code == 201, f"POST /api/token/: {r.status_code} {r.text[:300]}"
        return r.json()["token"]

    def set_legacy_tokens(self, enabled: bool) -> None:
        self.call("POST", "/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled})

    # -- projects --------------------------------------------------------------------------------
    def create_project(self, title: str, config: str) -> int:
        return self.call("POST", "/api/projects", json={"title": title, "label_config": config}).json()["id"]

    def _import(self, project: int, paths: list[Path]) -> None:
        """Import image files (each under its own field name) in one request."""
        handles = [open(p, "rb") for p in paths]
        try:
            files = {f"file{i}": (p.name, fh, "image/jpeg") for i, (p, fh) in enumerate(zip(paths, handles))}
            r = self.call("POST", f"/api/projects/{project}/import", files=files)
        finally:
            for fh in handles:
                fh.close()
        assert r.json()["task_count"] == len(paths)

    def _tasks_by_stem(self, project: int) -> dict[str, dict]:
        """{uploaded file stem: task} for the whole project (Label Studio prefixes uploads with 8 hex digits)."""
        out = {}
        for t in self.all_tasks(project):
            name = re.sub(r"^[0-9a-f]{8}-", "", t["data"]["image"].rsplit("/", 1)[-1])
            out[name.rsplit(".", 1)[0]] = t
        return out

    def upload(self, project: int, paths: list[Path]) -> dict[str, dict]:
        """Import a few image files; returns {file stem: task}."""
        self._import(project, paths)
        return self._tasks_by_stem(project)

    def annotate(self, task_id: int, result: list) -> dict:
        return self.call("POST", f"/api/tasks/{task_id}/annotations", json={"result": result}).json()

    def connect_backend(self, project: int, url: str, *, interactive: bool = False) -> dict:
        return self.call(
            "POST", "/api/ml", json={"url": url, "project": project, "title": "dcsam", "is_interactive": interactive}
        ).json()

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> dict:
        return self.call(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": False, "included": task_ids}},
        ).json()

    def open_task(self, task_id: int) -> dict:
        """GET the task as the editor does when a person opens it: with "show predictions" on (the default),
        Label Studio 1.23 asks the ML backend for a task without any prediction (``tasks/api.py`` TaskAPI.get)."""
        return self.call("GET", f"/api/tasks/{task_id}").json()

    def log_size(self) -> int:
        """Where Label Studio's log ends now (read what it writes after this with :meth:`log_since`)."""
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")

    def predictions(self, task_id: int) -> list[dict]:
        return self.call("GET", "/api/predictions", params={"task": task_id}).json()

    def upload_many(self, project: int, paths: list[Path], batch: int = 100) -> dict[str, int]:
        """Import many image files in batches; returns {file stem: task id} for the whole project."""
        for start in range(0, len(paths), batch):
            self._import(project, paths[start : start + batch])
        return {stem: t["id"] for stem, t in self._tasks_by_stem(project).items()}

    def all_tasks(self, project: int) -> list[dict]:
        out, page = [], 1
        while True:
            r = self.call(
                "GET",
                "/api/tasks",
                params={"project": project, "page_size": 100, "page": page, "include": "id,data,total_predictions"},
                expect=(200, 404),
            )
            tasks = r.json().get("tasks", []) if r.status_code == 200 else []
            out.extend(tasks)
            if len(tasks) < 100:
                return out
            page += 1

    def project_predictions(self, project: int) -> list[dict]:
        return self.call("GET", "/api/predictions", params={"project": project}).json()


class Backend:
    """`dcsam serve` as a subprocess (gunicorn), with its own MODEL_DIR."""

    def __init__(self, workdir: Path, name: str, *, model_dir: Path | None = None, port: int | None = None, **env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"backend-{name}.log"
        self.model_dir = model_dir or workdir / f"model-{name}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSAM_", "LABEL_STUDIO_", "BASIC_AUTH"))}
        full_env.update(
            {
                "PORT": str(self.port),
                "MODEL_DIR": str(self.model_dir),
                "WORKERS": "1",
                "THREADS": "4",
                "DCSAM_DEVICE": "cpu",
                "LOG_LEVEL": "INFO",
                "HOST": "127.0.0.1",
            }
        )
        full_env.update(env)
        self.proc = start_process([sys.executable, "-m", "dcsam.cli", "serve"], full_env, self.log)
        try:
            wait_http(self.url + "/health", 120, self.proc, self.log)
        except Exception:
            stop(self.proc)
            raise

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kw)

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn master and workers): no shutdown code runs."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        """A value from GET /metrics (0.0 when the series is not there yet)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{{want}}} ") if want else line.startswith(f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_job(self, job_id: int, timeout: float, until=None) -> dict:
        """Poll GET /jobs/<id> until it is final (or ``until(job)`` holds)."""
        deadline = time.monotonic() + timeout
        job = {}
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job.get("status") in ("done", "failed", "cancelled", "interrupted", "skipped") or (until and until(job)):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        stop(self.proc)
