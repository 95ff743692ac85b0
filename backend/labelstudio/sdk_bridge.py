"""The few private parts of label-studio-sdk (pinned in pyproject) that the backend relies on, in one place.

The SDK has no public API for these: the ``Authorization`` header its client sends (for a Personal
Access Token, a fresh short-lived JWT), its JWT check, and its media resolver ``get_local_path``
(upload paths, local files, cloud URIs presigned through Label Studio) with a pluggable requests
session. An SDK upgrade must be checked against this module only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as sdk_io


def authorization_header(client: Any) -> str:
    """The ``Authorization`` header value the SDK client would send now (refreshing a PAT's JWT)."""
    return client._client_wrapper.get_headers()["Authorization"]


def is_jwt(token: str) -> bool:
    return bool(sdk_io.is_jwt_well_formed(token))


def get_local_path(url: str, **kwargs: Any) -> str:
    """The SDK's resolver: downloads ``url`` into ``cache_dir`` (through the session of :func:`bounded_downloads`)."""
    return sdk_io.get_local_path(url, **kwargs)


class _BoundedSession(requests.Session):
    """A requests session that refuses bodies larger than ``limit`` bytes and never waits forever."""

    def __init__(
        self, limit: int, too_big: Callable[[str, int], Exception], timeout: tuple[float, float] = (5.0, 120.0)
    ):
        super().__init__()
        self.limit = limit
        self.too_big = too_big
        self.default_timeout = timeout

    def request(self, method, url, **kwargs):  # type: ignore[override]  # same call, bounded body
        kwargs["stream"] = True
        kwargs.setdefault("timeout", self.default_timeout)
        resp = super().request(method, url, **kwargs)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.limit:
            resp.close()
            raise self.too_big(url, int(length))
        buf = bytearray()
        for chunk in resp.iter_content(1 << 20):
            buf += chunk
            if len(buf) > self.limit:
                resp.close()
                raise self.too_big(url, len(buf))
        # the SDK reads ``resp.content``: hand it the bounded body that was already read
        resp._content = bytes(buf)
        resp._content_consumed = True
        return resp


@contextmanager
def bounded_downloads(limit: int, too_big: Callable[[str, int], Exception]) -> Iterator[None]:
    """Within the block, the SDK's downloads stop at ``limit`` bytes with ``too_big(url, size)``."""
    with sdk_io.http_session(_BoundedSession(limit, too_big)):
        yield
