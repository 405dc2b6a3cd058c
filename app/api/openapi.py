"""What FastAPI cannot infer about the API's OpenAPI document: the multipart upload, errors as
``application/problem+json``, and the limits that only the loaded model knows."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ranlens.app.api.deps import DEFAULT_TOP_K, catalog_limits
from ranlens.app.api.schemas import InferRequest, Problem
from ranlens.app.core.problems import PROBLEM_JSON

IMAGE_TYPES = ["image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"]

# read by hand (app.core.upload streams it with a byte limit), so FastAPI cannot see the body
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "description": "a JPEG, PNG, GIF, WebP, BMP or TIFF image; the server "
                                                       "reads its bytes, whatever type the part declares"}},
            },
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
        }},
    }
}

PROBLEM_TEXT = {
    400: "the upload is not a readable image, or the multipart body is malformed",
    404: "no such resource",
    408: "the request body did not arrive within the server's time limit",
    413: "the upload or the decoded image is over the server's limit",
    415: "not multipart/form-data, or not a supported image type",
    422: "invalid parameters, or the multipart body has no file field or several",
    503: "the model is not loaded, or the server is busy (then with a Retry-After header)",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for routes: each status documented with the Problem schema (moved to
    application/problem+json by ``install_openapi``)."""
    return {code: {"model": Problem, "description": PROBLEM_TEXT[code]} for code in codes}


UPLOAD_PROBLEMS = problems(400, 408, 413, 415, 422, 503)


MODEL_BOUND = ("top_k", "channel")
# a parameter whose limit is not the one of its name, by (path, name)
LIMIT_OF = {("/api/v1/explain", "channel"): "explain_channel", ("/api/v1/explain/channel", "channel"): "explain_channel"}


def _model_choices(schema: dict, names: list[str], default: str) -> None:
    """The ``model`` query parameter takes exactly the served names: the schema lists them."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") == "model":
                    parameter["schema"] = {"type": "string", "enum": names}
                    parameter["description"] += f"; this server's default is {default}"


def _bound_parameters(schema: dict, limits: dict[str, int]) -> None:
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query" or parameter.get("name") not in MODEL_BOUND:
                    continue
                key = LIMIT_OF.get((path, parameter["name"]), parameter["name"])
                old = parameter["schema"]
                # channel is None in Python when absent, but a query string has no null: an integer or nothing
                integer = next(o for o in old.get("anyOf", [old]) if o.get("type") == "integer")
                new = {"type": "integer", "minimum": integer.get("minimum", 0)}
                if key in limits:
                    new["maximum"] = limits[key]
                    limit = f"for the served model, {new['minimum']} to {new['maximum']}"
                    parameter["description"] = "; ".join(filter(None, [parameter.get("description"), limit]))
                if old.get("default") is not None:
                    new["default"] = old["default"]
                elif parameter["name"] == "top_k":  # None in Python: 5, or every class of a smaller model
                    new["default"] = min(DEFAULT_TOP_K, limits.get("top_k", DEFAULT_TOP_K))
                parameter["schema"] = new


def _problems_as_problem_json(schema: dict) -> None:
    """Error answers are problem+json; FastAPI's own 422 documentation (HTTPValidationError) is
    replaced, since app.core.problems answers validation errors as a Problem too."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(status)[0] in "45" and "application/json" in content:
                    content.pop("application/json")
                    content[PROBLEM_JSON] = {"schema": problem}
                    if status == "422":
                        response["description"] = PROBLEM_TEXT[422]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "Problem" not in components:  # no route declared an error, but FastAPI's 422 was there to replace
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}), Problem=problem_schema)


def _add_body_schemas(schema: dict) -> None:
    """Bodies read by hand (the inference request may carry binary tensors after its JSON) are
    documented by reference; their models must be in the components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    infer = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(infer.pop("$defs", {}), InferRequest=infer)


def install_openapi(app: FastAPI) -> None:
    """Serve an OpenAPI document whose top_k and channel maxima are the served models' real limits
    and whose ``model`` parameter lists the served models.

    The document is cached only once the model is loaded, so a schema fetched before then (or when
    loading failed) does not freeze unbounded limits.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             description=app.description, routes=app.routes)
        _problems_as_problem_json(schema)
        _add_body_schemas(schema)
        catalog = getattr(app.state, "catalog", None)
        _bound_parameters(schema, catalog_limits(catalog) if catalog is not None else {})
        if catalog is not None:
            _model_choices(schema, catalog.names(), catalog.default_weights)
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
