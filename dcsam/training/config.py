"""Training configuration: one dataclass, loadable from JSON/YAML files or a named preset."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=dict)  # SegmenterConfig settings (engine "dcsam")
    dataset: dict[str, Any] = field(default_factory=lambda: {"name": "synthetic"})
    val_dataset: dict[str, Any] | None = None  # default: `dataset` with split "val"
    epochs: int = 50
    iters_per_epoch: int | None = None  # None: one pass over the training set
    batch_size: int = 2  # episodes per process (global batch = batch_size x processes)
    lr: float = 1e-4
    weight_decay: float = 1e-6
    seed: int = 321
    num_workers: int = 4
    out_dir: str = "runs/dcsam"
    train_sam_decoder: bool = False  # also train SAM's mask decoder (minus IoU / object-score heads)
    cache_features: bool = False  # cache frozen features per image key (no augmentation only)
    val_episodes: int = 1000
    val_seed: int = 321
    val_every: int = 1  # epochs
    save_every: int = 0  # steps between resumable checkpoints (0: end of each epoch only)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key=value`` or ``section.key=value`` strings (values parsed as JSON when possible)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {item!r}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            node[leaf] = value
        return TrainConfig.from_dict(data)
