"""What a media fetch logs: nothing alarming on the normal route, the real cause when it fails.

The fake Label Studio answers the storage proxy (``/storage-data/uploaded/``) with 400, as a Label Studio on
local storage does, so every ``/data/upload/...`` fetch takes the SDK's legacy-upload-path fallback.
"""

from __future__ import annotations

import logging

import pytest

from backend.labelstudio.media import LabelStudioAccess, MediaError, fetch_media

MB = 1 << 20


def _access(fake_ls) -> LabelStudioAccess:
    return LabelStudioAccess(fake_ls.url, fake_ls.api_key, max_download_bytes=MB)


def test_a_normal_upload_fetch_logs_nothing_at_info(fake_ls, caplog):
    fake_ls.files["/data/upload/1/a.jpg"] = b"jpeg bytes"
    with caplog.at_level(logging.INFO):
        data = fetch_media("/data/upload/1/a.jpg", 7, access=_access(fake_ls), max_bytes=MB, local_files_root=None)
    assert data == b"jpeg bytes"
    # the route really was the fallback: the proxy was asked first, then the upload path
    paths = [r.path for r in fake_ls.requests]
    assert "/storage-data/uploaded/" in paths and "/data/upload/1/a.jpg" in paths
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "proxy" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "File downloaded" in r.getMessage()]


def test_the_fallback_line_is_still_there_at_debug(fake_ls, caplog):
    fake_ls.files["/data/upload/1/a.jpg"] = b"jpeg bytes"
    with caplog.at_level(logging.DEBUG):
        fetch_media("/data/upload/1/a.jpg", 7, access=_access(fake_ls), max_bytes=MB, local_files_root=None)
    fallback = [r for r in caplog.records if "retrying legacy upload path" in r.getMessage()]
    assert fallback and all(r.levelno == logging.DEBUG for r in fallback)


def test_a_real_failure_names_both_routes(fake_ls, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(MediaError) as info:
        fetch_media("/data/upload/1/missing.jpg", 7, access=_access(fake_ls), max_bytes=MB, local_files_root=None)
    assert "storage proxy" in str(info.value) and "/data/upload path failed too" in str(info.value)
