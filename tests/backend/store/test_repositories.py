"""Every repository of backend.store on both databases: the SQLite file and a real PostgreSQL server.

Each test runs twice (``database_url``: ``""`` for SQLite, a fresh PostgreSQL database), so jobs, the
prediction ledger, versions, projects, examples and counters behave the same on both; the claim, lease
and recovery rules replicas rely on are checked here too.
"""

from __future__ import annotations

import threading
import time

import pytest

from backend.store import Store, is_transient
from backend.store.database import redact
from tests.support.postgres import database_url, postgres_server  # noqa: F401  (fixtures)

OTHER_HOST = "another-host.example:1:feedface"  # an owner no pid check can judge: only its lease can


@pytest.fixture()
def store(tmp_path, database_url) -> Store:  # noqa: F811
    return Store(tmp_path / "model", database_url)


def test_the_store_opens_the_database_it_was_given(store, database_url, tmp_path):  # noqa: F811
    assert store.db.dialect.name == ("postgresql" if database_url else "sqlite")
    assert store.db.was_empty
    assert str(store.path) == (database_url or str(tmp_path / "model" / "dcsam-backend.sqlite3"))
    assert redact("postgresql://dcsam:s3cret@db:5432/dcsam") == "postgresql://dcsam:***@db:5432/dcsam"


def test_reopening_migrates_nothing_and_keeps_the_rows(tmp_path, database_url):  # noqa: F811
    first = Store(tmp_path / "model", database_url)
    job = first.jobs.add("preannotate", 3, {"cursor": 7})
    again = Store(tmp_path / "model", database_url)
    assert not again.db.was_empty
    assert again.jobs.get(job)["params"] == {"cursor": 7}


def test_jobs_queue_merge_list_and_count(store):
    a = store.jobs.add("preannotate", 3, {"x": 1})
    b = store.jobs.add("train", 3, {}, run_after=time.time() + 3600)
    merged, created = store.jobs.add_or_merge("sync_examples", 3, {"n": 1}, run_after=0, latest_run_after=10)
    again, created_again = store.jobs.add_or_merge("sync_examples", 3, {"n": 2}, run_after=0, latest_run_after=10)
    global_sync, _ = store.jobs.add_or_merge("sync_examples", None, {}, run_after=0, latest_run_after=10)
    assert created and not created_again and again == merged and global_sync not in (a, b, merged)
    assert store.jobs.get(merged)["params"] == {"n": 2}
    assert [j["id"] for j in store.jobs.list()] == [global_sync, merged, b, a]
    assert [j["id"] for j in store.jobs.list(project_id=3, kind="train")] == [b]
    assert store.jobs.counts() == {("preannotate", "queued"): 1, ("train", "queued"): 1, ("sync_examples", "queued"): 2}
    assert store.jobs.open_job("preannotate", 3)["id"] == a and store.jobs.open_job("preannotate", 4) is None
    assert store.jobs.open_job("sync_examples", None)["id"] == global_sync
    assert store.jobs.busy(("preannotate",), time.time()) and not store.jobs.busy(("train",), time.time() + 60)
    done = store.jobs.add_finished("train", 3, "failed", "refused", {"reason": 1})
    assert store.jobs.get(done)["status"] == "failed" and store.jobs.get(done)["figures"] == {"reason": 1}
    with pytest.raises(ValueError):
        store.jobs.add_finished("train", 3, "running", "", {})


