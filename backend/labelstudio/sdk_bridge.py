"""The few private parts of label-studio-sdk (pinned in pyproject) that the backend relies on, in one place.

The SDK has no public API for these: the ``Authorization`` header its client sends (for a Personal
Access Token, a fresh short-lived JWT), its JWT check, and its media resolver ``get_local_path``
(upload paths, local files, cloud URIs presigned through Label Studio) with a pluggable requests
session, and the resolver's log lines (see :class:`QuietRoutineFetches`). An SDK upgrade must be checked
against this module only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urljoin, urlparse

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as sdk_io
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_REDIRECTS = 5  # a presigned cloud URL is one hop from Label Studio
CONNECT_TIMEOUT_S = 5.0
CHUNK = 1 << 20

# the download session of this thread: the connections it opens report to it (the SDK calls requests in this thread)
_active: ContextVar[_BoundedSession | None] = ContextVar("dcsam_download_session", default=None)


def authorization_header(client: Any) -> str:
    """The ``Authorization`` header value the SDK client would send now (refreshing a PAT's JWT)."""
    return client._client_wrapper.get_headers()["Authorization"]


def is_jwt(token: str) -> bool:
    return bool(sdk_io.is_jwt_well_formed(token))


class QuietRoutineFetches(logging.Filter):
    """Demotes the SDK resolver's INFO lines to DEBUG (shown with ``LOG_LEVEL=DEBUG`` only). It logs several
    per fetch ("Resolving url...", "File downloaded to..."), and on a Label Studio with local storage, whose
    storage proxy refuses every ``/data/upload`` file, "Download failed for proxy URL, retrying legacy upload
    path" although the legacy path is the normal route there. Its warnings and errors pass unchanged, and a
    fetch that really fails raises: :func:`backend.labelstudio.media.fetch_media` reports it per task."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


SDK_IO_LOGGER = logging.getLogger(sdk_io.__name__)
if not any(isinstance(f, QuietRoutineFetches) for f in SDK_IO_LOGGER.filters):  # once, even if re-imported
    SDK_IO_LOGGER.addFilter(QuietRoutineFetches())

STORAGE_PROXY_PATH = "/storage-data/uploaded/"  # where the SDK first asks for /data/upload/... media


def get_local_path(url: str, **kwargs: Any) -> str:
    """The SDK's resolver: downloads ``url`` into ``cache_dir`` (through the session of :func:`bounded_downloads`)."""
    return sdk_io.get_local_path(url, **kwargs)


class _TrackedConnection:
    """Connection mixin: tells the active download session (if any) which peer each new socket reached."""

    def connect(self) -> None:
        super().connect()
        session = _active.get()
        if session is not None:
            session.connected(self.host, self.port, self.sock, proxied=bool(self.proxy))


class _TrackedHTTPConnection(_TrackedConnection, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedConnection, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class _BoundedSession(requests.Session):
    """A requests session for media GETs within one deadline.

    * Each URL (every redirect hop) passes ``check_url`` before it is requested, and each connection's
      peer address passes ``check_peer(host, port, ip)`` once connected (no window for DNS rebinding).
    * Bodies stop at ``limit`` bytes; at ``deadline`` (a ``time.monotonic()`` value) the open connections
      are shut down, so a host that trickles its headers or body cannot hold the thread longer.
    * ``fail(url, reason)`` makes the exception raised for a refusal.
    """

    def __init__(
        self,
        limit: int,
        deadline: float,
        check_url: Callable[[str], None],
        check_peer: Callable[[str, int, str], None],
        fail: Callable[[str, str], Exception],
    ):
        super().__init__()
        self.limit, self.deadline, self.fail = limit, deadline, fail
        self.check_url, self.check_peer = check_url, check_peer
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        for scheme in ("http://", "https://"):
            self.mount(scheme, _TrackingAdapter())

    def connected(self, host: str, port: int, sock: socket.socket, *, proxied: bool) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)
        if not proxied:  # through a proxy the peer is the proxy; the target was checked by check_url
            self.check_peer(host, port, sock.getpeername()[0])

    def expire(self) -> None:
        """The deadline has passed: wake any read blocked on this session's connections."""
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass

    def request(self, method, url, **kwargs):  # type: ignore[override]  # same call, checked hops, bounded body
        for key in ("stream", "timeout", "allow_redirects"):
            kwargs.pop(key, None)
        headers = CaseInsensitiveDict(kwargs.pop("headers", None) or {})
        origin = urlparse(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            # followed here, not by requests, so that every hop is checked first and no redirect body is read
            self.check_url(url)
            wait = self._remaining(url)
            try:
                resp = super().request(
                    method,
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(CONNECT_TIMEOUT_S, wait), wait),
                    **kwargs,
                )
            except requests.RequestException as exc:
                self._remaining(url, exc)
                raise
            if not resp.is_redirect:
                return self._read_body(resp, url)
            resp.close()
            url = urljoin(resp.url, self.get_redirect_target(resp))
            if urlparse(url).netloc != origin:
                headers.pop("Authorization", None)  # the token never leaves the host the SDK gave it to
        raise self.fail(url, f"more than {MAX_REDIRECTS} redirects")

    def _remaining(self, url: str, cause: BaseException | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise self.fail(url, "not complete within the download deadline (DCSAM_DOWNLOAD_TIMEOUT_S)") from cause
        return left

    def _read_body(self, resp: requests.Response, url: str) -> requests.Response:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.limit:
            resp.close()
            raise self.fail(url, f"{int(length)} bytes is over the limit of {self.limit} (DCSAM_MAX_DOWNLOAD_MB)")
        buf = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > self.limit:
                    raise self.fail(url, f"{len(buf)} bytes is over the limit of {self.limit} (DCSAM_MAX_DOWNLOAD_MB)")
        except requests.RequestException as exc:
            self._remaining(url, exc)
            raise
        finally:
            resp.close()
        self._remaining(url)  # a connection shut down at the deadline ends like a complete body
        # the SDK reads ``resp.content``: hand it the bounded body that was already read
        resp._content = bytes(buf)
        resp._content_consumed = True
        return resp


@contextmanager
def bounded_downloads(
    limit: int,
    timeout_s: float,
    check_url: Callable[[str], None],
    check_peer: Callable[[str, int, str], None],
    fail: Callable[[str, str], Exception],
) -> Iterator[None]:
    """Within the block, the SDK's downloads in this thread go through a :class:`_BoundedSession`: at most
    ``limit`` bytes, all of them within ``timeout_s`` seconds, every URL and peer address checked."""
    session = _BoundedSession(limit, time.monotonic() + timeout_s, check_url, check_peer, fail)
    watchdog = threading.Timer(timeout_s, session.expire)
    watchdog.daemon = True
    watchdog.start()
    token = _active.set(session)
    try:
        with sdk_io.http_session(session):
            yield
    finally:
        _active.reset(token)
        watchdog.cancel()
        session.close()
