"""The REST API through the real app and the shipped model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app

from . import corpus

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client():
    settings = Settings(max_upload_bytes=2 * 1024 * 1024, max_image_pixels=20_000_000)
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, data: bytes, name="image.png", ctype="image/png", **params):
    return client.post("/api/v1/predict", files={"file": (name, data, ctype)}, params=params)


def assert_problem(response, status: int):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "attention56_cifar"


def test_models_metadata(client):
    models = client.get("/api/v1/models").json()["models"]
    assert len(models) == 1
    meta = client.get("/api/v1/models/attention56_cifar").json()
    assert meta == models[0]
    assert meta["classes"][3] == "cat" and meta["input_size"] == [32, 32]
    assert [(m["module"], m["shape"]) for m in meta["modules"]] == [
        ("stage1.module1", [32, 32]), ("stage2.module1", [16, 16]), ("stage3.module1", [8, 8])]
    assert 0 < meta["metrics"]["top1"] <= 1
    assert_problem(client.get("/api/v1/models/resnet50"), 404)


def test_predict_a_cat(client):
    response = post(client, corpus.png(corpus.photo("chelsea.jpg")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "attention56_cifar"
    predictions = body["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["label"] == "cat"
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert [a["module"] for a in body["attention"]] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    for a in body["attention"]:
        assert 0 < a["min"] <= a["mean"] <= a["max"] < 1
        assert "overlay" not in a and "mask" not in a
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


def test_predict_with_overlays_and_masks(client):
    body = post(client, corpus.png(corpus.photo("coffee.jpg")), top_k=10, overlays="true", masks="true",
                reduction="max", colormap="inferno", alpha=0.5).json()
    assert len(body["predictions"]) == 10
    for a in body["attention"]:
        mask = np.array(a["mask"])
        assert list(mask.shape) == a["shape"]
        assert mask.min() == pytest.approx(a["min"], abs=1e-5) and mask.max() == pytest.approx(a["max"], abs=1e-5)
        assert a["reduction"] == "max"
        assert a["overlay"].startswith("data:image/png;base64,")
        overlay = Image.open(io.BytesIO(base64.b64decode(a["overlay"].split(",", 1)[1])))
        assert overlay.size == (256, 256)


def test_channel_reduction(client):
    body = post(client, corpus.png(corpus.photo()), reduction="channel", channel=5, masks="true").json()
    assert all(a["reduction"] == "channel 5" for a in body["attention"])
    assert_problem(post(client, corpus.png(corpus.photo()), reduction="channel", channel=64), 422)


@pytest.mark.parametrize("params", [
    {"top_k": 0}, {"top_k": 11}, {"top_k": "many"}, {"alpha": 2}, {"colormap": "rainbow"},
    {"reduction": "median"}, {"channel": -1},
])
def test_bad_parameters(client, params):
    assert_problem(post(client, corpus.one_pixel(), **params), 422)


def test_explain_payload_decodes_to_the_masks(client):
    body = client.post("/api/v1/explain", files={"file": ("c.png", corpus.png(corpus.photo()), "image/png")}).json()
    assert len(body["predictions"]) == 10
    for a in body["attention"]:
        q = np.frombuffer(base64.b64decode(a["data"]), dtype="<u2")
        mask = (a["lo"] + q * (a["hi"] - a["lo"]) / 65535).reshape(a["channels"], *a["shape"])
        assert mask.mean(0).min() == pytest.approx(a["min"], abs=1e-4)
        assert mask.mean(0).max() == pytest.approx(a["max"], abs=1e-4)
    assert body["images"]["model_input"].startswith("data:image/png")


def test_colormaps(client):
    maps = client.get("/api/v1/colormaps").json()
    assert {"viridis", "jet", "gray"} <= set(maps)
    assert len(maps["viridis"]) == 256 and maps["gray"][0] == [0, 0, 0] and maps["gray"][-1] == [255, 255, 255]


OK_ODDITIES = {
    "cmyk": (corpus.cmyk_jpeg, "image/jpeg"),
    "16-bit": (corpus.sixteen_bit_png, "image/png"),
    "palette-transparency": (corpus.palette_with_transparency, "image/png"),
    "animated-gif": (corpus.animated_gif, "image/gif"),
    "1x1": (corpus.one_pixel, "image/png"),
    "grayscale": (lambda: corpus.png(corpus.photo().convert("L")), "image/png"),
    "rgba": (lambda: corpus.png(corpus.photo().convert("RGBA")), "image/png"),
    "tall-odd": (lambda: corpus.png(corpus.photo().resize((33, 301))), "image/png"),
    "no-content-type": (lambda: corpus.png(corpus.photo()), "application/octet-stream"),
}


@pytest.mark.parametrize("name", sorted(OK_ODDITIES))
def test_odd_but_valid_images(client, name):
    make, ctype = OK_ODDITIES[name]
    response = post(client, make(), ctype=ctype)
    assert response.status_code == 200, response.text
    assert len(response.json()["attention"]) == 3


def test_exif_orientation_is_applied(client):
    data, upright = corpus.exif_rotated_jpeg()
    body = client.post("/api/v1/explain", files={"file": ("r.jpg", data, "image/jpeg")}).json()
    assert (body["image"]["width"], body["image"]["height"]) == upright


BAD = {
    "zero-bytes": (lambda: b"", "image/png", 400),
    "truncated": (corpus.truncated_jpeg, "image/jpeg", 400),
    "text-as-png": (lambda: b"hello, I am text\n" * 10, "image/png", 415),
    "text-type": (lambda: b"hello", "text/plain", 415),
    "pdf": (lambda: b"%PDF-1.4\n%\xe2\xe3\n", "application/pdf", 415),
    "bomb": (corpus.decompression_bomb, "image/png", 413),
    "over-byte-limit": (lambda: b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024), "image/jpeg", 413),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_get_problem_json_and_server_stays_up(client, name):
    make, ctype, status = BAD[name]
    assert_problem(post(client, make(), ctype=ctype), status)
    assert client.get("/readyz").status_code == 200
    assert post(client, corpus.one_pixel()).status_code == 200


def test_not_multipart_and_missing_field(client):
    assert_problem(client.post("/api/v1/predict", content=corpus.one_pixel(),
                               headers={"content-type": "image/png"}), 415)
    assert_problem(client.post("/api/v1/predict", files={"image": ("a.png", corpus.one_pixel(), "image/png")}), 422)


def test_unknown_route_is_problem_json(client):
    assert_problem(client.get("/api/v1/nothing"), 404)


def test_openapi_documents_the_upload(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["file"]["format"] == "binary"
    assert client.get("/docs").status_code == 200


def test_not_ready_is_503(tmp_path):
    settings = Settings(weights=str(tmp_path / "missing.json"))
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        assert_problem(c.get("/readyz"), 503)
        assert_problem(post(c, corpus.one_pixel()), 503)
        assert c.get("/").status_code == 200


def test_page_renders_with_relative_urls(client):
    html = client.get("/").text
    assert 'href="static/style.css"' in html and 'src="static/js/main.js"' in html
    assert 'src="/' not in html and 'href="/' not in html
    for example in ("chelsea.jpg", "cifar10-cat.jpg"):
        assert client.get(f"/static/examples/{example}").status_code == 200

