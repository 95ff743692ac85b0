"""backend.metrics: the facade in one process, the merge over several processes, and `dcsam serve` with two workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from backend.metrics import Metrics
from tests.support.label_studio import start_process

ROOT = Path(__file__).resolve().parents[2]


def _sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- one process ------------------------------------------------------------------------------------
def test_counters_with_labels_and_values():
    m = Metrics()
    m.describe("dcsam_requests_total", "counter", "HTTP requests by endpoint and status")
    for _ in range(3):
        m.inc("dcsam_requests_total", endpoint="health", status="200")
    m.inc("dcsam_requests_total", 2.5, status=404, endpoint="predict")  # any order, values made strings
    m.inc("dcsam_video_frames_total", kind="video")  # never described: a counter
    assert m.value("dcsam_requests_total", endpoint="health", status="200") == 3
    assert m.value("dcsam_requests_total", endpoint="predict", status="404") == 2.5
    assert m.value("dcsam_requests_total", endpoint="nope", status="200") == 0
    text = m.render()
    assert "# HELP dcsam_requests_total HTTP requests by endpoint and status" in text
    assert "# TYPE dcsam_requests_total counter" in text and "# TYPE dcsam_video_frames_total counter" in text
    assert _sample(text, 'dcsam_requests_total{endpoint="health",status="200"}') == 3
    assert _sample(text, 'dcsam_requests_total{endpoint="predict",status="404"}') == 2.5
    assert _sample(text, 'dcsam_video_frames_total{kind="video"}') == 1
    assert "_created" not in text


def test_label_values_are_escaped():
    m = Metrics()
    m.inc("dcsam_webhook_events_total", action='a "quoted"\\back\nslash')
    assert _sample(m.render(), 'dcsam_webhook_events_total{action="a \\"quoted\\"\\\\back\\nslash"}') == 1


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()
    for m in (a, b):
        m.describe("dcsam_predictions_total", "counter", "predictions")
    a.inc("dcsam_predictions_total", 4)
    b.inc("dcsam_predictions_total")
    assert _sample(a.render(), "dcsam_predictions_total") == 4 and _sample(b.render(), "dcsam_predictions_total") == 1


def test_gauges_and_a_counter_set_to_a_total():
    m = Metrics()
    m.describe("dcsam_model_loaded", "gauge", "1 once this process has loaded the model")
    m.describe("dcsam_model_loads_total", "counter", "model loads in this process")
    m.describe("dcsam_jobs", "gauge", "background jobs by kind and state")
    m.set("dcsam_model_loaded", 1.0)
    for total in (1.0, 1.0, 2.0):  # set at every scrape from the holder's count
        m.set("dcsam_model_loads_total", total)
    m.set("dcsam_jobs", 2, kind="train", state="done")
    m.set("dcsam_jobs", 1, kind="preannotate", state="queued")
    text = m.render()
    assert _sample(text, "dcsam_model_loaded") == 1 and _sample(text, "dcsam_model_loads_total") == 2
    assert "# TYPE dcsam_model_loads_total counter" in text
    assert _sample(text, 'dcsam_jobs{kind="train",state="done"}') == 2
    with pytest.raises(ValueError):
        m.set("dcsam_model_loads_total", 1.0)  # a counter never goes back
    # rebuilt on each scrape: clear() drops the series that are gone
    m.clear("dcsam_jobs")
    m.set("dcsam_jobs", 3, kind="train", state="done")
    text = m.render()
    assert _sample(text, 'dcsam_jobs{kind="train",state="done"}') == 3
    assert _sample(text, 'dcsam_jobs{kind="preannotate",state="queued"}') is None
    assert m.value("dcsam_jobs", kind="preannotate", state="queued") == 0
    assert "# TYPE dcsam_jobs gauge" in text


def test_misuse_is_refused():
    m = Metrics()
    m.describe("dcsam_requests_total", "counter", "requests")
    m.inc("dcsam_requests_total", endpoint="health")
    with pytest.raises(ValueError, match="labels"):
        m.inc("dcsam_requests_total", endpoint="health", status="200")
    with pytest.raises(ValueError, match="local gauge"):
        m.clear("dcsam_requests_total")
    with pytest.raises(ValueError):
        m.inc("dcsam_requests_total", -1, endpoint="health")
    with pytest.raises(ValueError, match="_total"):
        m.describe("dcsam_requests", "counter", "requests")
    with pytest.raises(ValueError, match="kind"):
        m.describe("dcsam_latency", "histogram", "latency")
    assert m.value("dcsam_requests_total", endpoint="health") == 1


# -- several processes --------------------------------------------------------------------------------
# One "worker": the app's kinds of metrics, each process adding or setting its share; prints its pid and,
# if asked, the scrape it would answer.
WORKER = """
import json, os, sys
from backend.metrics import Metrics
args = json.loads(sys.argv[1])
m = Metrics()
m.describe("dcsam_requests_total", "counter", "HTTP requests")
m.describe("dcsam_model_loaded", "gauge", "1 once this process has loaded the model")
m.describe("dcsam_model_loads_total", "counter", "model loads")
m.describe("dcsam_preannotate_tasks_per_second", "gauge", "throughput of the latest job")
m.describe("dcsam_jobs", "gauge", "jobs from the job table")
for _ in range(args["requests"]):
    m.inc("dcsam_requests_total", endpoint="health", status="200")
