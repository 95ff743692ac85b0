#!/usr/bin/env python
"""Benchmark whole-project pre-annotation: tasks/s with the lite engine, JPEGs fetched over HTTP from a real
Label Studio 1.23.2, predictions imported through the API.

Starts Label Studio (its own venv, fresh data dir, loopback; see tests/support/label_studio.py) and
`dcsam serve`, uploads N DAVIS frames (../shared/data/davis16-dev, repeated when N > 225), annotates
frame 0 of blackswan, runs one POST /jobs/preannotate and prints a JSON report (throughput from the job's
own figures and from the wall clock, load averages, exactly-once check).

    python scripts/bench_preannotate.py --tasks 300 [--long-side 480] [--chunk 100] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

from dcsam.io import read_image, read_mask  # noqa: E402
from dcsam.masks import resize_mask  # noqa: E402
from tests.support.configs import brush_config  # noqa: E402
from tests.support.data import DATA  # noqa: E402
from tests.support.label_studio import LEGACY_TOKEN, Backend, LabelStudio  # noqa: E402
from tests.support.regions import brush_result  # noqa: E402

DAVIS = DATA / "davis16-dev"
CONFIG = brush_config("blackswan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--long-side", type=int, default=0, help="downscale frames to this long side (0: native 854x480)")
    ap.add_argument("--chunk", type=int, default=100, help="DCSAM_PREANNOTATE_CHUNK")
    ap.add_argument("--threads", type=int, default=8, help="DCSAM_PREANNOTATE_IO_THREADS")
    ap.add_argument("--batch", type=int, default=4, help="DCSAM_BATCH_SIZE")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.tasks < 2 or args.chunk < 1 or args.threads < 1 or args.long_side < 0:
        ap.error("--tasks >= 2, --chunk/--threads >= 1, --long-side >= 0")
    if not DAVIS.is_dir():
        ap.error(f"{DAVIS} not found")
    work = Path(tempfile.mkdtemp(prefix="dcsam-bench-"))
    frames = sorted((DAVIS / "JPEGImages").glob("*/*.jpg"))
    paths = []
    (work / "img").mkdir()
    for i in range(args.tasks):
        src = frames[i % len(frames)]
        img = read_image(src)
        if args.long_side:
            s = args.long_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        out = work / "img" / f"{i:05d}_{src.parent.name}_{src.stem}.jpg"
        cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(out)
    ls = LabelStudio(work)
    backend = None
    try:
        project = ls.create_project("bench", CONFIG)
        ids = ls.upload_many(project, paths)
        first = min(k for k in ids if "blackswan_00000" in k)
        img = read_image(work / "img" / f"{first}.jpg")
        mask = read_mask(DAVIS / "Annotations" / "blackswan" / "00000.png")
        mask = resize_mask(mask, img.shape[0], img.shape[1])
        ls.annotate(ids[first], brush_result(mask, "blackswan"))
        backend = Backend(
            work,
            "bench",
            LABEL_STUDIO_URL=ls.url,
            LABEL_STUDIO_API_KEY=LEGACY_TOKEN,
            DCSAM_ENGINE="lite",
            DCSAM_PREANNOTATE_CHUNK=str(args.chunk),
            DCSAM_PREANNOTATE_IO_THREADS=str(args.threads),
            DCSAM_BATCH_SIZE=str(args.batch),
        )
        deadline = time.monotonic() + 300
        while not backend.get("/health").json().get("model_loaded") and time.monotonic() < deadline:
            time.sleep(0.5)  # measure the job, not the model load
        load_before = os.getloadavg()
        t0 = time.monotonic()
        job_id = backend.post("/jobs/preannotate", json={"project": project}).json()["id"]
        job = backend.wait_job(job_id, 24 * 3600)
        wall = time.monotonic() - t0
        load_after = os.getloadavg()
        counts = Counter(p["task"] for p in ls.project_predictions(project))
        report = {
            "tasks": args.tasks,
            "image": "854x480 JPEG" if not args.long_side else f"long side {args.long_side}",
            "status": job["status"],
            "message": job["message"],
            "tasks_per_second_job": job["figures"].get("tasks_per_second"),
            "tasks_per_second_wall": round(args.tasks / wall, 3),
            "wall_seconds": round(wall, 1),
            "exactly_once": len(counts) == len(ids) and set(counts.values()) == {1},
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "cpus": os.cpu_count(),
            "chunk": args.chunk,
            "io_threads": args.threads,
            "batch": args.batch,
        }
        print(json.dumps(report, indent=2))
        return 0 if job["status"] == "done" and report["exactly_once"] else 1
    finally:
        if backend is not None:
            backend.close()
        ls.close()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
