"""A folder dataset for users' own data: ``<root>/<class>/images/*`` with ``<root>/<class>/masks/*``
(masks matched to images by file stem; dcsam's mask convention). Classes are split into
train / val images deterministically: every ``val_every``-th image of each class goes to val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..io import read_mask
from .episodic import Record, RecordEpisodes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def folder_records(root: str | Path) -> dict[str, list[tuple[Path, Path]]]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder dataset root {root} does not exist")
    out = {}
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        masks = {m.stem: m for m in (cls / "masks").glob("*") if m.suffix.lower() in IMAGE_SUFFIXES}
        pairs = [
            (i, masks[i.stem])
            for i in sorted((cls / "images").glob("*"))
            if i.suffix.lower() in IMAGE_SUFFIXES and i.stem in masks
        ]
        if pairs:
            out[cls.name] = pairs
    if not out:
        raise ValueError(f"{root}: no <class>/images + <class>/masks pairs found")
    return out


def _binary_mask(path: str, _class_id: int) -> np.ndarray:
    return read_mask(path).astype(np.uint8)


class FolderEpisodes(Dataset):
    def __init__(
        self,
        root: str,
        split: str = "train",
        shots: int = 1,
        image_size: int = 512,
        seed: int = 321,
        val_every: int = 5,
    ) -> None:
        groups = folder_records(root)
        self.class_names = list(groups)
        records = []
        for cid, pairs in enumerate(groups.values(), start=1):
            for k, (img, msk) in enumerate(pairs):
                if (k % val_every == val_every - 1) == (split != "train"):
                    records.append(Record(str(img), str(msk), cid))
        self.inner = RecordEpisodes(
            records, shots=shots, image_size=image_size, seed=seed, mask_reader=_binary_mask, name=f"folder-{split}"
        )

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return self.inner[index]
