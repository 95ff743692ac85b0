"""Access to Label Studio: tokens, the annotations API and task media, with bounded downloads.

* Tokens (a legacy token or a Personal Access Token) are handled by label-studio-sdk's client: a PAT
  is exchanged for a short-lived access token and refreshed when it expires.
* Media goes through the SDK's ``get_local_path``: ``/data/upload/...``, ``/data/local-files/?d=...``,
  cloud URIs (``s3://``, ``gs://``, ``azure-blob://``, presigned through ``/tasks/<id>/presign``) and
  plain http(s). The SDK adds the token only when the URL's host is the Label Studio host, and
  the download session drops it on a redirect to another host, so presigned and external URLs never see it.
* ``/data/local-files/?d=<path>`` is read from ``LOCAL_FILES_DOCUMENT_ROOT`` when the file is there;
  a path that leaves that folder (``..``, absolute paths, symlinks) is refused, never fetched.
* Every download is capped (``DCSAM_MAX_DOWNLOAD_MB``) and has one deadline for all of it, redirects
  included (``DCSAM_DOWNLOAD_TIMEOUT_S``).
* Addresses: a URL that is not on the Label Studio host is resolved and refused when any of its addresses
  is link-local or a cloud-metadata service (always), or private or loopback (unless
  ``DCSAM_MEDIA_ALLOW_PRIVATE``); every redirect hop and the address each connection reaches are checked too.
* Images are checked against ``DCSAM_MAX_IMAGE_PIXELS`` from their header, then decoded within the
  process's pixel budget (``DCSAM_DECODE_BUDGET_MP``), so concurrent large decodes wait for each other.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import requests
from PIL import Image

from dcsam.errors import InputError
from dcsam.io import read_image

from ..settings import BackendSettings
from . import sdk_bridge

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A task's media could not be read; that task gets no prediction (Label Studio asks again later)."""


class LabelStudioError(Exception):
    """The Label Studio API refused or failed a call."""


def _safe_url(url: str) -> str:
    """The URL without its query string (presigned URLs carry signatures)."""
    parsed = urlparse(str(url))
    return parsed._replace(query="", fragment="").geturl() if parsed.query else str(url)


def resolve_local_file(url: str, root: str) -> str:
    """The path of ``/data/local-files/?d=<rel>`` under ``root``; refuses anything outside it."""
    values = parse_qs(urlparse(url).query, keep_blank_values=True).get("d")
    rel = values[-1] if values else ""
    if not rel:
        raise MediaError(f"{url}: local-files URL without a ?d= path")
    root_real = os.path.realpath(root)
    # Label Studio treats ?d= as relative to its document root, also with a leading "/".
    candidate = os.path.realpath(os.path.join(root_real, posixpath.normpath(rel).lstrip("/")))
    if os.path.commonpath([candidate, root_real]) != root_real or "\x00" in rel:
        raise MediaError(f"{rel!r} is outside LOCAL_FILES_DOCUMENT_ROOT; refused")
    return candidate


class PixelBudget:
    """The pixels being decoded at once: a decode waits until its pixels fit (one larger than the whole
    budget waits until it is alone), first come, first served."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_flight = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def resize(self, capacity: int) -> None:
        with self._cond:
            self.capacity = capacity
            self._cond.notify_all()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(
                    lambda: (
                        self._queue[0] is ticket and (self.in_flight == 0 or self.in_flight + pixels <= self.capacity)
                    )
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= pixels
                self._cond.notify_all()


@dataclass(frozen=True)
class MediaPolicy:
    """How this process fetches task media beyond the per-call byte cap (see the module docstring)."""

    timeout_s: float
    allow_private: bool

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> MediaPolicy:
        return cls(timeout_s=settings.download_timeout_s, allow_private=settings.media_allow_private)


# Process-wide, like the memory they protect: set from the settings by :func:`configure`.
_defaults = BackendSettings()
POLICY = MediaPolicy.from_settings(_defaults)
DECODE_BUDGET = PixelBudget(int(_defaults.decode_budget_mp * 1e6))


def configure(settings: BackendSettings) -> None:
    """Apply the settings' media policy and decode budget to this process."""
    global POLICY
    POLICY = MediaPolicy.from_settings(settings)
    DECODE_BUDGET.resize(int(settings.decode_budget_mp * 1e6))