def test_claim_update_finish_and_cancel(store):
    a = store.jobs.add("preannotate", 3, {})
    later = store.jobs.add("preannotate", 4, {}, run_after=time.time() + 3600)
    job = store.jobs.claim("me:1:a", ("preannotate",), lease_s=30)
    assert job["id"] == a and job["status"] == "running" and job["owner"] == "me:1:a"
    assert 25 < job["lease_until"] - time.time() <= 30
    assert store.jobs.claim("me:1:a", ("preannotate",)) is None  # the other one is not due
    store.jobs.update(a, done=2, total=10, figures={"tps": 1.5}, params={"cursor": 2}, message="page 1")
    got = store.jobs.get(a)
    assert (got["progress_done"], got["progress_total"], got["figures"], got["params"], got["message"]) == (
        2,
        10,
        {"tps": 1.5},
        {"cursor": 2},
        "page 1",
    )
    assert store.jobs.request_cancel(a)["cancel_requested"] and store.jobs.cancel_requested(a)
    assert not store.jobs.finish(a, "cancelled", "x", owner="someone-else")  # not theirs: nothing written
    assert store.jobs.finish(a, "cancelled", "stopped", {"n": 1}, owner="me:1:a")
    assert store.jobs.get(a)["status"] == "cancelled" and store.jobs.get(a)["figures"] == {"n": 1}
    assert store.jobs.request_cancel(later)["status"] == "cancelled"  # queued: at once
    store.jobs.postpone(later, 0)  # a final job is not postponed
    assert store.jobs.get(later)["run_after"] > 0


def test_one_job_of_a_kind_runs_per_project(store):
    first = store.jobs.add("preannotate", 3, {})
    second = store.jobs.add("preannotate", 3, {})
    other = store.jobs.add("preannotate", 4, {})
    assert store.jobs.claim("a:1:x", ("preannotate",))["id"] == first
    assert store.jobs.claim("b:1:x", ("preannotate",))["id"] == other  # project 3's second one waits
    assert store.jobs.claim("b:1:x", ("preannotate",)) is None
    store.jobs.finish(first, "done")
    assert store.jobs.claim("b:1:x", ("preannotate",))["id"] == second


def test_requeue_renew_and_owned_by(store):
    job = store.jobs.add("preannotate", 3, {})
    store.jobs.claim("me:1:a", ("preannotate",), lease_s=30)
    assert store.jobs.owned_by(job, "me:1:a") and not store.jobs.owned_by(job, "you:1:b")
    assert store.jobs.renew(job, "me:1:a", lease_s=100)
    assert store.jobs.get(job)["lease_until"] - time.time() > 90
    assert not store.jobs.renew(job, "you:1:b")
    store.jobs.requeue(job, 0, "paused", owner="you:1:b")  # not theirs
    assert store.jobs.get(job)["status"] == "running"
    store.jobs.requeue(job, 0, "paused", owner="me:1:a")
    got = store.jobs.get(job)
    assert got["status"] == "queued" and got["restarts"] == 1 and got["owner"] is None and got["lease_until"] is None
    assert not store.jobs.renew(job, "me:1:a")  # queued again: the lease is gone


def test_recovery_judges_by_owner_and_lapsed_lease(store):
    ids = {name: store.jobs.add(kind, p, {}) for p, (name, kind) in enumerate(
        [("gone", "preannotate"), ("alive", "preannotate"), ("leased", "preannotate"), ("lapsed", "preannotate"),
         ("lapsed_train", "train"), ("lapsed_cancelled", "preannotate")]
    )}  # fmt: skip
    for name, job in ids.items():
        lease = -1.0 if name.startswith("lapsed") else 60.0
        assert store.jobs.claim(f"{name}:1:x", ("preannotate", "train"), lease_s=lease)["id"] == job
    store.jobs.request_cancel(ids["lapsed_cancelled"])
    verdicts = {"gone": True, "alive": False}  # the others: another machine, only the lease can tell
    recovered = store.jobs.recover(lambda owner: verdicts.get(owner.split(":")[0]), frozenset({"preannotate"}))
    assert sorted(recovered) == sorted(ids[n] for n in ("gone", "lapsed", "lapsed_train", "lapsed_cancelled"))
    status = {name: store.jobs.get(job) for name, job in ids.items()}
    assert status["gone"]["status"] == "queued" and "process gone:1:x stopped" in status["gone"]["message"]
    assert status["alive"]["status"] == "running" and status["leased"]["status"] == "running"
    assert status["lapsed"]["status"] == "queued" and status["lapsed"]["restarts"] == 1
    assert "stopped renewing its lease" in status["lapsed"]["message"]
    assert status["lapsed_train"]["status"] == "interrupted" and status["lapsed_cancelled"]["status"] == "cancelled"


