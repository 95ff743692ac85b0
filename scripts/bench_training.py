#!/usr/bin/env python
"""Benchmark fine-tuning: how long a training job takes, and how /predict answers while one runs.

In-process backend (the Flask app with its job runner, lite engine) against the fake Label Studio of
``tests/support``; real images from ../shared/data (read by path):

* ``3``: 3 annotated tasks of one label (PerSeg ``cat_00..02``, full resolution, 1282 px);
* ``20``: 20 annotated tasks, 5 frames each of four DAVIS videos (480p), one label per video.

``train`` runs one Start Training job per project with the engine's own step choices (as served) and
prints its seconds, the cross-validated decision and the figures. ``latency`` sends ``--requests``
sequential /predict calls (one of the project's images each) with the model idle, as many while a
training job of that project runs, and as many again once it is done (idle too), and prints the median
and worst latency of each, and whether each call during training was answered before the job ended.

    python scripts/bench_training.py [--set DCSAM_TRAIN_PATIENCE=0] train [--projects 3 20]
    python scripts/bench_training.py latency [--requests 10] [--project 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcsam.io import read_image, read_mask  # noqa: E402
from tests.support.configs import brush_config  # noqa: E402
from tests.support.data import DATA  # noqa: E402
from tests.support.fakes import FakeLabelStudio, image_bytes  # noqa: E402
from tests.support.regions import annotated_task, brush_region  # noqa: E402

VIDEOS = ("blackswan", "car-roundabout", "car-shadow", "dog")
EXTRA_ENV: dict[str, str] = {}  # backend settings from --set KEY=VALUE


def davis_frame(video: str, frame: int):
    stem = f"{frame:05d}"
    return (
        read_image(DATA / "davis16-dev" / "JPEGImages" / video / f"{stem}.jpg"),
        read_mask(DATA / "davis16-dev" / "Annotations" / video / f"{stem}.png"),
    )


def add_project(ls: FakeLabelStudio, project: int, size: int) -> list[str]:
    """Annotated tasks (ids project*1000+1..) of the ``size`` project; returns its labels."""
    if size == 3:
        items = [("cat", *_perseg(f"cat_{i:02d}")) for i in range(3)]
    elif size == 20:
        items = [(v, *davis_frame(v, f)) for v in VIDEOS for f in (0, 8, 16, 24, 32)]
    else:
        raise SystemExit(f"no {size}-task project: use 3 or 20")
    labels = sorted({label for label, _, _ in items})
    ls.label_configs[project] = brush_config(*labels)
    for i, (label, img, mask) in enumerate(items):
        path = f"/data/upload/{project}/t{i}.jpg"
        ls.files[path] = image_bytes(img)
        ls.tasks.append(annotated_task(project * 1000 + i + 1, project, path, [brush_region(mask, label)]))
    return labels


def _perseg(name: str):
    return read_image(DATA / "perseg-mini" / f"{name}.jpg"), read_mask(DATA / "perseg-mini" / f"{name}.png")


def backend(ls: FakeLabelStudio, workdir: Path):
    from dcsam.api import InContextSegmenter
    from tests.support.harness import BackendHarness

    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.api_key, "DCSAM_PREANNOTATE_AFTER_TRAIN": "0"}
    env.update(EXTRA_ENV)
    return BackendHarness(workdir, InContextSegmenter.from_config(engine="lite"), **env)


def start_training(h, project: int) -> int:
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert r.status_code == 200, r.json
    return int(r.json["job"])


def job(h, job_id: int) -> dict:
    return h.client.get(f"/jobs/{job_id}").json


def bench_train(sizes: list[int]) -> list[dict]:
    out = []
    ls = FakeLabelStudio().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            h = backend(ls, Path(tmp))
            try:
                for n, size in enumerate(sizes):
                    project = 100 + n
                    add_project(ls, project, size)
                    h.service.runtime.base()  # the model load is not training time
                    t0, c0 = time.monotonic(), time.process_time()
                    j = start_training(h, project)
                    assert h.service.runner.wait_idle(3600)
                    wall, cpu = time.monotonic() - t0, time.process_time() - c0
                    rec = job(h, j)
                    f = rec.get("figures") or {}
                    out.append(
                        {
                            "tasks": size,
                            "status": rec["status"],
                            "seconds_wall": round(wall, 1),
                            "seconds_job": f.get("seconds"),
                            "cpu_seconds": round(cpu, 1),  # this process, all threads: less sensitive to others' load
                            "promoted": f.get("promoted"),
                            "chosen_steps": f.get("chosen_steps"),
                            "val_miou_before": f.get("val_miou_before"),
                            "val_miou_after": f.get("val_miou_after"),
                            "choices": f.get("choices"),
                            "folds": f.get("folds"),
                            "steps_run": f.get("steps_run"),
                            "feature_cache": f.get("feature_cache"),
                            "message": rec.get("message"),
                        }
                    )
                    print(json.dumps(out[-1]), flush=True)
            finally:
                h.service.runner.stop()
    finally:
        ls.close()
    return out


def bench_latency(requests: int, size: int) -> dict:
    ls = FakeLabelStudio().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            h = backend(ls, Path(tmp))
            try:
                project = 200
                labels = add_project(ls, project, size)
                cfg = brush_config(*labels)
                assert h.setup(project, cfg).status_code == 200
                annotated = [t["data"]["image"] for t in ls.tasks if t["project"] == project]
                # the annotated images again, as tasks nobody annotated: a real mask for each
                queries = [
                    {"id": project * 1000 + 500 + i, "data": {"image": annotated[i % len(annotated)]}}
                    for i in range(requests)
                ]

                def predict(task: dict) -> float:
                    t0 = time.monotonic()
                    r = h.predict(project, cfg, [task])
                    assert r.status_code == 200, r.json
                    assert r.json["results"] and r.json["results"][0]["result"], r.json
                    return time.monotonic() - t0

                predict(queries[0])  # warm: model load, examples encoded
                idle = [predict(q) for q in queries]
                j = start_training(h, project)
                while job(h, j)["status"] == "queued":
                    time.sleep(0.05)
                busy, running_after = [], []
                for q in queries:
                    busy.append(predict(q))
                    running_after.append(job(h, j)["status"] == "running")
                assert h.service.runner.wait_idle(3600)
                rec = job(h, j)
                idle += [predict(q) for q in queries]  # idle again: before and after, so that others' load evens out
            finally:
                h.service.runner.stop()
    finally:
        ls.close()

    def summary(xs: list[float]) -> dict:
        return {"n": len(xs), "median_s": round(statistics.median(xs), 3), "worst_s": round(max(xs), 3)}

    return {
        "idle": summary(idle),
        "during_training": summary(busy),
        "answered_while_training_ran": sum(running_after),
        "training_job": {"status": rec["status"], "seconds": (rec.get("figures") or {}).get("seconds")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a backend setting, e.g. DCSAM_TRAIN_PATIENCE=0"
    )
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="seconds of one training job per project")
    t.add_argument("--projects", type=int, nargs="+", default=[3, 20], help="project sizes: 3 and/or 20 tasks")
    lat = sub.add_parser("latency", help="/predict latency idle vs during a training job")
    lat.add_argument("--requests", type=int, default=10)
    lat.add_argument("--project", type=int, default=3, help="train the 3- or 20-task project meanwhile")
    args = ap.parse_args()
    EXTRA_ENV.update(kv.split("=", 1) for kv in args.set)
    machine = {"settings": EXTRA_ENV, "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    import torch

    machine["torch_threads"] = torch.get_num_threads()
    result = bench_train(args.projects) if args.what == "train" else bench_latency(args.requests, args.project)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({"machine": machine, "result": result}, indent=1))


if __name__ == "__main__":
    main()
