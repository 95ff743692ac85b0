"""A real PostgreSQL server for the tests: Debian's binaries, a fresh data directory, a free loopback port.

``postgres_server`` (session scope) starts it once per test session and stops it at the end; tests take
a fresh database each from :meth:`PostgresServer.new_database`. Import the fixtures into a test module
(``from tests.support.postgres import database_url, postgres_server  # noqa: F401``); the server is one
per session however many modules import them. A machine without the PostgreSQL binaries skips the
PostgreSQL tests with that reason; root runs the server as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<major>/bin), or PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One ``postgres`` process on 127.0.0.1 with trust authentication, in a temporary folder."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="dcsam-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "start")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # pg_ctl returns once the postmaster runs; wait until it accepts connections
            try:
                with self.connect("postgres"):
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect("postgres") as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)


_SERVER: PostgresServer | None = None


@pytest.fixture(scope="session")
def postgres_server(request) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use, stopped at the end of the session)."""
    global _SERVER
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="psycopg 3 (the scale extra) is not installed")
    if _SERVER is None:
        server = PostgresServer(bin_dir)
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        _SERVER = server

        def stop() -> None:
            global _SERVER
            if _SERVER is server:
                server.stop()
                _SERVER = None

        request.addfinalizer(stop)
    yield _SERVER


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    """Each test twice: ``""`` (the SQLite file under MODEL_DIR) and a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_server").new_database()
