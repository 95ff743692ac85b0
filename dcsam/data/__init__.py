"""Episodic datasets by name: synthetic, folder, pascal5i, coco20i."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset


def build_dataset(spec: Mapping[str, Any], split: str) -> Dataset:
    """``spec``: {"name": ..., plus that dataset's options}; ``split``: "train" or "val"."""
    opts = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name")
    if name == "synthetic":
        from .synthetic import SyntheticEpisodes

        # Validation episodes use another seed: held-out images of the same classes.
        seed = opts.pop("seed", 0) + (0 if split == "train" else 1_000_003)
        if split != "train":
            opts["length"] = opts.pop("val_length", 200)
        else:
            opts.pop("val_length", None)
        return SyntheticEpisodes(seed=seed, **opts)
    if name == "folder":
        from .folder import FolderEpisodes

        return FolderEpisodes(split=split, **opts)
    if name in ("pascal5i", "coco20i"):
        from .fewshot import FewShotBenchmark

        return FewShotBenchmark(benchmark=name, split=split, **opts)
    raise ValueError(f"unknown dataset {name!r}; choose synthetic, folder, pascal5i or coco20i")
