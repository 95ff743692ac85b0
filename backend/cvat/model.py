"""The segmenter a CVAT function runs: the backend's settings and engine choice, with ``-p`` overrides."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from dcsam.api import InContextSegmenter

from ..engine_select import choose_engine, model_version, segmenter_config
from ..settings import BackendSettings

log = logging.getLogger(__name__)

# Function parameters (``-p name=type:value``) that stand for the backend setting of the same name.
SETTING_PARAMS = ("engine", "sam", "sam_checkpoint", "prompt_generator", "device", "precision", "min_score")
_ENV_NAMES = {f.name: f.metadata["env"][0] for f in dataclasses.fields(BackendSettings)}


def function_settings(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> BackendSettings:
    """The backend's settings from the environment, overridden by the function's parameters."""
    merged = dict(os.environ if env is None else env)
    merged.update({_ENV_NAMES[k]: str(v) for k, v in params.items() if k in SETTING_PARAMS and v is not None})
    return BackendSettings.from_env(merged)


def load_segmenter(settings: BackendSettings) -> tuple[InContextSegmenter, str]:
    """The segmenter and its model version (``auto`` never downloads here: lite unless SAM is at hand)."""
    choice = choose_engine(settings)
    log.info("CVAT function: engine %s (%s)", choice.engine, choice.reason)
    segmenter = InContextSegmenter.from_config(segmenter_config(settings, choice))
    return segmenter, model_version(settings, choice)
