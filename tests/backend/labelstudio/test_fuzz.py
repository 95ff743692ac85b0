"""Fuzzing the HTTP routes: no generated request may get a 5xx.

Two parts, each with a fixed budget and derandomized (the same requests on every run):

* schemathesis reads the backend's own /openapi.json (through WSGI: no network) and sends, per operation,
  requests that follow the schema (positive) and requests that break it (negative);
* hypothesis strategies go deeper where the schema alone does not reach: interactive /predict with a
  label config that parses and prompts of every shape, batch /predict of frame-sequence tasks with odd frame
  numbers (the project has an example, so the model runs), webhook events, and raw bodies (bytes, deep nesting).

The app runs the lite engine with a fake Label Studio on 127.0.0.1; every URL a request can name is a data
URL or a path on that fake, so nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.configs import BRUSH_CONFIG, INTERACTIVE_CONFIG, SEQUENCE_CONFIG, VIDEO_CONFIG
from tests.support.fakes import image_bytes
from tests.support.regions import annotated_task, brush_region

SCHEMA_EXAMPLES = 80  # per operation and mode
DEEP_EXAMPLES = 200  # per targeted strategy
MIN_REQUESTS = 2000


def _budget(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def _square(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), bool)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    return img, mask


IMAGE_URL = "data:image/png;base64," + base64.b64encode(image_bytes(_square()[0], "PNG")).decode()

# values that broke the backend before (issue 21) and their relatives, beside ordinary ones
ODD_NUMBERS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-(10**30), 10**30),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "50", "", "²", "12.5"]),
    st.sampled_from([1e300, -1e9, 0, 100, 100.0001, True, None]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ODD_IDS = st.one_of(
    st.integers(-(2**64), 2**64),
    st.sampled_from(["²", "١٢", "12.1719999999", str(10**30), "0", "-1", "1.", " 7 ", "7x", True]),
    st.text(max_size=8),
    st.none(),
    st.fixed_dictionaries({"id": st.integers(-5, 2**64)}),
)
LABELS = st.one_of(st.lists(st.sampled_from(["cat", "car", "x"]), max_size=2), st.integers(), st.text(max_size=4))
REGION_TYPES = st.one_of(
    st.sampled_from(["keypointlabels", "KeyPointLabels", "keypoint", "rectanglelabels", "rectangle", "brushlabels"]),
    st.text(max_size=6),
    st.integers(),
)


@st.composite
def context_regions(draw) -> dict:
    kind = draw(REGION_TYPES)
    keys = ("x", "y", "width", "height", "keypointlabels", "rectanglelabels", "labels", "keypoint")
    value = {key: draw(LABELS if "label" in key or key == "keypoint" else ODD_NUMBERS) for key in keys}
    value = {k: v for k, v in value.items() if draw(st.booleans())}
    region = {
        "type": kind,
        "from_name": draw(st.sampled_from(["kp", "box", "tag", "nope"])),
        "to_name": draw(st.one_of(st.sampled_from(["image", "video", "elsewhere"]), st.integers())),
        "value": draw(st.one_of(st.just(value), ODD_NUMBERS)),
        "is_positive": draw(st.one_of(st.booleans(), st.none(), st.sampled_from(["false", 0, 1]))),
        "original_width": 48,
        "original_height": 48,
    }
    return {k: v for k, v in region.items() if draw(st.integers(0, 9)) > 0}


def _json_bytes(value) -> bytes:
    # non-finite floats are not JSON; the strategies spell them as strings, so this never loses one
    return json.dumps(value, allow_nan=False).encode()


@pytest.fixture()
def fuzz_harness(harness_factory, fake_ls):
    img, mask = _square()
    fake_ls.files["/data/upload/1/a.png"] = image_bytes(img, "PNG")
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/a.png", [brush_region(mask, "car")]))
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    statuses: Counter = Counter()  # (where, status): requests
    failures: list[str] = []

    def record(where: str, status: int, sent, answer: str) -> None:
        statuses[where, status] += 1
        if status >= 500:
            failures.append(f"{where} -> {status}: {str(sent)[:300]} :: {answer[:300]}")

    return h, statuses, failures, record


def _sweep_operation(operation, mode: GenerationMode, record) -> None:
    label = f"{operation.label} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @_budget(SCHEMA_EXAMPLES)
    def run(case):
        response = case.call()
        record(label, response.status_code, case.as_curl_command(), response.text)

    run()


def _schemathesis_sweep(h, record) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", h.app)
    for found in schema.get_all_operations():
        operation = found.ok()
        has_inputs = bool(list(operation.iter_parameters()) or operation.get_request_payload_content_types())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):
            _sweep_operation(operation, mode, record)


def _post(h, record, where: str, raw: bytes) -> None:
    r = h.client.post(where, data=raw, content_type="application/json")
    record(f"POST {where}", r.status_code, raw[:300], r.get_data(as_text=True))


def _deep_sweeps(h, record) -> None:
    @given(
        regions=st.one_of(st.lists(context_regions(), max_size=4), ODD_NUMBERS),
        config=st.sampled_from([INTERACTIVE_CONFIG, VIDEO_CONFIG, BRUSH_CONFIG]),
        image=st.sampled_from([IMAGE_URL, "/data/upload/1/a.png", "/data/upload/1/missing.png", 5]),
        project=st.one_of(st.just("1.1719999999"), ODD_IDS),
    )
    @_budget(DEEP_EXAMPLES)
    def interactive(regions, config, image, project):
        task = {"id": 3, "data": {"image": image, "video": "/data/upload/1/v.mp4"}, "project": 1}
        body = {"tasks": [task], "project": project, "label_config": config, "params": {"context": {"result": regions}}}
        _post(h, record, "/predict", _json_bytes(body))

    @given(
        frames=st.lists(st.tuples(st.sampled_from(["v1", "v2", 7, None, ""]), ODD_NUMBERS), min_size=1, max_size=3),
    )
    @_budget(DEEP_EXAMPLES // 3)
    def frames(frames):
        tasks = [
            {"id": 10 + i, "project": 1, "data": {"image": "/data/upload/1/a.png", "video": video, "frame": frame}}
            for i, (video, frame) in enumerate(frames)
        ]
        _post(h, record, "/predict", _json_bytes({"tasks": tasks, "project": 1, "label_config": SEQUENCE_CONFIG}))

    @given(
        action=st.one_of(
            st.sampled_from(["ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "PROJECT_UPDATED", "START_TRAINING"]),
            st.text(max_size=10),
        ),
        project=st.one_of(ODD_IDS, st.fixed_dictionaries({"id": ODD_IDS, "label_config": ODD_NUMBERS})),
        annotation=st.one_of(st.none(), ODD_NUMBERS, st.fixed_dictionaries({"was_cancelled": ODD_NUMBERS})),
    )
    @_budget(DEEP_EXAMPLES)
    def webhook(action, project, annotation):
        _post(h, record, "/webhook", _json_bytes({"action": action, "project": project, "annotation": annotation}))

    @given(
        where=st.sampled_from(["/setup", "/predict", "/webhook", "/jobs/preannotate", "/jobs/train"]),
        raw=st.one_of(
            st.binary(max_size=64),
            st.integers(1, 3000).map(lambda n: b'{"tasks": ' + b"[" * n + b"]" * n + b"}"),
            st.integers(1, 3000).map(lambda n: b'{"project": ' * n + b"1" + b"}" * n),
            st.text(max_size=40).map(str.encode),
        ),
    )
    @_budget(DEEP_EXAMPLES)
    def raw_bodies(where, raw):
        _post(h, record, where, raw)

    for sweep in (interactive, frames, webhook, raw_bodies):
        sweep()


def test_fuzzed_requests_never_get_a_5xx(fuzz_harness):
    h, statuses, failures, record = fuzz_harness
    _schemathesis_sweep(h, record)
    _deep_sweeps(h, record)
    by_status = Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(f"fuzz: {sum(by_status.values())} requests, {dict(sorted(by_status.items()))}")
    print("\n".join(f"  {where}: {status} x{n}" for (where, status), n in sorted(statuses.items())))
    assert not failures, "\n".join(failures[:10])
    assert sum(by_status.values()) >= MIN_REQUESTS, by_status
    # the generators reach past validation: predictions are made (interactive ones too) and bad input refused
    assert statuses["POST /predict", 200] > 50 and by_status[400] > 500