def test_prune_keeps_recent_and_newest(store):
    ids = [store.jobs.add("preannotate", 3, {}) for _ in range(4)]
    for job in ids:
        store.jobs.finish(job, "done")
    open_job = store.jobs.add("preannotate", 3, {})
    assert store.jobs.prune(keep_per_project=2, keep_days=0) == 2
    assert sorted(j["id"] for j in store.jobs.list()) == [*ids[2:], open_job]


def test_ledger_books_pages_with_the_resume_point(store):
    job = store.jobs.add("preannotate", 3, {})
    ledger = store.ledger
    ledger.mark(3, "v1", [5, 6, 7], "pending", job)
    assert ledger.pending(3, "v1") == [5, 6, 7] and ledger.done_ids(3, "v1", [5, 6]) == set()
    ledger.commit_page(3, "v1", [5, 6], job, {"cursor": 6})
    assert ledger.done_ids(3, "v1", [5, 6, 7, 8]) == {5, 6} and ledger.count(3, "v1") == 2
    assert store.jobs.get(job)["params"] == {"cursor": 6}
    ledger.forget_pending(3, "v1", [7, 5])  # 5 is done: kept
    assert ledger.pending(3, "v1") == [] and ledger.count(3, "v1") == 2
    assert ledger.done_ids(3, "v2", [5]) == set() and ledger.done_ids(3, "v1", []) == set()


def test_a_failed_page_books_nothing(store):
    job = store.jobs.add("preannotate", 3, {"cursor": 0})
    store.jobs.finish(job, "done")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with store.db.transaction() as con:
            store.jobs.save_params(con, job, {"cursor": 99}, time.time())
            raise Boom
    assert store.jobs.get(job)["params"] == {"cursor": 0}


def test_versions_active_and_restore(store):
    store.versions.record_base("lite-1", "lite", {"why": "test"})
    store.versions.record_base("lite-1", "lite", {"why": "again"})
    assert store.versions.base_versions() == ["lite-1"]
    store.versions.add_active("lite-1-p3-ft1", 3, "lite-1", "/m/3/a.pt", "abc", {"val": 0.5})
    time.sleep(0.01)
    store.versions.add_active("lite-1-p3-ft2", 3, "lite-1-p3-ft1", "/m/3/b.pt", "def", {})
    assert store.versions.active(3) == "lite-1-p3-ft2" and store.versions.active(4) is None
    assert store.versions.of_project(3) == ["lite-1-p3-ft2", "lite-1-p3-ft1"]
    assert store.versions.info("lite-1-p3-ft1")["figures"] == {"val": 0.5}
    store.versions.set_active(3, "lite-1-p3-ft1")
    assert store.versions.active(3) == "lite-1-p3-ft1"
    rows = [("lite-1-p3-ft1", 3, None, "/x", "zzz", "{}", 1.0), ("lite-1-p5-ft1", 5, "lite-1", "/y", "q", "{}", 2.0)]
    store.versions.restore(rows, {5: "lite-1-p5-ft1"})
    assert store.versions.info("lite-1-p3-ft1")["digest"] == "abc"  # known: kept
    assert store.versions.active(5) == "lite-1-p5-ft1" and len(store.versions.fine_tuned()) == 3


