"""Engines by name: ``lite`` (no SAM, bundled weights) and ``dcsam`` (DC-SAM on SAM / SAM 2)."""

from __future__ import annotations

import importlib

from ..config import SegmenterConfig
from .base import Engine

# name -> "module:factory"; imported on demand so `import dcsam` stays light.
ENGINES: dict[str, str] = {
    "lite": "dcsam.engines.lite:LiteEngine",
    "dcsam": "dcsam.engines.dcsam_engine:DCSAMEngine",
}


def create_engine(config: SegmenterConfig) -> Engine:
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; choose one of {sorted(ENGINES)}")
    module, _, factory = ENGINES[config.engine].partition(":")
    return getattr(importlib.import_module(module), factory)(config)