def decode_image(data: bytes, max_pixels: int, what: str = "image", budget: PixelBudget | None = None) -> np.ndarray:
    """Decode to uint8 RGB after checking the size from the header (no decode of huge images), within
    ``budget`` (default: the process's :data:`DECODE_BUDGET`)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{what}: image too large ({exc})") from exc
    except Exception as exc:
        raise MediaError(f"{what}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if width * height > max_pixels:
        raise MediaError(
            f"{what}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(DCSAM_MAX_IMAGE_PIXELS)"
        )
    with (budget or DECODE_BUDGET).hold(width * height):
        try:
            return read_image(data)
        except InputError as exc:
            raise MediaError(f"{what}: {exc}") from exc


# Refused for task media whatever DCSAM_MEDIA_ALLOW_PRIVATE says, besides link-local ranges (where most
# clouds serve instance metadata and credentials): the metadata addresses outside them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "fd20:ce::254", "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 reaches the local host on Linux


def address_refusal(ip: str, allow_private: bool) -> str | None:
    """Why task media may not be fetched from ``ip``; None when it may."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):  # an IPv4 address written as IPv6 is judged as IPv4
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.is_link_local or addr in METADATA_ADDRESSES:
        return "a link-local or cloud-metadata address"
    if addr.is_multicast or addr.is_unspecified or addr in _THIS_NETWORK:
        return "not a host address"
    if addr.is_global or allow_private:
        return None
    return "a private or loopback address (DCSAM_MEDIA_ALLOW_PRIVATE=0)"


def _host_port(url: str) -> tuple[str, int] | None:
    parsed = urlparse(url)
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return None
    return ((parsed.hostname or "").lower(), port) if parsed.hostname else None


class _AddressCheck:
    """The address rule for one download: ``trusted`` (Label Studio's host and port) is exempt."""

    def __init__(self, trusted: tuple[str, int] | None, allow_private: bool):
        self.trusted, self.allow_private = trusted, allow_private

    def url(self, url: str) -> None:
        where = _host_port(url)
        if not url.startswith(("http://", "https://")) or where is None:
            raise MediaError(f"{_safe_url(url)}: not an http(s) URL with a host")
        if where == self.trusted:
            return
        try:
            infos = socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise MediaError(f"{_safe_url(url)}: cannot resolve {where[0]} ({exc})") from exc
        for info in infos:
            self.peer(where[0], where[1], str(info[4][0]), url)

    def peer(self, host: str, port: int, ip: str, url: str | None = None) -> None:
        if (host.lower(), port) == self.trusted:
            return
        reason = address_refusal(ip, self.allow_private)
        if reason is not None:
            raise MediaError(f"{_safe_url(url) if url else host}: {host} is {ip}, {reason}; refused")


class LabelStudioAccess:
    """One Label Studio host and its token (``url`` must include the scheme)."""

    def __init__(self, url: str, api_key: str, *, max_download_bytes: int, local_files_root: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.max_download_bytes = max_download_bytes
        self.local_files_root = local_files_root
        self._client = None
        self._lock = threading.Lock()

    # -- tokens ------------------------------------------------------------------------------
    def sdk(self) -> Any:
        """The label-studio-sdk client for this host (built once)."""
        with self._lock:
            if self._client is None:
                from label_studio_sdk import LabelStudio

                self._client = LabelStudio(base_url=self.url, api_key=self._api_key, timeout=30)
            return self._client

    def token(self) -> str:
        """The token to send now: the legacy key, or a fresh access JWT for a Personal Access Token."""
        try:
            header = sdk_bridge.authorization_header(self.sdk())
        except Exception as exc:
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the API key ({_describe_exc(exc)}); check LABEL_STUDIO_API_KEY"
            ) from exc
        return header.split(" ", 1)[1]

    def auth_header(self) -> dict[str, str]:
        tok = self.token()
        return {"Authorization": ("Bearer " if sdk_bridge.is_jwt(tok) else "Token ") + tok}

    # -- API -------------------------------------------------------------------------------------
    def api_get(self, path: str, params: dict | None = None) -> Any:
        url = f"{self.url}/{path.lstrip('/')}"
        try:
            resp = requests.get(url, params=params, headers=self.auth_header(), timeout=(5, 60), allow_redirects=False)
        except requests.RequestException as exc:
            raise LabelStudioError(f"GET {url}: {_describe_exc(exc)}") from exc
        if resp.status_code == 401:
            raise LabelStudioError(
                f"GET {url}: 401 unauthorized ({resp.text[:200]}); with Label Studio >= 1.20 legacy "
                "tokens are often disabled: set LABEL_STUDIO_API_KEY to a Personal Access Token"
            )
        if resp.status_code != 200:
            raise LabelStudioError(f"GET {url}: HTTP {resp.status_code} {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise LabelStudioError(f"GET {url}: not JSON") from exc

    def tasks(
        self, project_id: int, filters: list[dict] | None = None, *, include: str | None = None, page_size: int = 100
    ) -> Iterator[dict]:
        """Every task of the project (with ``fields=all``: annotations included) matching the Data
        Manager ``filters`` (all of them), page by page."""
        params: dict[str, Any] = {"project": project_id, "fields": "all", "page_size": page_size}
        if filters:
            params["query"] = json.dumps({"filters": {"conjunction": "and", "items": filters}})
        if include:
            params["include"] = include
        page, seen = 1, 0
        while True:
            body = self.api_get("/api/tasks", {**params, "page": page})
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            if not tasks:
                return
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if total is not None and seen >= total or len(tasks) < page_size:
                return
            page += 1

    def annotated_tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict]:
        """Every task of the project with at least one submitted (non-cancelled) annotation."""
        return self.tasks(
            project_id,
            [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}],
            page_size=page_size,
        )

    # -- media -----------------------------------------------------------------------------------
    def fetch(self, ref: str, task_id: int | None = None) -> bytes:
        return fetch_media(
            ref, task_id, access=self, max_bytes=self.max_download_bytes, local_files_root=self.local_files_root
        )


