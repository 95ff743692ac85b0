"""scripts/fetch_test_data.py against a loopback HTTP server: synthetic sources (files and a zip archive), the
SHA-256 checks (a bad file is refused and not kept), and, where the developers' fixtures are present, a mirror
of the real sources' URL layout that must give back the same folder byte for byte."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import threading
import zipfile
from pathlib import Path

import pytest

from tests.support.data import DATA

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fetch_test_data", ROOT / "scripts" / "fetch_test_data.py")
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A loopback HTTP server for a folder; counts the GETs."""

    def __init__(self, root: Path):
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                paths.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    s = Server(www)
    s.root = www
    yield s
    s.close()


def synthetic(www: Path) -> dict:
    """Two sources like the real ones, from small made-up files; returns the manifest."""
    files = {"objs/a_00.jpg": b"jpeg bytes a", "objs/a_00.png": b"png bytes a", "LICENSE.txt": b"licence"}
    for rel, data in files.items():
        (www / "org/repo/main" / rel).parent.mkdir(parents=True, exist_ok=True)
        (www / "org/repo/main" / rel).write_bytes(data)
    frames = {
        "seq1": {"00000.jpg": b"f0", "00001.jpg": b"f1"},
        "seq2": {"00000.jpg": b"g0"},
        "skipped": {"00000.jpg": b"not wanted"},
    }
    (www / "dl").mkdir()
    groups = {}
    with zipfile.ZipFile(www / "dl" / "set.zip", "w") as zf:
        zf.writestr("SET/README", b"not wanted either")
        for seq, names in frames.items():
            lines = []
            for name, data in names.items():
                mask = data + b"-mask"
                zf.writestr(f"SET/img/480p/{seq}/{name}", data)
                zf.writestr(f"SET/ann/480p/{seq}/{name[:-4]}.png", mask)
                lines += [f"JPEGImages/{seq}/{name} {sha(data)}\n", f"Annotations/{seq}/{name[:-4]}.png {sha(mask)}\n"]
            groups[seq] = [len(lines), fetch.group_digest(lines)]
    del groups["skipped"]
    return {
        "sources": [
            {
                "name": "objs",
                "kind": "files",
                "url": "https://example.invalid/org/repo/main/",
                "files": {
                    "objs-mini/a_00.jpg": ["objs/a_00.jpg", sha(files["objs/a_00.jpg"])],
                    "objs-mini/a_00.png": ["objs/a_00.png", sha(files["objs/a_00.png"])],
                    "objs-mini/LICENSE.txt": ["LICENSE.txt", sha(files["LICENSE.txt"])],
                },
            },
            {
                "name": "video",
                "kind": "zip",
                "url": "https://example.invalid/dl/set.zip",
                "dest": "video-dev",
                "prefixes": {"SET/img/480p/": "JPEGImages/", "SET/ann/480p/": "Annotations/"},
                "groups": groups,
            },
        ]
    }


def run(tmp_path: Path, manifest: dict, *args: str) -> int:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return fetch.main(["--manifest", str(path), "--cache", str(tmp_path / "cache"), *args])


def test_fetches_verifies_and_lays_out_only_the_needed_files(tmp_path, server, capsys):
    manifest = synthetic(server.root)
    assert run(tmp_path, manifest, "--base-url", server.url) == 0
    data = tmp_path / "cache" / "data"
    assert f"DCSAM_TEST_DATA={data}" in capsys.readouterr().out
    got = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert got == [
        "objs-mini/LICENSE.txt",
        "objs-mini/a_00.jpg",
        "objs-mini/a_00.png",
        "video-dev/Annotations/seq1/00000.png",
        "video-dev/Annotations/seq1/00001.png",
        "video-dev/Annotations/seq2/00000.png",
        "video-dev/JPEGImages/seq1/00000.jpg",
        "video-dev/JPEGImages/seq1/00001.jpg",
        "video-dev/JPEGImages/seq2/00000.jpg",
    ]
    assert (data / "video-dev/Annotations/seq1/00001.png").read_bytes() == b"f1-mask"
    assert sorted(server.paths) == [
        "/dl/set.zip",
        "/org/repo/main/LICENSE.txt",
        *sorted(["/org/repo/main/objs/a_00.jpg", "/org/repo/main/objs/a_00.png"]),
    ]
    assert (tmp_path / "cache" / "downloads" / "set.zip").is_file()  # kept for a later run

    # a second run checks what is there and downloads nothing; --check verifies without any network
    server.paths.clear()
    assert run(tmp_path, manifest, "--base-url", server.url) == 0
    assert server.paths == []
    assert run(tmp_path, manifest, "--check", str(data)) == 0
    (data / "video-dev/JPEGImages/seq2/00000.jpg").write_bytes(b"changed")
    assert run(tmp_path, manifest, "--check", str(data)) == 1
    assert "video-dev/*/seq2: missing or sha256 mismatch" in capsys.readouterr().err


