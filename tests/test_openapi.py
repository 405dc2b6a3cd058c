"""The REST API's contract: the OpenAPI document says what every route answers, with the served
model's real limits, and Schemathesis finds nothing against a live server."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app

from . import corpus
from .live import ROOT, live_server

PROBLEM = "application/problem+json"
# the page's scripts (static/js/api-docs.js starts the API docs, not the page)
PAGE_JS = "\n".join(p.read_text() for p in sorted((ROOT / "static" / "js").glob("*.js")) if p.name != "api-docs.js")

BINARY = {("/v2/models/{name}/infer", "post"), ("/v2/models/{name}/versions/{version}/infer", "post")}
ROUTES = {
    ("/healthz", "get"): set(),
    ("/readyz", "get"): {503},
    ("/api/v1/models", "get"): {503},
    ("/api/v1/models/{name}", "get"): {404, 503, 422},
    ("/api/v1/models/{name}/architecture", "get"): {404, 503, 422},
    ("/api/v1/architectures/{arch}", "get"): {404, 422},
    ("/api/v1/colormaps", "get"): set(),
    ("/api/v1/predict", "post"): {400, 408, 413, 415, 422, 503},
    ("/api/v1/explain", "post"): {400, 408, 413, 415, 422, 503},
    ("/api/v1/explain/channel", "post"): {400, 408, 413, 415, 422, 503},
    ("/api/v1/ablate", "post"): {400, 408, 413, 415, 422, 503},
    ("/v2", "get"): set(),
    ("/v2/health/live", "get"): set(),
    ("/v2/health/ready", "get"): {503},
    ("/v2/models/{name}", "get"): {404, 503, 422},
    ("/v2/models/{name}/ready", "get"): {404, 503, 422},
    ("/v2/models/{name}/infer", "post"): {400, 404, 408, 413, 415, 422, 503},
    ("/v2/models/{name}/versions/{version}", "get"): {404, 503, 422},
    ("/v2/models/{name}/versions/{version}/ready", "get"): {404, 503, 422},
    ("/v2/models/{name}/versions/{version}/infer", "post"): {400, 404, 408, 413, 415, 422, 503},
}

# What the page's scripts (static/js) read from each answer: "a[]" is every item of list a. The page breaks if one
# of these goes missing, so each must be a required property in the documented schema.
PAGE_READS = {
    ("/api/v1/explain", "post"): [
        "predictions[].label", "predictions[].probability", "timing_ms.total", "timing_ms.inference",
        "images.display", "images.uploaded", "images.model_input", "image.width", "image.height",
        *(f"attention[].{k}" for k in ("module", "stage", "shape", "channels", "reductions.mean", "reductions.max",
                                       "reductions.added", "varied.index", "varied.data", "varied.lo", "varied.hi",
                                       "histogram.counts", "histogram.mean", "histogram.sd",
                                       "trunk_before.data", "trunk_after.data")),
    ],
    ("/api/v1/explain/channel", "post"): ["attention[].module"],
    ("/api/v1/ablate", "post"): [
        "normal.top[].index", "normal.top[].label", "normal.probabilities", "all_off.top[].index",
        "all_off.probabilities", "per_module[].module", "per_module[].top[].index", "per_module[].probabilities",
    ],
    ("/api/v1/models/{name}/architecture", "get"): [
        "name", "input", "stem.kind", "stem.output", "head.units", "head.output",
        "classifier.in_features", "classifier.classes",
        *(f"stages[].{k}" for k in ("stage", "transition_stride", "channels", "resolution")),
        *(f"stages[].modules[].{k}" for k in ("name", "resolution", "trunk_units", "mask_levels", "mask_depth")),
    ],
}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings())) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client) -> dict:
    return client.get("/openapi.json").json()


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def required_path(spec: dict, schema: dict, path: str) -> dict:
    """The schema at ``path``, failing unless every step is a required, declared property."""
    for step in path.split("."):
        each = step.endswith("[]")
        name = step.removesuffix("[]")
        schema = resolve(spec, schema)
        assert name in schema.get("properties", {}), f"{path}: {name!r} is not documented"
        assert name in schema.get("required", []), f"{path}: {name!r} is documented as optional"
        schema = resolve(spec, schema["properties"][name])
        if each:
            assert schema.get("type") == "array", f"{path}: {name!r} is not documented as a list"
            schema = schema["items"]
    return schema


def test_every_route_is_documented_with_a_response_model_and_its_errors(spec):
    operations = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert set(operations) == set(ROUTES)
    for key, op in operations.items():
        ok = op["responses"]["200"]["content"]
        # v2 infer answers outputs asked for in binary after a JSON header (the binary tensor extension)
        assert list(ok) == ["application/json", *(["application/octet-stream"] if key in BINARY else [])], key
        assert "$ref" in ok["application/json"]["schema"], f"{key} has no response model"
        errors = {int(s) for s in op["responses"] if s != "200"}
        assert errors == ROUTES[key], key
        for status in errors:
            content = op["responses"][str(status)]["content"]
            assert list(content) == [PROBLEM], (key, status)
            problem = resolve(spec, content[PROBLEM]["schema"])
            assert {"type", "title", "status", "detail", "instance"} <= set(problem["required"])


def page_reads_field(field: str, js: str = PAGE_JS) -> bool:
    """Whether the page's scripts still read ``field``: its last key appears in them (read as
    ``x.key``, destructured, or taken from ``Object.entries``), and so does the key that holds it, as a
    property read (``x.parent`` or ``x?.parent``). A parent the page no longer reads takes its fields
    with it, however common their names ("data", "lo", "hi", "name") are elsewhere in the scripts."""
    *parents, last = [step.removesuffix("[]") for step in field.split(".")]
    if not re.search(rf"\b{re.escape(last)}\b", js):
        return False
    return not parents or re.search(rf"\??\.{re.escape(parents[-1])}\b", js) is not None


@pytest.mark.parametrize("operation", sorted(PAGE_READS))
def test_what_the_page_reads_is_documented_as_required(spec, operation):
    path, method = operation
    schema = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    for field in PAGE_READS[operation]:
        required_path(spec, schema, field)
        # keeps this list honest: a field the page no longer reads should leave it
        assert page_reads_field(field), field


def test_the_page_reads_check_sees_a_parent_the_page_dropped():
    """A page that stopped reading ``entry.trunk_before`` still has "data" in its text (other maps')."""
    dropped = PAGE_JS.replace("entry.trunk_before", "entry.trunk_after")
    assert dropped != PAGE_JS and re.search(r"\bdata\b", dropped)
    assert page_reads_field("attention[].trunk_before.data")
    assert not page_reads_field("attention[].trunk_before.data", dropped)


def test_every_colormap_the_page_offers_is_a_required_property(client, spec):
    offered = re.findall(r'<option value="(\w+)"', client.get("/").text.split('id="colormap"', 1)[1].split("</select>")[0])
    assert len(offered) >= 5
    schema = spec["paths"]["/api/v1/colormaps"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    for name in offered:
        table = required_path(spec, schema, name)
        assert table["minItems"] == table["maxItems"] == 256


def test_problem_fields_the_page_shows_are_required(spec):
    problem = spec["components"]["schemas"]["Problem"]
    assert {"title", "detail"} <= set(problem["required"])
    assert "body.title" in PAGE_JS and "body.detail" in PAGE_JS


def _parameters(spec: dict, path: str, method: str = "post") -> dict[str, dict]:
    return {p["name"]: p for p in spec["paths"][path][method]["parameters"]}


def test_documented_limits_are_the_served_models(client, spec):
    explainer = client.app.state.catalog.default
    classes = len(explainer.weights.classes)
    narrowest = min(m["channels"] for m in explainer.modules)
    for path in ("/api/v1/predict", "/api/v1/ablate"):
        assert _parameters(spec, path)["top_k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": classes,
                                                               "default": 5}
    channel = _parameters(spec, "/api/v1/predict")["channel"]
    assert channel["schema"] == {"type": "integer", "minimum": 0, "maximum": narrowest - 1}
    assert not channel["required"]
    # and the server enforces exactly those numbers
    image = {"file": ("p.png", corpus.one_pixel(), "image/png")}
    assert client.post("/api/v1/predict", params={"top_k": classes}, files=image).status_code == 200
    assert client.post("/api/v1/predict", params={"top_k": classes + 1}, files=image).status_code == 422
    assert client.post("/api/v1/ablate", params={"top_k": classes + 1}, files=image).status_code == 422
    top = {"reduction": "channel", "channel": narrowest - 1}
    assert client.post("/api/v1/predict", params=top, files=image).status_code == 200
    assert client.post("/api/v1/predict", params={**top, "channel": narrowest}, files=image).status_code == 422


def test_explain_channel_is_bounded_by_the_widest_module_and_optional(client, spec):
    """/explain's channel adds channel k to each module that has it (the page keeps a channel per
    module), so the widest module of the served models bounds it; all_channels is a plain boolean."""
    widest = min(max(m["channels"] for m in e.modules) for e in client.app.state.catalog)
    params = _parameters(spec, "/api/v1/explain")
    assert params["channel"]["schema"] == {"type": "integer", "minimum": 0, "maximum": widest - 1}
    assert (params["all_channels"]["schema"]["type"], params["all_channels"]["schema"]["default"]) == ("boolean", False)
    assert not params["channel"]["required"] and not params["all_channels"]["required"]
    image = {"file": ("p.png", corpus.one_pixel(), "image/png")}
    answer = client.post("/api/v1/explain", params={"channel": widest - 1}, files=image)
    assert answer.status_code == 200 and "channel" in answer.json()["attention"][-1]
    refused = client.post("/api/v1/explain", params={"channel": widest}, files=image)
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["query", "channel"]
    # and the fields it adds are documented as optional, with the encoding
    module = resolve(spec, spec["components"]["schemas"]["ExplainAttention"])
    assert not {"channel", "data", "lo", "hi"} & set(module["required"])
    assert "uint16" in module["properties"]["data"]["description"]
    # left out rather than null, so no null is documented
    assert module["properties"]["data"] == {"type": "string", "title": "Data",
                                            "description": module["properties"]["data"]["description"]}
    assert module["properties"]["channel"]["$ref"].endswith("/ChannelMaps")


def test_shared_options_are_declared_once(spec):
    predict, ablate = _parameters(spec, "/api/v1/predict"), _parameters(spec, "/api/v1/ablate")
    assert predict["top_k"] == ablate["top_k"]
    assert {"reduction", "channel", "colormap", "alpha"} <= set(predict)


@pytest.mark.parametrize(("params", "parameter", "message"), [
    ({"reduction": "channel"}, "channel", "reduction=channel needs channel, an integer in [0, 63]"),
    ({"reduction": "channel", "channel": 64}, "channel", "must be in [0, 63]"),
    ({"channel": 64}, "channel", "must be in [0, 63]"),
    ({"top_k": 11}, "top_k", "must be in [1, 10]"),
])
def test_out_of_range_options_are_422_naming_the_range(client, params, parameter, message):
    r = client.post("/api/v1/predict", params=params, files={"file": ("p.png", corpus.one_pixel(), "image/png")})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert message in body["detail"]
    assert body["errors"][0]["loc"] == ["query", parameter]


def test_limits_are_not_documented_before_the_model_loads(tmp_path):
    with TestClient(create_app(Settings(weights=str(tmp_path / "missing.json")))) as c:
        top_k = _parameters(c.get("/openapi.json").json(), "/api/v1/predict")["top_k"]
        assert "maximum" not in top_k["schema"]


@pytest.fixture(scope="module")
def server():
    with live_server() as url:
        yield url


def test_schemathesis_finds_nothing_against_the_live_server(server):
    """Every check Schemathesis has, all its phases, a bounded number of examples per operation.

    The repository's schemathesis.toml loads tests/schemathesis_hooks.py (real images for uploads).
    It runs in a temporary directory with no example database, so it leaves nothing in the work
    tree; RANLENS_SCHEMATHESIS_EXAMPLES raises the count for a deeper run.
    """
    examples = os.environ.get("RANLENS_SCHEMATHESIS_EXAMPLES", "15")
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "schemathesis.toml"), "run", f"{server}openapi.json",
         "--max-examples", examples, "--seed", "20261127", "--no-color", "--generation-database", "none"],
        cwd=Path.cwd(), capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "No issues found" in report, report[-6000:]
    assert re.search(rf"Operations:\s+{len(ROUTES)} selected / {len(ROUTES)} total", report), report[-3000:]


def test_live_schema_has_the_model_limits(server):
    spec = httpx.get(f"{server}openapi.json").json()
    assert _parameters(spec, "/api/v1/predict")["top_k"]["schema"]["maximum"] == 10
