#!/usr/bin/env python3
"""Write evaluation episode files for the fixtures in ``../shared/data``.

    python scripts/make_episodes.py [DATA_ROOT] [--out episodes/]

Writes, for each fixture folder found under DATA_ROOT:

* ``perseg-mini.json``: per object, support ``<obj>_00``, queries ``<obj>_01``, ``<obj>_02``;
* ``fss-mini.json``: per class, support ``1``, queries ``2`` .. ``10``;
* ``davis16-dev.json``: per video, support frame 0, queries every 5th frame from frame 5 on.

Paths inside the files are relative to the output file, so the folder can be moved together
with the data. Read them with ``dcsam.episode_evaluation.load_episodes``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from tests.support.data import DATA as DEFAULT_DATA  # noqa: E402  (DCSAM_TEST_DATA, else ../shared/data)

DEFAULT_OUT = REPO_ROOT / "episodes"


def _item(image: Path, mask: Path, out_dir: Path) -> dict[str, str]:
    for p in (image, mask):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing")
    return {
        "image": Path(os.path.relpath(image.resolve(), out_dir.resolve())).as_posix(),
        "mask": Path(os.path.relpath(mask.resolve(), out_dir.resolve())).as_posix(),
    }


def perseg_episodes(root: Path, out_dir: Path) -> list[dict]:
    objects = sorted({m.group(1) for p in root.glob("*_00.jpg") if (m := re.match(r"(.+)_00$", p.stem))})
    episodes = []
    for obj in objects:
        episodes.append(
            {
                "label": obj,
                "support": [_item(root / f"{obj}_00.jpg", root / f"{obj}_00.png", out_dir)],
                "query": [_item(root / f"{obj}_{i:02d}.jpg", root / f"{obj}_{i:02d}.png", out_dir) for i in (1, 2)],
            }
        )
    return episodes


def fss_episodes(root: Path, out_dir: Path) -> list[dict]:
    episodes = []
    for cls_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        cls = cls_dir.name

        def item(i: int, cls_dir: Path = cls_dir, cls: str = cls) -> dict:
            return _item(cls_dir / f"{i}.jpg", root / "masks" / cls / f"{i}.png", out_dir)

        episodes.append({"label": cls, "support": [item(1)], "query": [item(i) for i in range(2, 11)]})
    return episodes


def davis_episodes(root: Path, out_dir: Path, every: int = 5) -> list[dict]:
    episodes = []
    for seq_dir in sorted(p for p in (root / "JPEGImages").iterdir() if p.is_dir()):
        seq = seq_dir.name
        frames = sorted(int(p.stem) for p in seq_dir.glob("*.jpg"))

        def item(f: int, seq_dir: Path = seq_dir, seq: str = seq) -> dict:
            return _item(seq_dir / f"{f:05d}.jpg", root / "Annotations" / seq / f"{f:05d}.png", out_dir)

        episodes.append(
            {
                "label": seq,
                "support": [item(frames[0])],
                "query": [item(f) for f in frames if f >= frames[0] + every and (f - frames[0]) % every == 0],
            }
        )
    return episodes


BUILDERS = {"perseg-mini": perseg_episodes, "fss-mini": fss_episodes, "davis16-dev": davis_episodes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_root", nargs="?", default=str(DEFAULT_DATA), help="fixture folder (default: ../shared/data)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: episodes/)")
    args = ap.parse_args(argv)
    data_root, out_dir = Path(args.data_root), Path(args.out)
    if not data_root.is_dir():
        print(f"error: data root {data_root} is not a folder", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, build in BUILDERS.items():
        folder = data_root / name
        if not folder.is_dir():
            print(f"skip {name}: {folder} not found", file=sys.stderr)
            continue
        episodes = build(folder, out_dir)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(episodes, indent=1) + "\n")
        n_q = sum(len(e["query"]) for e in episodes)
        print(f"{path}: {len(episodes)} episodes, {n_q} queries")
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