def test_projects_examples_and_counters(store):
    store.projects.save(4, label_config="<View/>", hostname="http://h", access_token="t")
    store.projects.save(4, extra_params={"x": 1})
    assert store.projects.get(4) == {
        "label_config": "<View/>",
        "hostname": "http://h",
        "access_token": "t",
        "extra_params": {"x": 1},
        "examples_rev": 0,
    }
    assert store.projects.bump_examples_rev(4) == 1 and store.projects.bump_examples_rev(9) == 1
    assert [p["id"] for p in store.projects.overview()] == [4, 9] and store.projects.examples_rev(4) == 1
    assert store.projects.bump_annotation_counter(4) == 1 and store.projects.bump_annotation_counter(4, 3) == 4
    store.projects.reset_annotation_counter(4)
    assert store.projects.bump_annotation_counter(4) == 1
    store.examples.replace(4, [("tag", "cat", 1, 2, "2026-01"), ("tag", "cat", 1, 3, "2026-02")])  # same key: last
    assert [(e["annotation_id"], e["task_id"]) for e in store.examples.of_project(4)] == [(1, 3)]
    with pytest.raises(Exception) as caught:  # NOT NULL: the whole replacement is rolled back
        store.examples.replace(4, [("tag", "dog", 5, 6, "x"), ("tag", None, 1, 2, "x")])
    assert not is_transient(caught.value)
    assert [e["annotation_id"] for e in store.examples.of_project(4)] == [1]
    store.examples.delete_project(4)
    store.projects.delete(4)
    assert store.examples.of_project(4) == [] and store.projects.get(4) is None


def test_concurrent_claims_take_each_job_once(tmp_path, database_url):  # noqa: F811
    """Four 'replicas' (each its own Store, so its own connections) claim 60 jobs at once: each job once."""
    stores = [Store(tmp_path / "model", database_url) for _ in range(4)]
    ids = {stores[0].jobs.add("sync_examples", p, {}) for p in range(60)}
    taken: list[list[int]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claim_all(i: int) -> None:
        start.wait()
        for _ in range(200):  # bounded: 60 jobs among 4 claimers
            job = stores[i].jobs.claim(f"replica{i}:1:x", ("sync_examples",))
            if job is None:
                return
            taken[i].append(job["id"])
            stores[i].jobs.finish(job["id"], "done", owner=f"replica{i}:1:x")

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    every = [j for ids_ in taken for j in ids_]
    assert sorted(every) == sorted(ids)  # all run, none twice
    assert all(j["status"] == "done" for j in stores[0].jobs.list(limit=100))


def test_a_lost_connection_is_transient_and_replaced(store, database_url):  # noqa: F811
    if not database_url:
        pytest.skip("PostgreSQL only: a SQLite file has no server connection to lose")
    store.jobs.add("preannotate", 3, {})
    pid = store.db.query("SELECT pg_backend_pid()")[0][0]
    other = Store(store.db.dir, database_url)
    other.db.query("SELECT pg_terminate_backend(?)", (pid,))  # what a server restart does to a connection
    with pytest.raises(Exception) as caught:
        store.jobs.get(1)
    assert is_transient(caught.value)
    assert store.jobs.get(1)["kind"] == "preannotate"  # the next call opens a new connection


def test_a_forked_process_opens_its_own_connection_and_leaves_the_parents(store):
    """gunicorn forks workers after the app (and its store) is made: each worker opens its own connection."""
    import gc
    import os

    job = store.jobs.add("preannotate", 3, {})
    before = store.db.connection()
    pid = os.fork()
    if pid == 0:  # the child: its own connection; freeing the inherited one must not end the parent's session
        ok = store.jobs.get(job) is not None and store.db.connection() is not before
        gc.collect()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.db.connection() is before and store.jobs.get(job)["kind"] == "preannotate"


def test_a_replica_mounting_the_model_dir_elsewhere_finds_the_checkpoints(store, tmp_path):
    """The database records a checkpoint's path as the promoting replica saw it; another replica that mounts the
    shared MODEL_DIR at another path finds the same file under its own."""
    import shutil

    import torch

    from backend.services.versions import VersionRegistry

    here, there = tmp_path / "mounted-here", tmp_path / "mounted-there"
    promoting = VersionRegistry(store.versions, here, "base-1", "lite")
    version = promoting.promote(3, {"w": torch.ones(2)}, {"val": 0.5}, parent="base-1")
    there.mkdir()
    shutil.move(here / "3", there / "3")  # the same files, seen under another path
    serving = VersionRegistry(store.versions, there, "base-1", "lite")
    assert serving.active(3) == version
    assert torch.equal(serving.trainable_state(version)["w"], torch.ones(2))
    assert serving.activate(3, version) == (3, version)
