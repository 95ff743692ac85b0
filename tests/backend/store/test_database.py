"""The SQLite file at start: a damaged one is refused, an emptied one is rebuilt from the checkpoints,
and the documented backup command copies a consistent database while the backend writes to it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest
import torch

from backend.store import Store
from backend.store.database import FILE_NAME, Database, DatabaseDamaged


def _filled_file(model_dir) -> None:
    """A database of several pages, written and closed (no WAL left)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(model_dir / FILE_NAME)
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("CREATE INDEX notes_text ON notes(text)")
    con.executemany("INSERT INTO notes(text) VALUES(?)", [(f"note {i} " + "x" * 100,) for i in range(3000)])
    con.commit()
    con.close()


def test_corrupted_pages_are_refused_at_start(tmp_path):
    _filled_file(tmp_path)
    with open(tmp_path / FILE_NAME, "r+b") as fh:
        fh.seek(5 * 4096 + 16)  # inside a b-tree page, past the header
        fh.write(b"\xff" * 300)
    refused = r"is damaged \(.+\)\. The backend does not start on it: restore a backup"
    with pytest.raises(DatabaseDamaged, match=refused) as caught:
        Database(tmp_path)
    assert len(str(caught.value)) < 1000  # a few of SQLite's findings, not hundreds of lines


def test_a_file_that_is_no_database_is_refused_and_kept(tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"not sqlite " * 500)
    with pytest.raises(DatabaseDamaged, match="file is not a database"):
        Store(tmp_path)
    assert (tmp_path / FILE_NAME).read_bytes() == b"not sqlite " * 500  # left for inspection


def test_the_app_does_not_start_on_a_damaged_database(harness_factory, tmp_path):
    model = tmp_path / "model"
    _filled_file(model)
    with open(model / FILE_NAME, "r+b") as fh:
        fh.seek(0)
        fh.write(b"\x00" * 100)  # the header is gone
    with pytest.raises(DatabaseDamaged):
        harness_factory()  # create_app: no server, so no /health answering UP


def test_empty_or_missing_files_are_reported_as_empty(tmp_path):
    assert Database(tmp_path / "missing").was_empty
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / FILE_NAME).write_bytes(b"")
    assert Database(tmp_path / "zero").was_empty
    Store(tmp_path / "used").jobs.add("sync_examples", 1, {})
    assert not Database(tmp_path / "used").was_empty


def test_an_emptied_database_is_rebuilt_from_the_checkpoints(harness_factory, tmp_path, caplog):
    first = harness_factory(MODEL_DIR=str(tmp_path / "before"))
    base = first.service.version
    registry = first.service.versions
    v1 = registry.promote(5, {"w": torch.zeros(2)}, {"val_miou_after": 0.5}, parent=base)
    v2 = registry.promote(5, {"w": torch.ones(2)}, {"val_miou_after": 0.6}, parent=v1)
    v3 = registry.promote(8, {"w": torch.full((2,), 2.0)}, {}, parent=base)
    assert first.service.version_for(5) == v2
    # the database is lost (a 0-byte file), the checkpoints are there; a stray file is ignored
    after = tmp_path / "after"
    for project in ("5", "8"):
        shutil.copytree(tmp_path / "before" / project, after / project)
    (after / "5" / "broken.pt").write_bytes(b"truncated")
    (after / FILE_NAME).write_bytes(b"")
    h = harness_factory(MODEL_DIR=str(after))
    versions = h.service.versions
    assert h.service.version_for(5) == v2 and h.service.version_for(8) == v3
    assert [d["version"] for d in versions.project_versions(5)] == [v2, v1]
    assert versions.info(v2)["parent"] == v1 and versions.info(v1)["parent"] == base
    assert versions.info(v2)["digest"] == registry.info(v2)["digest"]
    assert torch.equal(versions.trainable_state(v2)["w"], torch.ones(2))
    assert "was empty while 3 fine-tuned checkpoint(s) exist" in caplog.text
    assert "broken.pt" in caplog.text
    # the next start finds a database that is not empty: nothing is rebuilt over a rollback
    h.service.activate_version(5, v1)
    again = harness_factory(MODEL_DIR=str(after))
    assert again.service.version_for(5) == v1


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line shell is not installed")
def test_the_documented_backup_command_copies_a_consistent_database(tmp_path):
    store = Store(tmp_path / "live")
    ids = [store.jobs.add("preannotate", 3, {"cursor": i}) for i in range(200)]  # in the WAL, not checkpointed
    backup = tmp_path / "backup" / FILE_NAME
    backup.parent.mkdir()
    subprocess.run(["sqlite3", str(store.path), f".backup '{backup}'"], check=True, timeout=60)
    store.jobs.add("preannotate", 3, {})  # the backend goes on writing
    copy = Store(backup.parent)  # passes the integrity check
    assert [j["id"] for j in copy.jobs.list(limit=1000)] == ids[::-1]
