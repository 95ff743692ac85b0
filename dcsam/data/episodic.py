"""Episodes drawn from a list of (image, mask, class) records: the engine behind the folder
dataset and the PASCAL-5i / COCO-20i benchmarks.

Item i takes record i as the query (or, with ``per_image``, image i with one of its classes
drawn uniformly: PFENet's training episodes); its supports are K other images of the same class.
Draws come from a generator seeded by (seed, index), so an index always gives the same episode.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..io import read_image
from .base import IGNORE, make_item


@dataclass(frozen=True)
class Record:
    image: str
    mask: str
    class_id: int  # the benchmark's class id (1-based for PASCAL / COCO)


def class_index_mask(path: str, class_id: int) -> np.ndarray:
    """A semantic label PNG -> 1 for ``class_id``, 255 for the boundary label, 0 elsewhere."""
    raw = np.asarray(Image.open(path))
    out = np.zeros(raw.shape[:2], np.uint8)
    out[raw == class_id] = 1
    out[raw == IGNORE] = IGNORE
    return out


class RecordEpisodes(Dataset):
    def __init__(
        self,
        records: list[Record],
        *,
        shots: int = 1,
        image_size: int = 512,
        seed: int = 321,
        mask_reader: Callable[[str, int], np.ndarray] = class_index_mask,
        name: str = "episodes",
        per_image: bool = False,
    ) -> None:
        if not records:
            raise ValueError(f"{name}: no records (check the dataset root and layout)")
        self.records, self.shots, self.size, self.seed = records, shots, image_size, seed
        self.read_mask, self.name = mask_reader, name
        self.by_class: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            self.by_class[r.class_id].append(i)
        self.images: list[list[int]] = []  # per image: its records (one per class)
        if per_image:
            by_image: dict[str, list[int]] = defaultdict(list)
            for i, r in enumerate(records):
                by_image[r.image].append(i)
            self.images = list(by_image.values())
        lonely = [c for c, idx in self.by_class.items() if len(idx) < 2]
        if lonely:
            raise ValueError(f"{name}: classes {lonely} have a single image; an episode needs a different support")

    def __len__(self) -> int:
        return len(self.images) if self.images else len(self.records)

    @property
    def classes(self) -> list[int]:
        return sorted(self.by_class)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        if self.images:
            choices = self.images[index]
            query = self.records[choices[int(rng.integers(len(choices)))]]
        else:
            query = self.records[index]
        pool = [i for i in self.by_class[query.class_id] if self.records[i].image != query.image]
        picks = rng.choice(len(pool), size=self.shots, replace=len(pool) < self.shots)
        supports = [self.records[pool[int(p)]] for p in picks]
        load = lambda r: (read_image(r.image), self.read_mask(r.mask, r.class_id))  # noqa: E731
        q_img, q_mask = load(query)
        key = f"{self.name}/{Path(query.image).stem}/{query.class_id}/" + ",".join(Path(s.image).stem for s in supports)
        return make_item(q_img, q_mask, [load(s) for s in supports], query.class_id, key, self.size)
