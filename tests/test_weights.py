"""Weight files: download into the cache (progress, checksum, atomic), and clear failures.
Served from a loopback HTTP server so no network is needed."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from dcsam.errors import CheckpointError
from dcsam.weights import WeightFile, resolve_weight_file


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_with_checksum_into_cache(server, tmp_path):
    root, url = server
    payload = b"weights" * 1000
    (root / "w.pt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    spec = WeightFile("w.pt", f"{url}/w.pt", digest)
    path = resolve_weight_file(spec, None, cache_dir=cache, allow_download=True, setting="--x")
    assert path == cache / "w.pt" and path.read_bytes() == payload
    assert (cache / "w.pt.sha256").read_text().split()[0] == digest
    (root / "w.pt").unlink()  # a second call uses the cache, no network
    assert resolve_weight_file(spec, None, cache_dir=cache, allow_download=True, setting="--x") == path


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    root, url = server
    (root / "w.pt").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    spec = WeightFile("w.pt", f"{url}/w.pt", "0" * 64)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        resolve_weight_file(spec, None, cache_dir=cache, allow_download=True, setting="--x")
    assert list(cache.iterdir()) == []  # no partial or bad file left behind


def test_unreachable_host_names_file_and_setting(tmp_path):
    spec = WeightFile("w.pt", "http://127.0.0.1:9/w.pt")
    with pytest.raises(CheckpointError, match=r"could not download w.pt.*--the-setting"):
        resolve_weight_file(spec, None, cache_dir=tmp_path, allow_download=True, setting="--the-setting")
