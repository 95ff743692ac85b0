"""CVAT's serverless (Nuclio) detector: the handler behind ``serverless/dcsam/nuclio/main.py``.

CVAT's "Automatic annotation" sends ``{"image": <base64 frame>, "threshold": 0.5, ...}`` for each frame and
expects a list of ``{"confidence", "label", "type": "mask", "points": <polygon>, "mask": <bitmap + box>}``;
its server turns ``mask`` into its RLE, or keeps ``points`` when the user asked for polygons.

Examples come from the environment: ``DCSAM_CVAT_EXAMPLES`` (a mounted folder, see
:mod:`backend.cvat.examples`) and/or ``DCSAM_CVAT_EXAMPLE_TASK`` + ``DCSAM_CVAT_EXAMPLE_FRAMES`` (with
``CVAT_HOST`` and credentials, as :func:`backend.cvat.examples.cvat_client` reads them). Engine and device:
the backend's ``DCSAM_*`` settings.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from dcsam.errors import InputError

from .func import InContextDetector, load_examples
from .shapes import nuclio_mask, polygons

ENV_PARAMS = {
    "examples": "DCSAM_CVAT_EXAMPLES",
    "example_task": "DCSAM_CVAT_EXAMPLE_TASK",
    "example_frames": "DCSAM_CVAT_EXAMPLE_FRAMES",
}


def detector_from_env(env: Mapping[str, str] | None = None) -> InContextDetector:
    """The detector the function serves, its examples encoded once (at ``init_context``)."""
    env = os.environ if env is None else env
    params: dict[str, Any] = {key: env[var] for key, var in ENV_PARAMS.items() if env.get(var)}
    if "example_task" in params:
        params["example_task"] = int(params["example_task"])
    return InContextDetector(load_examples(params), params)


def annotations(detector: InContextDetector, body: Mapping[str, Any]) -> list[dict]:
    """CVAT's detector answer for one request body (InputError when the frame cannot be used)."""
    try:
        image = base64.b64decode(body["image"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise InputError("the request has no base64 'image'") from exc
    threshold = body.get("threshold")
    out = []
    for _, label, mask, score in detector.segment(image):
        if not detector.keep(score, None if threshold is None else float(threshold)):
            continue
        parts = polygons(mask)  # CVAT's "points" is one polygon: the largest part
        out.append(
            {
                "confidence": f"{score:.4f}",
                "label": label,
                "type": "mask",
                "points": parts[0] if parts else [],
                "mask": nuclio_mask(mask),
            }
        )
    return out


def init_context(context: Any) -> None:
    context.user_data.detector = detector_from_env()
    context.logger.info(f"dcsam detector ready: {context.user_data.detector.version}")


def handler(context: Any, event: Any) -> Any:
    """One frame: 200 with the annotations, or 400 naming what was wrong with the request."""
    body = event.body
    try:
        if isinstance(body, (bytes, bytearray, str)):
            body = json.loads(body)
        if not isinstance(body, Mapping):
            raise InputError("the request body is not a JSON object")
        result: Any = annotations(context.user_data.detector, body)
        status = 200
    except (InputError, json.JSONDecodeError) as exc:
        context.logger.error(f"dcsam detector: {exc}")
        result, status = {"error": str(exc)}, 400
    return context.Response(body=json.dumps(result), headers={}, content_type="application/json", status_code=status)
