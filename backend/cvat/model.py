"""The segmenter a CVAT function runs: the backend's settings and engine choice, with ``-p`` overrides."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from dcsam.api import InContextSegmenter

from ..engine_select import choose_engine, model_version, segmenter_config
from ..settings import BackendSettings

log = logging.getLogger(__name__)

# Function parameters (``-p name=type:value``) that stand for a backend setting.
SETTING_PARAMS = {
    "engine": "DCSAM_ENGINE",
    "sam": "DCSAM_SAM",
    "sam_checkpoint": "DCSAM_SAM_CHECKPOINT",
    "prompt_generator": "DCSAM_PROMPT_GENERATOR",
    "device": "DCSAM_DEVICE",
    "precision": "DCSAM_PRECISION",
    "min_score": "DCSAM_MIN_SCORE",
}


def function_settings(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> BackendSettings:
    """The backend's settings from the environment, overridden by the function's parameters."""
    merged = dict(os.environ if env is None else env)
    merged.update({SETTING_PARAMS[k]: str(v) for k, v in params.items() if k in SETTING_PARAMS and v is not None})
    return BackendSettings.from_env(merged)


def load_segmenter(settings: BackendSettings) -> tuple[InContextSegmenter, str]:
    """The segmenter and its model version (``auto`` never downloads here: lite unless SAM is at hand)."""
    choice = choose_engine(settings)
    log.info("CVAT function: engine %s (%s)", choice.engine, choice.reason)
    segmenter = InContextSegmenter.from_config(segmenter_config(settings, choice))
    return segmenter, model_version(settings, choice)
