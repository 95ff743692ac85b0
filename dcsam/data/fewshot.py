"""PASCAL-5i and COCO-20i with the HSNet / PFENet conventions.

Expected layouts (the README lists them too):
  PASCAL: <root>/VOC2012/JPEGImages/<id>.jpg, <root>/VOC2012/SegmentationClassAug/<id>.png
          (SBD-augmented masks, class ids 1..20, boundary 255), and
          <root>/VOC2012/ImageSets/Segmentation/val.txt (the 1,449 val ids; every other
          SegmentationClassAug image is training data).
  COCO:   <root>/COCO2014/{train2014,val2014}/<name>.jpg and
          <root>/COCO2014/annotations/{train2014,val2014}/<name>.png (per-image class masks,
          ids 1..80).

Per-fold lists are generated once from these folders (reading every mask, with a progress bar)
and cached as JSON beside the data, or under ``list_dir``. A (image, class) pair enters a list
when the class covers at least 2 x 32 x 32 pixels (PFENet's rule). Fold f's test classes:
PASCAL {5f+1 .. 5f+5}; COCO {4k + f + 1 : k = 0..19} (interleaved).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..io import atomic_write_bytes
from .episodic import Record, RecordEpisodes

MIN_PIXELS = 2 * 32 * 32


def fold_test_classes(benchmark: str, fold: int) -> list[int]:
    if benchmark == "pascal5i":
        if fold not in range(4):
            raise ValueError("PASCAL-5i folds are 0..3")
        return list(range(5 * fold + 1, 5 * fold + 6))
    if benchmark == "coco20i":
        if fold not in range(4):
            raise ValueError("COCO-20i folds are 0..3")
        return [4 * k + fold + 1 for k in range(20)]
    raise ValueError(f"unknown benchmark {benchmark!r}")


def all_classes(benchmark: str) -> list[int]:
    return list(range(1, 21 if benchmark == "pascal5i" else 81))


def _image_masks(benchmark: str, root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a split."""
    if benchmark == "pascal5i":
        voc = root / "VOC2012"
        val_ids = set((voc / "ImageSets/Segmentation/val.txt").read_text().split())
        masks = sorted((voc / "SegmentationClassAug").glob("*.png"))
        keep = [m for m in masks if (m.stem in val_ids) == (split == "val")]
        return [(voc / "JPEGImages" / f"{m.stem}.jpg", m) for m in keep]
    coco = root / "COCO2014"
    sub = "train2014" if split == "train" else "val2014"
    return [(coco / sub / f"{m.stem}.jpg", m) for m in sorted((coco / "annotations" / sub).glob("*.png"))]


def class_presence(benchmark: str, root: Path, split: str, cache: Path) -> dict[str, list[int]]:
    """mask path -> classes covering >= MIN_PIXELS pixels; computed once and cached."""
    if cache.exists():
        return json.loads(cache.read_text())
    pairs = _image_masks(benchmark, root, split)
    if not pairs:
        raise ValueError(f"{benchmark} {split}: no masks under {root} (see the expected layout in the README)")
    presence = {}
    for _img, mask in tqdm(pairs, desc=f"indexing {benchmark} {split}", unit="mask"):
        values, counts = np.unique(np.asarray(Image.open(mask)), return_counts=True)
        presence[str(mask)] = [int(v) for v, n in zip(values, counts) if 0 < v < 255 and n >= MIN_PIXELS]
    atomic_write_bytes(cache, json.dumps(presence).encode())
    return presence


def fold_records(
    benchmark: str, root: str | Path, fold: int, split: str, list_dir: str | Path | None = None
) -> list[Record]:
    root = Path(root)
    cache_dir = Path(list_dir) if list_dir else root / "dcsam_lists"
    presence = class_presence(benchmark, root, split, cache_dir / f"{benchmark}_{split}_classes.json")
    held_out = set(fold_test_classes(benchmark, fold))
    wanted = held_out if split == "val" else set(all_classes(benchmark)) - held_out
    image_of = {str(m): str(i) for i, m in _image_masks(benchmark, root, split)}
    return [Record(image_of[m], m, c) for m, classes in sorted(presence.items()) for c in classes if c in wanted]


class FewShotBenchmark(Dataset):
    def __init__(
        self,
        benchmark: str,
        root: str,
        fold: int = 0,
        split: str = "train",
        shots: int = 1,
        image_size: int = 512,
        seed: int = 321,
        list_dir: str | None = None,
    ) -> None:
        records = fold_records(benchmark, root, fold, split, list_dir)
        self.inner = RecordEpisodes(
            records,
            shots=shots,
            image_size=image_size,
            seed=seed,
            name=f"{benchmark}-f{fold}-{split}",
            per_image=split == "train",
        )
        self.classes = (
            fold_test_classes(benchmark, fold)
            if split == "val"
            else sorted(set(all_classes(benchmark)) - set(fold_test_classes(benchmark, fold)))
        )

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return self.inner[index]
