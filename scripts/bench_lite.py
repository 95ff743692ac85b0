#!/usr/bin/env python3
"""Seconds per 1920x1080 query of the lite engine, with the example's features cached.

    python scripts/bench_lite.py [--data ../shared/data] [--runs 7] [--threads N] [--size 1920x1080]

The example (DAVIS ``dog`` frame 0 and its mask, from the shared data, read by path) is encoded
once; each timed call is ``InContextSegmenter.predict`` on a query (``dog`` frame 20, upscaled in
memory to the benchmark size, one pixel changed per call so that no call finds the previous one's
features cached): query features, matching, refinement and the full-resolution mask.
One warm-up call, then the median of ``--runs`` calls. Prints one JSON object with the figures and
the machine's load average at the start and the end: on a shared machine, only trust a figure
taken while the load average stays below the number of cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from tests.support.data import DATA as DEFAULT_DATA  # noqa: E402  (DCSAM_TEST_DATA, else ../shared/data)


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding davis16-dev/")
    p.add_argument("--video", default="dog")
    p.add_argument("--query-frame", default="00020")
    p.add_argument("--size", default="1920x1080", help="query size WIDTHxHEIGHT")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="lite engine option")
    args = p.parse_args(argv)

    import cv2
    import torch

    from dcsam.api import InContextSegmenter
    from dcsam.io import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = _load()
    davis = Path(args.data) / "davis16-dev"
    ex_image = davis / "JPEGImages" / args.video / "00000.jpg"
    ex_mask = davis / "Annotations" / args.video / "00000.png"
    q_image = davis / "JPEGImages" / args.video / f"{args.query_frame}.jpg"
    for f in (ex_image, ex_mask, q_image):
        if not f.is_file():
            print(f"{f}: not found (give --data)", file=sys.stderr)
            return 2
    width, height = (int(v) for v in args.size.lower().split("x"))
    options = dict(kv.split("=", 1) for kv in args.option)

    seg = InContextSegmenter.from_config(engine="lite", device="cpu", options=options)
    t0 = time.perf_counter()
    seg.add_examples([str(ex_image)], [str(ex_mask)], label="object")  # cached from here on
    encode_s = time.perf_counter() - t0
    query = cv2.resize(read_image(q_image), (width, height), interpolation=cv2.INTER_LINEAR)

    [pred] = seg.predict([query], labels=["object"])  # warm-up
    if pred.error:
        print(f"prediction failed: {pred.error}", file=sys.stderr)
        return 1
    times = []
    for run in range(max(1, args.runs)):
        # a new image each call (one pixel differs): the engine remembers its last query's features
        # for interactive refinement, and a repeated image would time matching and refinement alone
        query = query.copy()
        query[0, 0, 0] = (int(query[0, 0, 0]) + 1 + run) % 256
        t0 = time.perf_counter()
        [pred] = seg.predict([query], labels=["object"])
        times.append(time.perf_counter() - t0)
    mask = pred.masks["object"]
    result = {
        "seconds_per_query": round(statistics.median(times), 4),
        "seconds_min": round(min(times), 4),
        "seconds_max": round(max(times), 4),
        "runs": len(times),
        "image_size": [width, height],
        "mask_size": [int(mask.shape[1]), int(mask.shape[0])],
        "example_encode_seconds": round(encode_s, 4),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "options": options,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