def _describe_exc(exc: BaseException) -> str:
    text = str(exc)
    body = getattr(exc, "body", None)
    if body:
        text = f"{getattr(exc, 'status_code', '')} {body}"
    return f"{type(exc).__name__}: {text}"[:300]


def fetch_media(
    ref: Any,
    task_id: int | None,
    *,
    access: LabelStudioAccess | None,
    max_bytes: int,
    local_files_root: str | None,
    policy: MediaPolicy | None = None,
) -> bytes:
    """The bytes behind a task's data value (see the module docstring for the kinds of reference), fetched
    under ``policy`` (default: the process's :data:`POLICY`)."""
    policy = policy or POLICY
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError(f"task data value {ref!r} is not a media reference")
    ref = ref.strip()
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if ";base64" not in head or len(payload) * 3 // 4 > max_bytes:
            raise MediaError("data URL is not base64 or is over DCSAM_MAX_DOWNLOAD_MB")
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"data URL cannot be decoded ({exc})") from exc
    is_local_files = ref.startswith("/data/") and "?d=" in ref
    if is_local_files and local_files_root:
        path = resolve_local_file(ref, local_files_root)
        if os.path.isfile(path):
            size = os.path.getsize(path)
            if size > max_bytes:
                raise MediaError(f"{path}: {size} bytes is over the limit of {max_bytes} (DCSAM_MAX_DOWNLOAD_MB)")
            with open(path, "rb") as fh:
                return fh.read()
        log.info("local file %s is not under LOCAL_FILES_DOCUMENT_ROOT; asking Label Studio for it", path)
    elif not ref.startswith(("http://", "https://")) and access is None:
        raise MediaError(f"{_safe_url(ref)}: needs Label Studio access; set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    hostname = access.url if access else None
    token = access.token() if access else None
    check = _AddressCheck(_host_port(hostname) if hostname else None, policy.allow_private)
    scratch = tempfile.mkdtemp(prefix="dcsam-media-")
    try:
        with sdk_bridge.bounded_downloads(
            max_bytes,
            policy.timeout_s,
            check.url,
            check.peer,
            lambda url, reason: MediaError(f"{_safe_url(url)}: {reason}"),
        ):
            try:
                path = sdk_bridge.get_local_path(
                    ref,
                    cache_dir=scratch,
                    hostname=hostname or "",
                    access_token=token or "",
                    # a folder that does not exist: never read another Label Studio's media from disk
                    image_dir=os.path.join(scratch, "no-local-media"),
                    task_id=task_id,
                )
            except MediaError:
                raise
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else "?"
                hint = " (token refused: use a Personal Access Token?)" if status == 401 else ""
                if exc.response is not None and sdk_bridge.STORAGE_PROXY_PATH in str(exc.response.url):
                    # the SDK raises the storage proxy's answer once its upload-path fallback failed as well
                    hint += " from Label Studio's storage proxy; the /data/upload path failed too"
                raise MediaError(f"{_safe_url(ref)}: HTTP {status}{hint}") from exc
            except Exception as exc:
                raise MediaError(f"{_safe_url(ref)}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        if os.path.getsize(path) > max_bytes:
            raise MediaError(f"{_safe_url(ref)}: over the limit of {max_bytes} bytes (DCSAM_MAX_DOWNLOAD_MB)")
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