def test_a_file_that_does_not_match_its_sha256_is_refused_and_not_kept(tmp_path, server, capsys):
    manifest = synthetic(server.root)
    (server.root / "org/repo/main/objs/a_00.png").write_bytes(b"tampered")
    with zipfile.ZipFile(server.root / "dl" / "set.zip", "a") as zf:
        zf.writestr("SET/img/480p/seq2/00001.jpg", b"an extra frame")  # seq2 no longer matches its digest
    assert run(tmp_path, manifest, "--base-url", server.url) == 1
    err = capsys.readouterr().err
    assert f"objs-mini/a_00.png: sha256 {sha(b'tampered')} from {server.url}/org/repo/main/objs/a_00.png" in err
    assert "video-dev/*/seq2: 3 files with digest" in err and "expected 2 with" in err
    assert "FAILED" in err
    data = tmp_path / "cache" / "data"
    assert not (data / "objs-mini/a_00.png").exists()
    assert not list((data / "video-dev").glob("*/seq2/*"))
    assert (data / "objs-mini/a_00.jpg").is_file() and (data / "video-dev/JPEGImages/seq1/00000.jpg").is_file()
    assert not [p for p in data.rglob("*") if p.name.endswith((".part", ".download"))]


def test_an_unreachable_source_fails_with_its_url(tmp_path, server, capsys):
    manifest = synthetic(server.root)
    (server.root / "dl" / "set.zip").unlink()
    assert run(tmp_path, manifest, "--base-url", server.url, "--only", "video") == 1
    assert f"cannot download {server.url}/dl/set.zip" in capsys.readouterr().err


@pytest.mark.skipif(not (DATA / "davis16-dev").is_dir(), reason=f"fixtures not found at {DATA}")
def test_built_in_manifest_matches_the_fixtures():
    assert fetch.main(["--check", str(DATA)]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "davis16-dev").is_dir(), reason=f"fixtures not found at {DATA}")
def test_a_mirror_of_the_real_sources_gives_back_the_fixtures_byte_for_byte(tmp_path, server):
    """The real URL paths and archive layout, served from loopback with the fixtures' bytes."""
    from urllib.parse import urlsplit

    for source in fetch.MANIFEST["sources"]:
        base = urlsplit(source["url"]).path
        if source["kind"] == "files":
            for rel, (remote, _) in source["files"].items():
                target = server.root / (base + remote).lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((DATA / rel).read_bytes())
        else:
            archive = server.root / base.lstrip("/")
            archive.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(archive, "w") as zf:
                for prefix, folder in source["prefixes"].items():
                    for p in sorted((DATA / source["dest"] / folder).rglob("*")):
                        if p.is_file():
                            zf.write(p, prefix + p.relative_to(DATA / source["dest"] / folder).as_posix())
    dest = tmp_path / "fetched"
    assert fetch.main(["--cache", str(tmp_path / "cache"), "--dest", str(dest), "--base-url", server.url]) == 0
    want = {p.relative_to(DATA): sha(p.read_bytes()) for p in DATA.rglob("*") if p.is_file() and p.name != "README.md"}
    got = {p.relative_to(dest): sha(p.read_bytes()) for p in dest.rglob("*") if p.is_file()}
    assert got == want
