"""The request schemas of the HTTP routes, and the OpenAPI 3.1 document generated from them.

One pydantic model per request body or query. Every field the routes read is typed and bounded (sizes,
nesting depth, numeric ranges); keys Label Studio adds and this backend does not use pass unchecked, as
Label Studio 1.23 sends many (``"12.1719999999"`` is project 12; ``params`` may be missing). A request
that fails them raises :class:`RequestError`, which the app answers with a 400 and a short message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from .annotations import MAX_ID, parse_project_id

MAX_BODY_DEPTH = 64  # Label Studio's deepest bodies (interactive tasks with polygon annotations) nest ~10 levels
MAX_TASKS = 10_000  # "Retrieve Predictions" sends every selected task in one /predict
MAX_REGIONS = 10_000  # regions in an interactive context
MAX_CONFIG_CHARS = 2_000_000  # a label config (XML)
MAX_TEXT = 4096  # hostnames, tokens, names, labels
MAX_NAME = 256  # actions, job kinds, version names, task ids given as text
PROMPT_TYPES = ("keypointlabels", "keypoint", "rectanglelabels", "rectangle")

M = TypeVar("M", bound=BaseModel)


class RequestError(ValueError):
    """An invalid request: answered 400 with this message."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _project_id(value: Any) -> int | None:
    if value is None:
        return None
    parsed = parse_project_id(value)
    if parsed is None:
        raise ValueError(f'must be a project id from 1 to 2**63-1 (or "<id>.<timestamp>"), got {_short(value)}')
    return parsed


ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
ProjectId = Annotated[
    int | None,
    BeforeValidator(_project_id),
    WithJsonSchema({"anyOf": [ID_SCHEMA, {"type": "string", "pattern": r"^[1-9][0-9]{0,17}(\.[0-9]*)?$"}]}),
]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
ConfigXml = Annotated[str, StringConstraints(max_length=MAX_CONFIG_CHARS)]
Percent = Annotated[float, Field(allow_inf_nan=False, ge=0, le=100)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Labels = Annotated[list[Text], Field(max_length=MAX_REGIONS)]


class Lenient(BaseModel):
    """Unknown keys are ignored (Label Studio sends whole serialized objects)."""

    model_config = ConfigDict(extra="ignore")


# -- /setup --------------------------------------------------------------------------------------------------
class SetupBody(Lenient):
    project: ProjectId = None
    schema_: ConfigXml | None = Field(None, alias="schema")
    label_config: ConfigXml | None = None
    hostname: Text | None = None
    access_token: Text | None = None
    extra_params: Any = None


# -- /predict ------------------------------------------------------------------------------------------------
class Task(Lenient):
    id: Annotated[int, Field(ge=0, le=MAX_ID)] | Name | None = None
    data: dict[Name, Any] | None = None
    project: ProjectId = None


class RegionValue(Lenient):
    x: Finite | None = None
    y: Finite | None = None
    width: Finite | None = None
    height: Finite | None = None
    # where a prompt's label may be: under its type's name (any of PROMPT_TYPES), else "labels"
    keypointlabels: Labels | None = None
    keypoint: Labels | None = None
    rectanglelabels: Labels | None = None
    rectangle: Labels | None = None
    labels: Labels | None = None


class ContextRegion(Lenient):
    """A region of an interactive context; keypoints and rectangles (the prompts) must lie on the image."""

    type: Name | None = None
    from_name: Name | None = None
    to_name: Name | None = None
    value: RegionValue | None = None
    is_positive: StrictBool | None = None

    @model_validator(mode="after")
    def _prompt_on_the_image(self) -> ContextRegion:
        if str(self.type or "").lower() not in PROMPT_TYPES or self.value is None:
            return self
        for key in ("x", "y", "width", "height"):
            number = getattr(self.value, key)
            if number is not None and not 0 <= number <= 100:
                raise ValueError(f"a {self.type} prompt's {key} must be a percent of the image (0 to 100)")
        return self


class Context(Lenient):
    result: Annotated[list[ContextRegion], Field(max_length=MAX_REGIONS)] | None = None


class Params(Lenient):
    context: Context | None = None


class PredictBody(Lenient):
    tasks: Annotated[list[Task], Field(max_length=MAX_TASKS)]
    project: ProjectId = None
    label_config: ConfigXml | None = None
    params: Params | None = None


# -- /webhook ------------------------------------------------------------------------------------------------
class WebhookProject(Lenient):
    id: ProjectId = None
    label_config: ConfigXml | None = None


class WebhookObject(Lenient):
    """An annotation or a task of a webhook event."""

    project: ProjectId = None
    was_cancelled: StrictBool | None = None


def _as_project_object(value: Any) -> Any:
    return value if value is None or isinstance(value, dict) else {"id": value}


class WebhookBody(Lenient):
    action: Name | None = None
    project: Annotated[WebhookProject | None, BeforeValidator(_as_project_object)] = None
    annotation: WebhookObject | None = None
    task: WebhookObject | None = None

    def project_id(self) -> int | None:
        """The event's project: ``project`` (an object or an id), else the annotation's or the task's."""
        for found in (self.project and self.project.id, self.annotation and self.annotation.project):
            if found is not None:
                return found
        return self.task.project if self.task is not None else None


# -- versions and jobs ---------------------------------------------------------------------------------------
class ProjectBody(Lenient):
    """A body (or query) that may name a project."""

    project: ProjectId = None


class PreannotateBody(ProjectBody):
    page_size: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    # Ray: true / "auto", "local" or the configured address (checked by backend.services.preannotate.ray_address)
    ray: StrictBool | Annotated[str, Field(min_length=1, max_length=300)] | None = None


class JobsQuery(ProjectBody):
    status: Literal["queued", "running", "done", "failed", "cancelled", "interrupted", "skipped"] | None = None
    kind: Name | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class StatusQuery(Lenient):
    """``GET /status`` (and ``/status.json``): how many recent jobs; the page's auto-refresh (0: none)."""

    jobs: Annotated[int, Field(ge=1, le=500)] = 30
    refresh: Annotated[int, Field(ge=0, le=3600)] = 10


# -- parsing -------------------------------------------------------------------------------------------------
def _depth_within(value: Any, limit: int) -> bool:
    """True when ``value`` nests at most ``limit`` lists / objects deep (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object, nested at most ``MAX_BODY_DEPTH`` deep; RequestError otherwise."""
    if not raw:
        raise RequestError("empty body: a JSON object is expected")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise RequestError(f"the JSON body nests deeper than {MAX_BODY_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON body: {_short(str(exc))}") from None
    if not isinstance(body, dict):
        raise RequestError(f"a JSON object is expected, got {type(body).__name__}")
    if not _depth_within(body, MAX_BODY_DEPTH):
        raise RequestError(f"the JSON body nests deeper than {MAX_BODY_DEPTH} levels")
    return body


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``; RequestError with the first few problems (field: message) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False)[:3]:
            where = ".".join(str(part) for part in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise RequestError("; ".join(problems)) from None


def parse_id(text: str, what: str) -> int:
    """A positive 64-bit id from a URL path segment."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) <= MAX_ID):
        raise RequestError(f"{what} must be an integer from 1 to 2**63-1, got {_short(text)}")
    return int(text)


def parse_version_name(text: str) -> str:
    if not text or len(text) > MAX_NAME:
        raise RequestError(f"a version name has 1 to {MAX_NAME} characters")
    return text


# -- OpenAPI -------------------------------------------------------------------------------------------------
BODIES = {
    "/setup": SetupBody,
    "/predict": PredictBody,
    "/webhook": WebhookBody,
    "/jobs/preannotate": PreannotateBody,
    "/jobs/train": ProjectBody,
    "/versions/{version}/activate": ProjectBody,
}
QUERIES = {"/versions": ProjectBody, "/jobs": JobsQuery, "/status": StatusQuery, "/status.json": StatusQuery}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": ID_SCHEMA}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "maxLength": MAX_NAME}}
OPERATIONS: dict[str, dict[str, list[dict]]] = {
    "/": {"get": []},
    "/health": {"get": []},
    "/setup": {"post": []},
    "/predict": {"post": []},
    "/webhook": {
        "post": [
            {"name": "X-Webhook-Secret", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}},
        ]
    },
    "/versions": {"get": []},
    "/versions/{version}/activate": {"post": [VERSION]},
    "/jobs": {"get": []},
    "/jobs/{job_id}": {"get": [JOB_ID]},
    "/jobs/{job_id}/cancel": {"post": [JOB_ID]},
    "/jobs/preannotate": {"post": []},
    "/jobs/train": {"post": []},
    "/metrics": {"get": []},
    "/openapi.json": {"get": []},
    "/status": {"get": []},
    "/status.json": {"get": []},
}
RESPONSES = {
    "200": {"description": "done (JSON; /metrics: Prometheus text)"},
    "400": {"description": "invalid request: {status, detail}"},
    "401": {"description": "basic auth (or, on /webhook, the webhook secret) missing or wrong"},
    "404": {"description": "no such job"},
    "409": {"description": "the job is already finished"},
    "422": {"description": "START_TRAINING refused at once (too few annotations): {status, detail, job}"},
    "500": {"description": "internal error: {status, detail, error_id}; the traceback is in the log"},
}


def _query_parameters(model: type[BaseModel], defs: dict) -> list[dict]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.get("$defs", {}))
    return [
        {"name": name, "in": "query", "required": False, "schema": prop} for name, prop in schema["properties"].items()
    ]


def openapi_document(version: str) -> dict:
    """The OpenAPI 3.1 description of the routes (served at /openapi.json; the fuzz suite's input)."""
    models = sorted({*BODIES.values(), *QUERIES.values()}, key=lambda m: m.__name__)
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    components = dict(top.get("$defs", {}))
    paths: dict[str, dict] = {}
    for path, methods in OPERATIONS.items():
        for method, parameters in methods.items():
            operation: dict[str, Any] = {"parameters": list(parameters), "responses": RESPONSES}
            if path in QUERIES:
                operation["parameters"] += _query_parameters(QUERIES[path], components)
            if path in BODIES:
                operation["requestBody"] = {
                    "required": path != "/versions/{version}/activate",
                    "content": {"application/json": {"schema": refs[(BODIES[path], "validation")]}},
                }
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "dcsam Label Studio ML backend", "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
        "security": [{}, {"basic": []}],
    }