m.set("dcsam_model_loaded", 1.0)
m.set("dcsam_model_loads_total", 1.0)
if "rate" in args:
    m.set("dcsam_preannotate_tasks_per_second", args["rate"], project="7")
m.clear("dcsam_jobs")
m.set("dcsam_jobs", 3, kind="train", state="done")
if args.get("dead"):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(args["dead"])
print(json.dumps({"pid": os.getpid(), "text": m.render() if args.get("render") else None}))
"""


def _worker(tmp_path: Path, **args) -> dict:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_multiprocess_scrape_merges_the_workers(tmp_path):
    first = _worker(tmp_path, requests=2, rate=5.0)
    _worker(tmp_path, requests=3, rate=7.0)
    text = _worker(tmp_path, requests=0, render=True)["text"]
    assert _sample(text, 'dcsam_requests_total{endpoint="health",status="200"}') == 5  # summed
    assert _sample(text, "dcsam_model_loads_total") == 3  # one load per process
    assert _sample(text, "dcsam_model_loaded") == 3  # livesum: none marked dead yet
    assert _sample(text, 'dcsam_preannotate_tasks_per_second{project="7"}') == 7  # the latest set wins
    assert _sample(text, 'dcsam_jobs{kind="train",state="done"}') == 3  # this process's only, not 3 x 3
    text = _worker(tmp_path, requests=1, render=True, dead=first["pid"])["text"]
    assert _sample(text, "dcsam_model_loaded") == 3  # the first is gone, a fourth process came
    assert _sample(text, 'dcsam_requests_total{endpoint="health",status="200"}') == 6  # counts of the dead stay
    assert _sample(text, 'dcsam_jobs{kind="train",state="done"}') == 3


# -- dcsam serve with two workers ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    # urllib opens a fresh connection per request, so the kernel hands each to whichever worker accepts first
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.slow
def test_serve_with_two_workers_reports_the_sum(tmp_path):
    port = _free_port()
    metrics_dir = tmp_path / "prometheus-multiproc"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "WORKERS", "THREADS")}
    env.update(
        {
            "MODEL_DIR": str(tmp_path),
            "DCSAM_ENGINE": "lite",
            "DCSAM_WARMUP": "0",
            "DCSAM_DEVICE": "auto",
            "DCSAM_ALLOW_DOWNLOAD": "0",
            "DCSAM_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process([*command, "--workers", "2", "--threads", "2"], env, log)
    try:
        # ready once both workers have answered: each writes its own counter file on its first request
        probes = 0
        for _ in range(600):
            assert proc.poll() is None, log.read_text()
            try:
                _get(port, "/metrics")
                probes += 1
            except OSError:
                time.sleep(0.1)
                continue
            if len(list(metrics_dir.glob("counter_*.db"))) >= 2:
                break
        else:
            pytest.fail("both workers never answered:\n" + log.read_text())
        assert not (metrics_dir / "counter_1.db").exists()  # stale values wiped at start

        n = 60
        for _ in range(n):
            assert _get(port, "/health")[0] == 200
        status, text = _get(port, "/metrics")
        assert status == 200
        assert _sample(text, 'dcsam_requests_total{endpoint="health",status="200"}') == n, text
        assert _sample(text, 'dcsam_requests_total{endpoint="metrics",status="200"}') == probes, text
        assert _sample(text, "dcsam_model_loaded") == 0 and _sample(text, "dcsam_model_loads_total") == 0
        assert len(list(metrics_dir.glob("gauge_livesum_*.db"))) == 2  # both set dcsam_model_loaded
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert not list(metrics_dir.glob("gauge_livesum_*.db"))  # child_exit marked both workers dead
