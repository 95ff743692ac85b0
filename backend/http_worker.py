"""The gunicorn worker of ``dcsam serve``: slow clients hold no request thread, and /health always has one.

gunicorn's ``gthread`` worker gives a connection to a request thread as soon as data arrives; the thread then
reads the headers and the body from the socket. A client sending its body at 1 byte/s holds a thread for as
long as it likes, and when every thread is held (slow clients, or /predict calls waiting on a slow image host),
/health waits in the same queue and Label Studio's health check times out.

This worker, a gunicorn base worker like ``gthread``, differs in two ways:

* **Requests are read by the main thread**, without blocking (one selector loop over every connection still
  sending), and only a complete request goes to a request thread. A request not complete within
  ``request_timeout`` seconds of its connection is answered 408 and closed; no thread waited for it. Bodies over
  :data:`BUFFER_LIMIT`, chunked bodies and ``Expect: 100-continue`` are handed over after the headers; the thread
  reads the rest under the same deadline.
* **``GET``/``HEAD`` of ``/health`` and ``/`` have their own threads** (``health_threads``): the same Flask app
  (auth, metrics) answers them while every request thread is busy.

One request per connection (``Connection: close``): watching served connections again would complicate the loop
for a handshake that costs well under a millisecond next to a model call. When ``worker_connections`` are open,
the oldest connection still sending its request is closed (503) to make room, so a crowd of slow clients cannot
lock /health out either.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.base import Worker

BUFFER_LIMIT = 1024 * 1024  # bytes of body the main loop keeps in memory per request; a thread reads the rest
HEAD_LIMIT = 64 * 1024  # request line and headers; gunicorn's own line and field limits apply after this
READ_SIZE = 64 * 1024
HEALTH_PATHS = frozenset({b"/health", b"/"})
_ACCEPT = object()  # selector data of a listening socket
_WAKE = object()  # selector data of the wake-up pipe (signals, a finished request)


@dataclass(frozen=True)
class Limits:
    request_timeout: float = 30.0  # from accept to the last byte of the request; also bounds each response write
    health_threads: int = 2

    @classmethod
    def from_env(cls) -> Limits:
        """``DCSAM_REQUEST_TIMEOUT_S`` and ``DCSAM_HEALTH_THREADS`` (the worker reads them after the fork)."""
        limits = cls()
        try:
            timeout = float(os.environ.get("DCSAM_REQUEST_TIMEOUT_S") or limits.request_timeout)
            threads = int(os.environ.get("DCSAM_HEALTH_THREADS") or limits.health_threads)
        except ValueError as exc:
            raise ValueError(f"DCSAM_REQUEST_TIMEOUT_S or DCSAM_HEALTH_THREADS: {exc}") from None
        if not timeout > 0 or threads < 1:
            raise ValueError("DCSAM_REQUEST_TIMEOUT_S must be > 0 and DCSAM_HEALTH_THREADS >= 1")
        return cls(timeout, threads)


class Incoming:
    """A connection whose request is still arriving; only the main thread touches it until it is handed over."""

    __slots__ = ("sock", "client", "server", "deadline", "buf", "need", "health", "stream")

    def __init__(self, sock: socket.socket, client: Any, server: Any, deadline: float):
        self.sock, self.client, self.server, self.deadline = sock, client, server, deadline
        self.buf = bytearray()
        self.need = -1  # bytes of head + body, once the head says (-1: head not complete yet)
        self.health = False
        self.stream = False  # the thread reads the body's rest from the socket

    def feed(self, data: bytes) -> tuple[int, str] | bool:
        """Add received bytes; True when the request can be handed over, an error status to refuse it."""
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return (431, "Request Header Fields Too Large") if len(self.buf) > HEAD_LIMIT else False
            self.frame(bytes(self.buf[: end + 4]))
        return self.stream or len(self.buf) >= self.need

    def frame(self, head: bytes) -> None:
        """Where the request ends, from its head (gunicorn's parser still checks everything)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        target = parts[1].split(b"?", 1)[0] if len(parts) == 3 else b""
        self.health = parts[0] in (b"GET", b"HEAD") and target in HEALTH_PATHS
        self.need = len(head)
        if b"transfer-encoding" in headers or b"expect" in headers:
            self.stream = True
            return
        lengths = set(headers.get(b"content-length", []))
        if len(lengths) == 1:
            value = lengths.pop()
            if value.isdigit() and value.isascii():
                body = int(value)
                self.stream = body > BUFFER_LIMIT
                self.need += body
        # several or malformed lengths: handed over as is, gunicorn's parser answers 400


class BufferingWorker(Worker):
    """``worker_class`` of ``dcsam serve`` (named by its dotted path: older gunicorns log only strings)."""

    def init_process(self) -> None:
        self.limits = Limits.from_env()
        self.pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="dcsam-request")
        self.health_pool = ThreadPoolExecutor(self.limits.health_threads, thread_name_prefix="dcsam-health")
        self.selector = selectors.DefaultSelector()
        self.incoming: dict[socket.socket, Incoming] = {}  # insertion order is deadline order
        self.busy = 0  # connections handed to a thread
        self.busy_lock = threading.Lock()
        self.accepting = False
        super().init_process()  # loads the app, runs post_worker_init, then run()

    # -- main thread ------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _WAKE)
        for listener in self.sockets:
            listener.setblocking(False)
        while self.alive:
            self.notify()
            self.set_accepting(self.open_connections() < self.cfg.worker_connections or bool(self.incoming))
            timeout = 1.0
            if self.incoming:
                first = next(iter(self.incoming.values()))
                timeout = min(timeout, max(first.deadline - time.monotonic(), 0.0))
            self.dispatch_events(timeout)
            self.expire(time.monotonic())
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
        self.shutdown()

    def open_connections(self) -> int:
        return self.busy + len(self.incoming)

    def set_accepting(self, enabled: bool) -> None:
        if enabled == self.accepting:
            return
        for listener in self.sockets:
            if enabled:
                self.selector.register(listener, selectors.EVENT_READ, _ACCEPT)
            else:
                self.selector.unregister(listener)
        self.accepting = enabled

    def dispatch_events(self, timeout: float) -> None:
        try:
            events = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, _ in events:
            if key.data is _WAKE:
                self.drain_wakeups()
            elif key.data is _ACCEPT:
                self.accept(key.fileobj)  # type: ignore[arg-type]
            else:
                self.receive(key.data)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except OSError:  # empty (non-blocking pipe)
            pass

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return
            raise
        if self.open_connections() >= self.cfg.worker_connections and self.incoming:
            oldest = next(iter(self.incoming.values()))  # slowest sender makes room for the new one
            self.refuse(oldest, (503, "Service Unavailable"), "too many connections still sending")
        sock.setblocking(False)
        conn = Incoming(sock, client, listener.getsockname(), time.monotonic() + self.limits.request_timeout)
        self.incoming[sock] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def receive(self, conn: Incoming) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self.forget(conn)
            util.close(conn.sock)
            return
        outcome = conn.feed(data)
        if outcome is True:
            self.hand_over(conn)
        elif outcome:
            self.refuse(conn, outcome, "request head too large")

    def expire(self, now: float) -> None:
        while self.incoming:
            conn = next(iter(self.incoming.values()))
            if conn.deadline > now:
                return
            self.refuse(
                conn, (408, "Request Timeout"), f"request not received within {self.limits.request_timeout:g} s"
            )

    def forget(self, conn: Incoming) -> None:
        del self.incoming[conn.sock]
        self.selector.unregister(conn.sock)

    def refuse(self, conn: Incoming, status: tuple[int, str], why: str) -> None:
        self.forget(conn)
        body = why.encode()
        head = f"HTTP/1.1 {status[0]} {status[1]}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        try:  # small enough for the socket buffer: never blocks the loop
            conn.sock.send(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            pass
        self.log.debug("refused %s with %d: %s", conn.client, status[0], why)
        util.close(conn.sock)

    def hand_over(self, conn: Incoming) -> None:
        self.forget(conn)
        with self.busy_lock:
            self.busy += 1
        (self.health_pool if conn.health else self.pool).submit(self.serve, conn)

    def shutdown(self) -> None:
        self.set_accepting(False)
        for conn in list(self.incoming.values()):  # incomplete requests: the client may retry elsewhere
            self.forget(conn)
            util.close(conn.sock)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.busy and time.monotonic() < deadline:
            self.notify()
            self.dispatch_events(0.2)
        self.pool.shutdown(wait=False)
        self.health_pool.shutdown(wait=False)
        self.selector.close()

    # -- request threads --------------------------------------------------------------------------------------
    def serve(self, conn: Incoming) -> None:
        sock, req = conn.sock, None
        try:
            sock.setblocking(True)
            sock.settimeout(self.limits.request_timeout)
            req = next(http.RequestParser(self.cfg, self.source(conn), conn.client))
            self.handle(req, conn)
        except (StopIteration, NoMoreData):
            pass  # the client closed, or sent nothing parseable to the end
        except TimeoutError:
            self.log.debug("request from %s timed out", conn.client)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("socket error while serving a request")
        except Exception as exc:
            self.handle_error(req, sock, conn.client, exc)
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            util.close(sock)
            with self.busy_lock:
                self.busy -= 1
            try:
                os.write(self.PIPE[1], b".")  # the loop may accept again
            except OSError:
                pass

    def source(self, conn: Incoming) -> Iterator[bytes]:
        """The request's bytes: what the main loop read, then (streamed requests) the socket, under the deadline."""
        yield bytes(conn.buf)
        if not conn.stream:
            return
        while True:
            left = conn.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request body not received in time")
            conn.sock.settimeout(left)
            data = conn.sock.recv(READ_SIZE)
            if not data:
                return
            yield data

    def handle(self, req: Any, conn: Incoming) -> None:
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            resp.force_close()
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            respiter = self.wsgi(environ, resp.start_response)
            try:
                conn.sock.settimeout(self.limits.request_timeout)  # each write; the body reads are done
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
        except Exception:
            if resp is not None and resp.headers_sent:  # a 500 now would corrupt the response under way
                self.log.exception("Error handling request")
                return
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
