"""Transport rules against a real server over real HTTP: security headers on every answer, gzip,
HEAD wherever GET is, 405 with Allow, problem+json fields, and API docs that need no CDN."""

from __future__ import annotations

import gzip
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app

from . import corpus
from .live import live_server

PROBLEM = "application/problem+json"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
UPLOAD_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server():
    with live_server(RANLENS_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT)) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def image(data: bytes = b"", ctype: str = "image/png") -> dict:
    return {"file": ("x.png", data or corpus.one_pixel(), ctype)}


# (method, path, keyword arguments, expected status): successes, client errors, assets, docs
ANSWERS = [
    ("GET", "/", {}, 200),
    ("HEAD", "/", {}, 200),
    ("GET", "/healthz", {}, 200),
    ("GET", "/api/v1/colormaps", {}, 200),
    ("GET", "/static/js/main.js", {}, 200),
    ("GET", "/docs", {}, 200),
    ("GET", "/docs/assets/swagger-ui.css", {}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("POST", "/api/v1/predict", {"files": image()}, 200),
    ("GET", "/api/v1/nothing", {}, 404),
    ("GET", "/static/nothing.js", {}, 404),
    ("POST", "/healthz", {}, 405),
    ("POST", "/api/v1/predict", {"files": image(b"just text", "text/plain")}, 415),
    ("POST", "/api/v1/predict", {"content": b"{}", "headers": {"content-type": "application/json"}}, 415),
    ("POST", "/api/v1/predict", {"params": {"top_k": 0}, "files": image()}, 422),
    ("POST", "/api/v1/predict", {"files": image(b"\x89PNG" + bytes(2 * UPLOAD_LIMIT))}, 413),
    ("POST", "/api/v1/explain", {"files": image(b"\x89PNG\r\n\x1a\n broken")}, 400),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), ANSWERS,
                         ids=[f"{m} {p} {s}" for m, p, _, s in ANSWERS])
def test_security_headers_on_every_answer(http, method, path, kwargs, status):
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_security_headers_on_an_unexpected_server_error():
    # a 500 is rendered outside the middleware stack, so it gets the headers another way
    app = create_app(Settings())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.headers["content-type"].startswith(PROBLEM)
    assert "a bug" not in r.text
    assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"


def test_large_json_is_gzipped_small_is_not(http):
    big = http.get("/api/v1/colormaps", headers={"accept-encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert len(big.content) > 1024 and set(big.json()) >= {"viridis", "gray"}  # httpx decoded it
    raw = httpx.get(str(http.base_url.join("/api/v1/colormaps")), headers={"accept-encoding": "gzip"})
    with httpx.stream("GET", str(http.base_url.join("/api/v1/colormaps")), headers={"accept-encoding": "gzip"}) as s:
        compressed = b"".join(s.iter_raw())
    assert json.loads(gzip.decompress(compressed)) == raw.json()
    assert len(compressed) < len(json.dumps(raw.json())) / 3
    explained = http.post("/api/v1/explain", files=image(corpus.png(corpus.photo())),
                          headers={"accept-encoding": "gzip"})
    assert explained.status_code == 200 and explained.headers["content-encoding"] == "gzip"
    small = http.get("/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers and small.json() == {"status": "ok"}


def _get_paths(spec: dict) -> list[str]:
    """Every GET operation of the schema, its path parameters filled from the documented examples."""
    paths = []
    for path, item in spec["paths"].items():
        if "get" in item:
            for p in item["get"].get("parameters", []):
                if p["in"] == "path":
                    path = path.replace("{" + p["name"] + "}", p["examples"][0] if "examples" in p
                                        else p["schema"]["examples"][0])
            paths.append(path)
    return paths


def test_head_is_answered_wherever_get_is(http):
    spec = http.get("/openapi.json").json()
    paths = _get_paths(spec) + ["/", "/openapi.json", "/docs", "/static/js/main.js", "/docs/assets/swagger-ui.css"]
    assert len(paths) >= 12
    identity = {"accept-encoding": "identity"}
    for path in paths:
        got = http.get(path, headers=identity)
        head = http.head(path, headers=identity)
        assert got.status_code == head.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content)), path
        assert head.headers["content-security-policy"] == CSP


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/healthz", "GET, HEAD"),
    ("DELETE", "/api/v1/models/attention56_cifar", "GET, HEAD"),
    ("OPTIONS", "/api/v1/colormaps", "GET, HEAD"),
    ("GET", "/api/v1/predict", "POST"),
    ("HEAD", "/api/v1/ablate", "POST"),
    ("PUT", "/static/js/main.js", "GET, HEAD"),
    ("POST", "/docs/assets/swagger-ui.css", "GET, HEAD"),
])
def test_405_says_what_is_allowed(http, method, path, allow):
    r = http.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    if method != "HEAD":
        assert r.headers["content-type"].startswith(PROBLEM) and r.json()["status"] == 405


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "title"), [
    ("GET", "/api/v1/nothing?x=1", {}, 404, "Not Found"),
    ("GET", "/api/v1/models/resnet50", {}, 404, "Unknown model"),
    ("POST", "/api/v1/predict", {"params": {"alpha": 2}, "files": image()}, 422, "Invalid parameters"),
    ("POST", "/api/v1/ablate", {"files": image(b"%PDF-1.4", "application/pdf")}, 415, "Unsupported image"),
    ("POST", "/api/v1/explain", {"content": b"raw", "headers": {"content-type": "image/png"}}, 415,
     "Unsupported media type"),
])
def test_problems_carry_type_and_instance(http, method, path, kwargs, status, title):
    r = http.request(method, path, **kwargs)
    assert r.status_code == status
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == "about:blank"
    assert body["instance"] == urlsplit(path).path
    assert body["status"] == status and body["title"] == title and body["detail"]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[k] for k in ("src", "href", "data-openapi") if attrs.get(k)]
        if tag == "style" or "style" in attrs or any(k.startswith("on") for k in attrs):
            self.inline.append(tag)
        self._in_script = tag == "script"
        if tag == "script" and not attrs.get("src"):
            self.inline.append("script without src")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(f"script text {data[:40]!r}")


