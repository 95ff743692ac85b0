"""`dcsam serve` under load: /health answers while slow clients and slow /predict calls occupy the server.

A real server (gunicorn, lite engine, basic auth on) with a fake Label Studio for the examples, an image host
that sends one byte every half second (so 8 /predict calls stay busy downloading), and 16 clients sending their
request bodies at 1 byte/s. gunicorn's gthread worker (8 threads) answered no /health at all in this setup.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from backend.http_worker import BUFFER_LIMIT, Incoming
from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.label_studio import free_port, start_process, stop, wait_http
from tests.support.regions import annotated_task, brush_region

AUTH = ("ops", "secret")
SLOW_CLIENTS = 16
BUSY_PREDICTS = 8
PROBES = 20
BOUND_S = 5.0  # a starved server misses this by far: gthread answered none of 20 probes within 15 s


class TrickleHost:
    """Answers every GET with image headers, then one body byte every ``interval`` s until closed."""

    def __init__(self, interval: float = 0.5):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.interval = interval
        self.conns: list[socket.socket] = []
        self.requests = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, name="trickle-host", daemon=True)
        self.thread.start()

    def run(self) -> None:
        next_byte = time.monotonic()
        while not self.halt.is_set():
            try:
                conn, _ = self.listener.accept()
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff")
                self.conns.append(conn)
                self.requests += 1
            except OSError:
                pass
            if time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.interval
                for conn in list(self.conns):
                    try:
                        conn.send(b"\xd8")
                    except OSError:
                        self.conns.remove(conn)

    def close(self) -> None:
        self.halt.set()
        self.thread.join(timeout=10)
        for conn in self.conns:
            conn.close()
        self.listener.close()


class SlowSenders:
    """``n`` connections that send a POST /predict head, then one body byte per second."""

    def __init__(self, port: int, n: int):
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        for sock in self.socks:
            sock.sendall(head)
            sock.setblocking(False)  # the byte-a-second loop and the peek below never wait
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, name="slow-senders", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.halt.wait(1.0):
            for sock in self.socks:
                try:
                    sock.send(b" ")
                except OSError:
                    pass

    def still_sending(self) -> int:
        """Connections the server has neither answered nor closed."""
        count = 0
        for sock in self.socks:
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                count += 1
            except OSError:
                pass
        return count

    def close(self) -> None:
        self.halt.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


def _serve(tmp_path: Path, port: int, **env: str):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DCSAM_", "PROMETHEUS_", "BASIC_AUTH_"))}
    full.pop("WORKERS", None)
    full.pop("THREADS", None)
    full.update(
        {
            "MODEL_DIR": str(tmp_path / "model"),
            "DCSAM_ENGINE": "lite",
            "DCSAM_DEVICE": "cpu",
            "DCSAM_ALLOW_DOWNLOAD": "0",
            "DCSAM_CACHE_DIR": str(tmp_path / "cache"),
            "BASIC_AUTH_USER": AUTH[0],
            "BASIC_AUTH_PASS": AUTH[1],
            **env,
        }
    )
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process([*command, "--workers", "1", "--threads", "8"], full, log)
    wait_http(f"http://127.0.0.1:{port}/health", 90, proc, log, auth=AUTH)
    return proc, log


def _probe(base: str) -> float:
    started = time.monotonic()
    response = requests.get(f"{base}/health", auth=AUTH, timeout=15)
    assert response.status_code == 200 and response.json()["status"] == "UP"
    return time.monotonic() - started


def _wait_until(condition, timeout: float, proc, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()[-3000:]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_health_answers_while_slow_clients_and_busy_predicts_hold_every_thread(tmp_path, fake_ls, perseg):
    img, mask = perseg["cat_00"]
    fake_ls.files["/data/upload/1/cat_00.jpg"] = image_bytes(img)
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/cat_00.jpg", [brush_region(mask, "cat")]))
    host = TrickleHost()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = _serve(
        tmp_path,
        port,
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.api_key,
        DCSAM_WARMUP="1",
        DCSAM_REQUEST_TIMEOUT_S="120",  # the slow clients stay connected for the whole measurement
        DCSAM_MEDIA_ALLOW_PRIVATE="1",  # the slow image host is on loopback
    )
    statuses: list[int] = []
    senders = None

    def predict(i: int) -> None:
        task = {"id": 100 + i, "project": 1, "data": {"image": f"{host.url}/img/{i}.jpg"}}
        body = {"tasks": [task], "project": "1.1719999999", "label_config": BRUSH_CONFIG, "params": {}}
        try:
            statuses.append(requests.post(f"{base}/predict", json=body, auth=AUTH, timeout=120).status_code)
        except requests.RequestException:
            statuses.append(-1)

    callers = [threading.Thread(target=predict, args=(i,), daemon=True) for i in range(BUSY_PREDICTS)]
    try:
        idle = [_probe(base) for _ in range(5)]
        for caller in callers:
            caller.start()
        _wait_until(lambda: len(host.conns) >= BUSY_PREDICTS, 120, proc, log, "8 downloads from the slow host")
        senders = SlowSenders(port, SLOW_CLIENTS)
        time.sleep(1.5)  # the server has their heads and first body bytes

        loaded = []
        for _ in range(PROBES):
            loaded.append(_probe(base))
            time.sleep(0.1)

        assert senders.still_sending() == SLOW_CLIENTS  # connected throughout, neither answered nor dropped
        assert len(host.conns) >= BUSY_PREDICTS and not statuses  # the /predict calls were busy throughout
        print(
            f"\n/health latency, idle: p50 {statistics.median(idle) * 1000:.1f} ms, max {max(idle) * 1000:.1f} ms; "
            f"{SLOW_CLIENTS} slow clients + {BUSY_PREDICTS} busy /predict: "
            f"p50 {statistics.median(loaded) * 1000:.1f} ms, max {max(loaded) * 1000:.1f} ms"
        )
        assert max(loaded) < BOUND_S, loaded
    finally:
        if senders is not None:
            senders.close()
        host.close()  # the downloads fail now, so the /predict calls return
        for caller in callers:
            caller.join(timeout=60)
        stop(proc)

    assert statuses == [200] * BUSY_PREDICTS  # each task got its (empty) prediction once the host was gone


def test_a_request_that_does_not_arrive_in_time_gets_408_and_large_bodies_still_work(tmp_path):
    port = free_port()
    proc, log = _serve(tmp_path, port, DCSAM_WARMUP="0", DCSAM_REQUEST_TIMEOUT_S="2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert time.monotonic() - started < 10
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /hea")  # headers never finish
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")

        # over BUFFER_LIMIT: a request thread reads the rest of the body; the JSON arrives whole
        padding = "x" * (2 * BUFFER_LIMIT)
        body = {"tasks": [], "project": "1.1", "label_config": BRUSH_CONFIG, "params": {}, "pad": padding}
        response = requests.post(f"http://127.0.0.1:{port}/predict", json=body, auth=AUTH, timeout=30)
        assert response.status_code < 500 and "malformed" not in response.text, response.text
        chunked = requests.post(
            f"http://127.0.0.1:{port}/predict",
            data=iter([b'{"tasks": [], ', b'"project": "1.1"}']),
            headers={"Content-Type": "application/json"},
            auth=AUTH,
            timeout=30,
        )
        assert chunked.status_code < 500 and "malformed" not in chunked.text, chunked.text
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 401  # auth still applies
    finally:
        stop(proc)


@pytest.mark.parametrize(
    "head, health, need, stream",
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", True, 0, False),
        (b"HEAD /?x=1 HTTP/1.1\r\n\r\n", True, 0, False),
        (b"GET /healthz HTTP/1.1\r\n\r\n", False, 0, False),
        (b"POST /health HTTP/1.1\r\nContent-Length: 5\r\n\r\n", False, 5, False),
        (b"POST /predict HTTP/1.1\r\ncontent-length:  12 \r\n\r\n", False, 12, False),
        (b"POST /predict HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", False, 0, False),
        (b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BUFFER_LIMIT + 1), False, BUFFER_LIMIT + 1, True),
        (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False, 0, True),
        (b"POST /predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", False, 0, True),
    ],
)
def test_the_main_loop_frames_requests(head, health, need, stream):
    conn = Incoming(None, None, None, 0.0)  # type: ignore[arg-type]
    assert conn.feed(head[:10]) is False
    ready = conn.feed(head[10:])
    assert (conn.health, conn.need - len(head), conn.stream) == (health, need, stream)
    assert ready is (stream or need == 0)


def test_a_head_that_never_ends_is_refused():
    conn = Incoming(None, None, None, 0.0)  # type: ignore[arg-type]
    assert conn.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20000) == (431, "Request Header Fields Too Large")


def test_worker_options_come_from_the_environment(monkeypatch):
    from backend.serve import worker_options

    for name in ("DCSAM_WORKER_CLASS", "DCSAM_WORKER_TIMEOUT_S", "DCSAM_REQUEST_TIMEOUT_S", "DCSAM_HEALTH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert worker_options(8) == {"timeout": 120, "threads": 8, "worker_class": "backend.http_worker.BufferingWorker"}
    monkeypatch.setenv("DCSAM_WORKER_CLASS", "gthread")
    monkeypatch.setenv("DCSAM_WORKER_TIMEOUT_S", "0")
    assert worker_options(4) == {"timeout": 0, "threads": 4, "worker_class": "gthread", "keepalive": 2}
    for name, value in [
        ("DCSAM_WORKER_CLASS", "gevent"),
        ("DCSAM_WORKER_TIMEOUT_S", "-1"),
        ("DCSAM_REQUEST_TIMEOUT_S", "0"),
        ("DCSAM_REQUEST_TIMEOUT_S", "soon"),
        ("DCSAM_HEALTH_THREADS", "0"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(SystemExit, match=name):
                worker_options(8)
