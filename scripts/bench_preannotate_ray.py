#!/usr/bin/env python
"""Benchmark whole-project pre-annotation on Ray against the single-process job: tasks/s with the lite
engine in one process, then on a local Ray with 1 and 2 CPU inference actors (``--actors``).

Each run pre-annotates its own project of the same N DAVIS frames (854x480 JPEG, ../shared/data/davis16-dev,
repeated when N > 225; frame 0 of blackswan annotated) served over loopback HTTP by the fake Label Studio of
the tests (tests/support/fakes.py), with the backend's job runner in this process (tests/support/harness.py).
The fake Label Studio keeps its own cost out of the figures (the real one is measured by
scripts/bench_preannotate.py); the Ray runs start their actors inside the job, so the job's figure includes
their engine loads, and ``steady_tasks_per_second`` leaves out the first page. Prints a JSON report with the
load averages around each run.

    python scripts/bench_preannotate_ray.py --tasks 60 [--chunk 20] [--batch 4] [--runs one 1 2]

``--runs`` lists the runs in order: ``one`` (the single-process job) or a number of Ray CPU actors; on a
shared machine, repeat them in another order (``--runs 2 1 one``) to see how much the load moved the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcsam.api import InContextSegmenter  # noqa: E402
from dcsam.io import read_image, read_mask  # noqa: E402
from dcsam.masks import resize_mask  # noqa: E402
from tests.support.configs import brush_config  # noqa: E402
from tests.support.data import DATA  # noqa: E402
from tests.support.fakes import FakeLabelStudio  # noqa: E402
from tests.support.harness import BackendHarness  # noqa: E402
from tests.support.regions import annotated_task, brush_region  # noqa: E402

DAVIS = DATA / "davis16-dev"
CONFIG = brush_config("blackswan")


def add_project(ls: FakeLabelStudio, project: int, frames: list[Path]) -> list[int]:
    """The frames as tasks of ``project``; the first one (blackswan frame 0) annotated."""
    ls.label_configs[project] = CONFIG
    mask = read_mask(DAVIS / "Annotations" / "blackswan" / "00000.png")
    ids = []
    for i, src in enumerate(frames):
        task_id = project * 100000 + i + 1
        path = f"/data/upload/{project}/{i:05d}.jpg"
        ls.files[path] = src.read_bytes()
        if i == 0:
            img = read_image(src)
            ls.tasks.append(
                annotated_task(task_id, project, path, [brush_region(resize_mask(mask, *img.shape[:2]), "blackswan")])
            )
        else:
            ls.tasks.append({"id": task_id, "project": project, "data": {"image": path}, "annotations": []})
        ids.append(task_id)
    return ids


def measure(h: BackendHarness, ls: FakeLabelStudio, project: int, ids: list[int], chunk: int) -> dict:
    """One job: its own figures, the wall clock, the rate after the first page, the load around it."""
    load_before = os.getloadavg()
    t0 = time.monotonic()
    job_id = h.client.post("/jobs/preannotate", json={"project": project}).json["id"]
    first_page_at = None
    deadline = t0 + 3600
    while time.monotonic() < deadline:
        job = h.client.get(f"/jobs/{job_id}").json
        if first_page_at is None and (job.get("progress_done") or 0) >= chunk:
            first_page_at, first_done = time.monotonic(), job["progress_done"]
        if job["status"] in ("done", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.25)
    wall = time.monotonic() - t0
    counts: dict[int, int] = {}
    for p in ls.predictions:
        if p["project"] == project:
            counts[p["task"]] = counts.get(p["task"], 0) + 1
    steady = None
    if first_page_at is not None and job["progress_done"] > first_done:
        steady = round((job["progress_done"] - first_done) / (t0 + wall - first_page_at), 3)
    return {
        "status": job["status"],
        "message": job.get("message"),
        "tasks_per_second_job": job["figures"].get("tasks_per_second"),
        "tasks_per_second_wall": round(len(ids) / wall, 3),
        "steady_tasks_per_second": steady,
        "wall_seconds": round(wall, 1),
        "exactly_once": counts == {t: 1 for t in ids},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=20, help="DCSAM_PREANNOTATE_CHUNK (tasks per page)")
    ap.add_argument("--batch", type=int, default=4, help="DCSAM_BATCH_SIZE")
    ap.add_argument(
        "--runs", nargs="+", default=["one", "1", "2"], help="'one' (single process) or a Ray CPU actor count, in order"
    )
    args = ap.parse_args(argv)
    if any(r != "one" and not (r.isdigit() and int(r) >= 1) for r in args.runs):
        ap.error("--runs: 'one' or a number of actors >= 1")
    if args.tasks < 2 or args.chunk < 1 or args.batch < 1:
        ap.error("--tasks >= 2, --chunk/--batch >= 1")
    if not DAVIS.is_dir():
        ap.error(f"{DAVIS} not found (python scripts/fetch_test_data.py)")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake Label Studio logs every request
    frames = sorted((DAVIS / "JPEGImages").glob("*/*.jpg"))
    first = frames.index(DAVIS / "JPEGImages" / "blackswan" / "00000.jpg")
    frames = [frames[(first + i) % len(frames)] for i in range(args.tasks)]
    work = Path(tempfile.mkdtemp(prefix="dcsam-ray-bench-"))  # short: Ray's socket paths live under it
    ls = FakeLabelStudio().start()
    lite = InContextSegmenter.from_config(engine="lite")  # the single-process run's engine, loaded before it
    env = {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.api_key,
        "DCSAM_PREANNOTATE_CHUNK": str(args.chunk),
        "DCSAM_BATCH_SIZE": str(args.batch),
        "DCSAM_PREANNOTATE_AFTER_TRAIN": "0",
    }
    runs: dict[str, dict] = {}
    ray = None
    harnesses: list[BackendHarness] = []
    try:
        modes = [
            (f"{k}. one process", {})
            if r == "one"
            else (f"{k}. ray, {r} CPU actor(s)", {"DCSAM_RAY_ADDRESS": "local", "DCSAM_RAY_ACTORS": r})
            for k, r in enumerate(args.runs, start=1)
        ]
        for project, (name, extra) in enumerate(modes, start=1):
            if extra and ray is None:
                import ray as ray_module

                t = time.monotonic()
                ray_module.init(
                    address="local",
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    object_store_memory=256 * 1024**2,
                    namespace="dcsam",
                    _temp_dir=str(work / "ray"),
                    log_to_driver=False,
                )
                ray = ray_module
                runs["ray_start_seconds"] = {"seconds": round(time.monotonic() - t, 1)}
            ids = add_project(ls, project, frames)
            (work / str(project)).mkdir()
            h = BackendHarness(work / str(project), lite, **env, **extra)
            harnesses.append(h)
            runs[name] = measure(h, ls, project, ids, args.chunk)
            print(name, json.dumps(runs[name]), file=sys.stderr)
        report = {
            "tasks": args.tasks,
            "image": "DAVIS 854x480 JPEG over loopback HTTP (fake Label Studio)",
            "cpus": os.cpu_count(),
            "chunk": args.chunk,
            "batch": args.batch,
            "runs": runs,
        }
        print(json.dumps(report, indent=2))
        return 0 if all(r.get("exactly_once", True) for r in runs.values()) else 1
    finally:
        for h in harnesses:
            h.service.runner.stop()
        if ray is not None:
            ray.shutdown()
        ls.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