def test_docs_use_only_same_origin_assets_that_answer(http, server):
    page, viewer = "/docs", "swagger-ui-bundle.js"
    r = http.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = _Refs()
    refs.feed(r.text)
    assert refs.inline == [], "inline script or style would break under the CSP"
    assert any(u.endswith(viewer) for u in refs.urls) and any(u.endswith("openapi.json") for u in refs.urls)
    page_url = urljoin(server, page.lstrip("/"))
    for url in refs.urls:
        absolute = urljoin(page_url, url)
        assert urlsplit(absolute).netloc == urlsplit(server).netloc, f"{url} is not same-origin"
        asset = http.get(absolute)
        assert asset.status_code == 200 and asset.content, absolute
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]
    # ReDoc cannot run under style-src 'self' (app/api/docs.py says why), so it is not offered
    assert http.get("/redoc").status_code == 404


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.browser
def test_docs_render_under_the_csp_without_leaving_the_origin(server):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page()
            problems: list[str] = []
            tab.on("pageerror", lambda e: problems.append(f"error: {e}"))
            tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            origin = urlsplit(server).netloc
            tab.on("request", lambda rq: problems.append(f"left the origin: {rq.url}")
                   if urlsplit(rq.url).scheme in ("http", "https") and urlsplit(rq.url).netloc != origin else None)
            tab.goto(server + "docs")
            tab.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/api/v1/predict']", timeout=60_000)
            # open one operation: its schemas render, with the model's real top_k limit
            tab.click(".opblock-summary-path[data-path='/api/v1/predict']")
            tab.wait_for_selector("text=for the served model, 1 to 10", timeout=30_000)
            tab.wait_for_timeout(500)
        finally:
            browser.close()
    assert problems == []


@pytest.mark.parametrize(("path", "has_error"), [("/v2/models/attention56_cifar/infer", True), ("/api/v1/predict", False)])
def test_a_request_cancelled_at_shutdown_is_a_503_that_triton_clients_can_read(path, has_error):
    """The whole shutdown is test_cli's; here the answer's body: under /v2 it carries `error`, where
    Triton's and KServe's clients read the message, as every other /v2 problem does."""
    import asyncio

    from ranlens.app.core.http import AnswerCancelled

    async def cancelled(scope, receive, send):
        raise asyncio.CancelledError

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def call():
        await AnswerCancelled(cancelled)({"type": "http", "method": "POST", "path": path}, None, send)

    asyncio.run(call())
    body = json.loads(sent[1]["body"])
    assert sent[0]["status"] == 503 and body["status"] == 503
    assert ("error" in body) == has_error and body.get("error", body["detail"]) == body["detail"]


def test_a_cancelled_requests_log_line_cannot_be_forged_by_its_path(caplog):
    """The path is percent-decoded: a %0A in it was a real newline in the log, and a forged line after it."""
    import asyncio
    import logging

    from ranlens.app.core.http import AnswerCancelled

    async def cancelled(scope, receive, send):
        raise asyncio.CancelledError

    async def send(message):
        pass

    path = "/x\nERROR: could not load a model: forged"
    with caplog.at_level(logging.WARNING, logger="ranlens"):
        asyncio.run(AnswerCancelled(cancelled)({"type": "http", "method": "GET", "path": path}, None, send))
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
