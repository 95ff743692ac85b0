"""Bounded resources: the decode budget (pixels in flight, peak RSS), label-config size and cache, the
Label Studio access map, pruning of finished jobs, the frame-sequence wait and <Video> temporary files."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from PIL import Image

from backend.labelstudio import projects as ls_projects
from backend.labelstudio.labelconfig import LabelConfigError
from backend.labelstudio.media import MediaError, PixelBudget, decode_image
from backend.labelstudio.projects import LabelStudioProjects
from backend.services import tracks
from backend.services.tracks import downloaded_video
from backend.services.video import FrameOutcome, SequenceRun
from backend.settings import BackendSettings
from backend.store import Store
from backend.store import jobs as jobs_store
from tests.support.configs import BRUSH_CONFIG


def _in_thread(fn) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


# -- the decode budget -----------------------------------------------------------------------------
def _take(budget: PixelBudget, pixels: int, held: list) -> threading.Event:
    """In another thread: hold ``pixels`` of ``budget`` until the test ends; the event says it got them."""

    def take() -> None:
        held.append(budget.hold(pixels))
        held[-1].__enter__()

    return _in_thread(take)[1]


def test_decodes_wait_until_their_pixels_fit_in_the_budget():
    budget, held = PixelBudget(100), []
    with budget.hold(60):
        second = _take(budget, 60, held)
        assert not second.wait(0.3)  # 60 + 60 > 100
        small = _take(budget, 10, held)
        assert not small.wait(0.3)  # fits, but queued behind the 60: first come, first served
    assert second.wait(10) and small.wait(10)
    assert budget.in_flight == 70


def test_an_image_larger_than_the_budget_decodes_alone():
    budget, held = PixelBudget(100), []
    with budget.hold(30):
        big = _take(budget, 500, held)
        assert not big.wait(0.3)
    assert big.wait(10) and budget.in_flight == 500


def test_decode_image_holds_the_budget_while_it_decodes():
    budget = PixelBudget(100)
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (1, 2, 3)).save(buf, "PNG")
    out = []
    with budget.hold(50):
        _, done = _in_thread(lambda: out.append(decode_image(buf.getvalue(), 1000, "t", budget)))
        assert not done.wait(0.3)  # 80 more pixels do not fit beside 50
    assert done.wait(10) and out[0].shape == (8, 10, 3) and budget.in_flight == 0
    with pytest.raises(MediaError, match="over the limit"):
        decode_image(buf.getvalue(), 79, "t", budget)
    assert budget.in_flight == 0


@pytest.mark.slow
def test_four_100_megapixel_images_decoded_at_once_stay_within_one_decode_of_memory(tmp_path):
    """The review's case: 10000x10000 single-colour PNGs (exactly DCSAM_MAX_IMAGE_PIXELS), four at once.
    Measured on 2 cores: one decode +1.3 GB peak; four unbounded +5.0 GB; four with the default budget +1.3 GB."""
    png = tmp_path / "big.png"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from PIL import Image; Image.new('RGB', (10000, 10000), (30, 60, 90)).save({str(png)!r})",
        ],
        check=True,
        timeout=300,
    )
    child = textwrap.dedent(
        f"""
        import json, resource, threading
        from backend.labelstudio.media import decode_image
        data = open({str(png)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shapes = []
        threads = [threading.Thread(target=lambda: shapes.append(decode_image(data, 10**8).shape)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"shapes": shapes, "peak_mb": peak // 1024}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [[10000, 10000, 3]] * 4
    assert got["peak_mb"] < 2500, got  # unbounded: ~5000


# -- label configs ------------------------------------------------------------------------------------
@pytest.fixture
def ls_projects_factory(tmp_path):
    stores = []

    def make(**settings) -> LabelStudioProjects:
        stores.append(Store(tmp_path / f"state{len(stores)}"))
        return LabelStudioProjects(stores[-1].projects, BackendSettings(model_dir=tmp_path, **settings))

    return make


def test_a_huge_label_config_is_refused_before_it_is_parsed(ls_projects_factory, monkeypatch):
    parsed = []
    monkeypatch.setattr(ls_projects, "parse_label_config", lambda xml: parsed.append(xml))
    labels = "".join(f'<Label value="l{i}"/>' for i in range(1_000_000))
    xml = BRUSH_CONFIG.replace('<Label value="cat"/>', labels)
    assert len(xml) > 20_000_000
    lsp = ls_projects_factory()
    with pytest.raises(LabelConfigError, match=r"over the limit of 2097152 \(DCSAM_MAX_CONFIG_MB\)"):
        lsp.label_config(7, xml)
    assert parsed == [] and lsp.projects.get(7) is None  # neither parsed nor stored


def test_the_config_cache_is_bounded_by_the_size_of_its_configs(ls_projects_factory, monkeypatch):
    monkeypatch.setattr(ls_projects, "CONFIG_CACHE_BYTES", 3000)
    calls = []
    real = ls_projects.parse_label_config
    monkeypatch.setattr(ls_projects, "parse_label_config", lambda xml: calls.append(xml) or real(xml))
    lsp = ls_projects_factory()
    configs = [BRUSH_CONFIG + f"<!-- {i} {'x' * 800} -->" for i in range(4)]  # ~1 KB each: 3 fit
    for xml in configs:
        lsp.label_config(None, xml)
    lsp.label_config(None, configs[3])
    lsp.label_config(None, configs[1])
    assert len(calls) == 4  # the three newest were kept
    lsp.label_config(None, configs[0])
    assert len(calls) == 5  # the oldest was dropped


def test_setup_accesses_are_bounded_and_recently_used_ones_kept(ls_projects_factory, monkeypatch):
    monkeypatch.setattr(ls_projects, "MAX_SETUP_ACCESSES", 3)
    lsp = ls_projects_factory()
    for p in range(1, 6):
        lsp.projects.save(p, hostname="http://ls.test:8080", access_token=f"token-{p}")
    first = lsp.access_for(1)
    accesses = {p: lsp.access_for(p) for p in (2, 3)}
    assert lsp.access_for(1) is first  # used again: now the most recent
    lsp.access_for(4)  # evicts 2, the least recently used
    assert lsp.access_for(1) is first and lsp.access_for(3) is accesses[3]
    assert lsp.access_for(2) is not accesses[2]  # rebuilt, same host and token
    assert lsp.access_for(2).url == "http://ls.test:8080"


# -- finished jobs ------------------------------------------------------------------------------------
def _finished(store: Store, project: int | None, n: int, age_days: float) -> list[int]:
    ids = [store.jobs.add("sync_examples", project) for _ in range(n)]
    for job_id in ids:
        store.jobs.finish(job_id, "done")
    with store.db.transaction() as con:
        con.executemany("UPDATE jobs SET finished_at=? WHERE id=?", [(time.time() - age_days * 86400, i) for i in ids])
    return ids


def test_prune_keeps_the_last_n_per_project_and_everything_recent(tmp_path):
    store = Store(tmp_path)
    old_a = _finished(store, 1, 8, age_days=40)
    new_a = _finished(store, 1, 2, age_days=1)
    old_b = _finished(store, 2, 3, age_days=40)
    old_none = _finished(store, None, 6, age_days=40)
    queued = store.jobs.add("preannotate", 1)
    running = store.jobs.add("train", 1)
    store.jobs.claim("me", ("train",))
    with store.db.transaction() as con:  # open jobs are never pruned, however old
        con.execute("UPDATE jobs SET created_at=0, updated_at=0")
    assert store.jobs.prune(keep_per_project=5, keep_days=30) == 5 + 1
    kept = {j["id"] for j in store.jobs.list(limit=1000)}
    assert kept == set(old_a[5:] + new_a + old_b + old_none[1:] + [queued, running])


def test_finishing_jobs_prunes_the_first_time_then_every_few_finishes(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_store, "PRUNE_EVERY", 3)
    old = _finished(Store(tmp_path), 3, 6, age_days=10)
    store = Store(tmp_path)  # another process, keeping less
    store.jobs.keep_per_project, store.jobs.keep_days = 2, 7

    def ids() -> set[int]:
        return {j["id"] for j in store.jobs.list(limit=100)}

    [a] = _finished(store, 3, 1, age_days=0)
    assert ids() == {old[-1], a}  # its first finish pruned: the 2 newest of project 3 are kept
    more = _finished(store, 4, 2, age_days=10)
    assert ids() == {old[-1], a, *more}  # two finishes: no prune yet
    [b] = _finished(store, 3, 1, age_days=0)
    assert ids() == {a, b, *more}  # the third one pruned


# -- frame-sequence waits -------------------------------------------------------------------------------
def test_a_request_waits_for_its_frames_at_most_the_timeout():
    run = SequenceRun(key=("k",), task_ids=[1, 2, 3])
    run.put(1, FrameOutcome([{"id": "r"}]))
    got = run.wait([1, 2], timeout=0.2)
    assert got[1].regions == [{"id": "r"}] and got[1].error is None
    assert got[2].regions == [] and "DCSAM_VIDEO_WAIT_S" in got[2].error
    assert not run.finished  # the propagation goes on for later requests
    threading.Timer(0.1, lambda: run.put(2, FrameOutcome([]))).start()
    assert run.wait([2], timeout=60)[2].error is None


# -- <Video> temporary files ----------------------------------------------------------------------------
@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


class Boom(Exception):
    pass


def test_the_video_file_is_removed_when_opening_it_fails_with_any_error(private_tmp, monkeypatch):
    def crash(path, backend):
        assert os.path.exists(path)
        raise Boom("decoder crashed")

    monkeypatch.setattr(tracks, "VideoFileSource", crash)
    with pytest.raises(Boom):
        with downloaded_video(lambda: b"\x00" * 100, 5):
            pass
    assert os.listdir(private_tmp) == []


REAL_FDOPEN = os.fdopen


class FullDisk:
    """A file opened on a full disk: every write fails."""

    def __init__(self, fd: int, mode: str):
        self.fh = REAL_FDOPEN(fd, mode)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_the_video_file_is_removed_when_writing_it_fails(private_tmp, monkeypatch):
    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError, match="No space left"):
        with downloaded_video(lambda: b"\x00" * 100, 5):
            pass
    assert os.listdir(private_tmp) == []


def test_an_unreadable_video_is_a_media_error_and_leaves_no_file(private_tmp):
    with pytest.raises(MediaError, match="task 5"):
        with downloaded_video(lambda: b"not a video at all", 5):
            pass
    assert os.listdir(private_tmp) == []
