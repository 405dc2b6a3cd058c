"""The REST API through the real app and the shipped model."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
from urllib.parse import urlsplit

import h11
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app
from ranlens.model.weights import DEFAULT_WEIGHTS, WEIGHTS_DIR

from . import corpus
from .conftest import running_server

A56, A92 = DEFAULT_WEIGHTS["attention56_cifar"], DEFAULT_WEIGHTS["attention92_cifar"]
PROBLEM = "application/problem+json"
CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


@pytest.fixture(scope="module")
def client():
    settings = Settings(max_upload_bytes=2 * 1024 * 1024, max_image_pixels=20_000_000)
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, data: bytes, name="image.png", ctype="image/png", **params):
    return client.post("/api/v1/predict", files={"file": (name, data, ctype)}, params=params)


def assert_problem(response, status: int, title: str | None = None, detail: str | None = None) -> dict:
    """An RFC 9457 body with this status; ``title`` must match exactly, ``detail`` must be in the detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == "about:blank" and body["status"] == status, body
    assert isinstance(body["title"], str) and len(body["title"]) > 3, body
    assert isinstance(body["detail"], str) and len(body["detail"]) > 3, body
    assert body["instance"] == response.request.url.path, body
    if title is not None:
        assert body["title"] == title, body
    if detail is not None:
        assert detail in body["detail"], body
    return body


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "attention56_cifar"
    assert sorted(ready["models"]) == [A56, A92]


def test_models_metadata(client):
    listing = client.get("/api/v1/models").json()
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == {"attention56_cifar", "attention92_cifar"}  # every shipped default is served
    assert listing["default"] == A56  # as the suite pins it (tests/conftest.py)
    meta = client.get("/api/v1/models/attention56_cifar").json()
    assert meta == models["attention56_cifar"]
    assert client.get(f"/api/v1/models/{meta['weights']}").json() == meta  # by weights name too
    assert meta["classes"][3] == "cat" and meta["input_size"] == [32, 32]
    assert [(m["module"], m["shape"]) for m in meta["modules"]] == [
        ("stage1.module1", [32, 32]), ("stage2.module1", [16, 16]), ("stage3.module1", [8, 8])]
    assert [(m["module"], m["shape"]) for m in models["attention92_cifar"]["modules"]] == [
        ("stage1.module1", [32, 32]), ("stage1.module2", [32, 32]), ("stage2.module1", [16, 16]),
        ("stage2.module2", [16, 16]), ("stage3.module1", [8, 8]), ("stage3.module2", [8, 8])]
    for m in models.values():
        assert 0 < m["metrics"]["top1"] <= 1
    assert_problem(client.get("/api/v1/models/resnet50"), 404, "Unknown model", "'resnet50'")
    # unpinned, the default is the best recorded top-1
    best = max(listing["models"], key=lambda m: m["metrics"]["top1"])
    with TestClient(create_app(Settings(default_model=""))) as unpinned:
        assert unpinned.get("/api/v1/models").json()["default"] == best["weights"]
        assert unpinned.get("/readyz").json()["weights"] == best["weights"]


@pytest.mark.parametrize(("name", "modules"), [("attention56_cifar", 3), ("attention92_cifar", 6)])
def test_model_parameter_selects_the_network(client, name, modules):
    image = corpus.png(corpus.photo("chelsea.jpg"))
    body = post(client, image, model=name).json()
    assert body["model"] == name and len(body["attention"]) == modules
    explained = client.post("/api/v1/explain", params={"model": name},
                            files={"file": ("c.png", image, "image/png")}).json()
    assert explained["model"] == name and len(explained["attention"]) == modules
    ablated = client.post("/api/v1/ablate", params={"model": name},
                          files={"file": ("c.png", image, "image/png")}).json()
    assert ablated["model"] == name and len(ablated["per_module"]) == modules
    arch = client.get(f"/api/v1/models/{name}/architecture").json()
    assert sum(len(stage["modules"]) for stage in arch["stages"]) == modules


def test_models_answer_differently(client):
    image = corpus.png(corpus.photo("chelsea.jpg"))
    a56, a92 = (post(client, image, model=m, top_k=10).json() for m in ("attention56_cifar", "attention92_cifar"))
    assert a56["weights"] != a92["weights"]
    assert [p["probability"] for p in a56["predictions"]] != [p["probability"] for p in a92["predictions"]]
    default = post(client, image, top_k=10).json()
    assert default["weights"] == client.get("/api/v1/models").json()["default"]


def test_unknown_model_parameter_is_a_clear_422(client):
    body = assert_problem(post(client, corpus.png(corpus.photo()), model="resnet50"), 422, "Invalid parameters")
    assert "resnet50" in body["detail"] and "attention92_cifar" in body["detail"]
    assert body["errors"][0]["loc"] == ["query", "model"]


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
        assert a["overlay"].startswith("data:image/jpeg;base64,")
        overlay = Image.open(io.BytesIO(base64.b64decode(a["overlay"].split(",", 1)[1])))
        assert overlay.format == "JPEG" and overlay.size == (256, 256)


def test_added_reduction_is_the_mean_of_mask_times_trunk_magnitude(client):
    import torch

    from ranlens.model import get_model
    from ranlens.model.weights import get_weights

    body = post(client, corpus.png(corpus.photo()), reduction="added", masks="true").json()
    weights = client.get("/api/v1/models").json()["models"][0]["weights"]
    model = get_model("attention56_cifar", weights=weights)
    preprocess = get_weights("attention56_cifar", weights).transforms()
    with torch.no_grad():
        out = model.forward_intermediates(preprocess(corpus.photo()).unsqueeze(0))
    assert model.module_names  # the modules compared below
    assert [e["module"] for e in body["attention"]] == [a.name for a in out.attention] == model.module_names
    for entry, a in zip(body["attention"], out.attention, strict=True):
        expected = (a.mask[0] * a.trunk[0].abs()).mean(0).numpy()
        assert entry["reduction"] == "added"
        np.testing.assert_allclose(np.array(entry["mask"]), expected, atol=1e-4)
        # not the channel mean of M: the two maps differ
        assert not np.allclose(expected, a.mask[0].mean(0).numpy(), atol=1e-3)


def test_channel_reduction(client):
    body = post(client, corpus.png(corpus.photo()), reduction="channel", channel=5, masks="true").json()
    assert all(a["reduction"] == "channel 5" for a in body["attention"])
    assert_problem(post(client, corpus.png(corpus.photo()), reduction="channel", channel=64), 422,
                   "Invalid parameters", "channel: must be in [0, 63]")


@pytest.mark.parametrize("params", [
    {"top_k": 0}, {"top_k": 11}, {"top_k": "many"}, {"alpha": 2}, {"colormap": "rainbow"},
    {"reduction": "median"}, {"channel": -1},
])
def test_bad_parameters(client, params):
    body = assert_problem(post(client, corpus.one_pixel(), **params), 422, "Invalid parameters")
    (name,) = params
    assert name in body["detail"], body


def explain(client, data: bytes, **params):
    response = client.post("/api/v1/explain", files={"file": ("c.png", data, "image/png")}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def dequantize(q: dict, shape) -> np.ndarray:
    """A {data, lo, hi} map or mask of /api/v1/explain, decoded the way its description says."""
    u = np.frombuffer(base64.b64decode(q["data"]), dtype="<u2")
    assert u.size == np.prod(shape), (u.size, shape)
    return (q["lo"] + u.astype(np.float64) * (q["hi"] - q["lo"]) / 65535).reshape(shape)


def step(q: dict) -> float:
    """Half a quantisation step, the most a decoded value may be off, plus float32 rounding."""
    return (q["hi"] - q["lo"]) / 65535 / 2 + 1e-6


def exact_attention(client, data: bytes):
    """The served default model's masks and trunk outputs for an upload, straight from the explainer:
    one per module of the model, and it has some."""
    from ranlens.model.imaging import decode_image

    explainer = client.app.state.catalog.default
    attention = explainer.explain(decode_image(data, 20_000_000, "image/png")).attention
    assert explainer.model.module_names, "the served model has no attention modules to compare"
    assert [a.module for a in attention] == explainer.model.module_names
    return attention


def test_explain_sends_each_reduction_as_one_map_and_no_channel_by_default(client):
    from ranlens.model import render

    image = corpus.png(corpus.photo())
    body = explain(client, image)
    assert len(body["predictions"]) == 10
    assert body["images"]["model_input"].startswith("data:image/png")
    exact = exact_attention(client, image)
    assert [a["module"] for a in body["attention"]] == [a.module for a in exact]
    for entry, a in zip(body["attention"], exact, strict=True):
        h, w = entry["shape"]
        assert (entry["channels"], h, w) == a.mask.shape
        # no channel data: neither the whole mask nor one channel
        assert not {"data", "lo", "hi", "channel"} & set(entry), sorted(entry)
        assert set(entry["reductions"]) == {r for r in render.REDUCTIONS if r != "channel"}
        for name, q in entry["reductions"].items():
            want = render.reduce_mask(a.mask, name, trunk=a.trunk)
            np.testing.assert_allclose(dequantize(q, (h, w)), want, rtol=0, atol=step(q) + 1e-5, err_msg=name)
        mean = dequantize(entry["reductions"]["mean"], (h, w))
        assert mean.min() == pytest.approx(entry["min"], abs=1e-4) and mean.max() == pytest.approx(entry["max"], abs=1e-4)
        # the look-inside view: the 8 most varied channels, a histogram of every value, the trunk magnitude
        variance = a.mask.reshape(a.channels, -1).var(axis=1)
        assert sorted(entry["varied"]["index"]) == sorted(np.argsort(-variance)[:8].tolist())
        np.testing.assert_allclose(dequantize(entry["varied"], (8, h, w)), a.mask[entry["varied"]["index"]],
                                   rtol=0, atol=step(entry["varied"]) + 1e-5)
        counts, _ = np.histogram(a.mask, bins=50, range=(0, 1))
        assert sum(entry["histogram"]["counts"]) == a.mask.size
        assert np.abs(np.array(entry["histogram"]["counts"]) - counts).sum() <= 2  # values on a bin edge
        assert entry["histogram"]["mean"] == pytest.approx(float(a.mask.mean()), abs=1e-5)
        assert entry["histogram"]["sd"] == pytest.approx(float(a.mask.std()), abs=1e-5)
        before, after = np.abs(a.trunk).mean(0), np.abs((1 + a.mask) * a.trunk).mean(0)
        for name, want in (("trunk_before", before), ("trunk_after", after)):
            np.testing.assert_allclose(dequantize(entry[name], (h, w)), want, rtol=0, atol=step(entry[name]) + 1e-5)


def test_all_channels_sends_every_channel_and_channel_k_sends_one(client):
    image = corpus.png(corpus.photo("coffee.jpg"))
    full = explain(client, image, all_channels="true")
    masks = {}
    for entry in full["attention"]:
        masks[entry["module"]] = dequantize(entry, (entry["channels"], *entry["shape"]))
        assert "channel" not in entry
    exact = exact_attention(client, image)
    assert [e["module"] for e in full["attention"]] == [a.module for a in exact]
    for a, entry in zip(exact, full["attention"], strict=True):
        np.testing.assert_allclose(masks[entry["module"]], a.mask, rtol=0, atol=step(entry) + 1e-5)
    # channel k, of every module that has it: the same values as the full answer's channel k
    for k in (5, 100, 255):
        body = explain(client, image, channel=k)
        assert [e["module"] for e in body["attention"]] == [e["module"] for e in full["attention"]]
        for entry, full_entry in zip(body["attention"], full["attention"], strict=True):
            assert not {"data", "lo", "hi"} & set(entry)
            if k >= entry["channels"]:
                assert "channel" not in entry, (k, entry["module"])
                continue
            assert entry["channel"]["index"] == [k]
            got = dequantize(entry["channel"], (1, *entry["shape"]))[0]
            np.testing.assert_allclose(got, masks[entry["module"]][k], rtol=0,
                                       atol=step(entry["channel"]) + step(full_entry) + 1e-5)
        assert sum("channel" in e for e in body["attention"]) == {5: 3, 100: 2, 255: 1}[k]


def test_the_channel_route_sends_one_channel_of_every_module_and_nothing_else(client):
    image = corpus.png(corpus.photo("coffee.jpg"))
    exact = exact_attention(client, image)
    default = client.post("/api/v1/explain", files={"file": ("c.png", image, "image/png")})
    for k in (5, 100, 255):
        response = client.post("/api/v1/explain/channel", params={"channel": k},
                               files={"file": ("c.png", image, "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["channel"] == k and body["weights"] == default.json()["weights"]
        assert set(body) == {"model", "weights", "channel", "attention", "timing_ms"}
        for a, entry in zip(exact, body["attention"], strict=True):
            assert entry["module"] == a.module and set(entry) <= {"module", "stage", "shape", "channels", "channel"}
            if k >= a.channels:
                assert "channel" not in entry
                continue
            got = dequantize(entry["channel"], (1, *entry["shape"]))[0]
            np.testing.assert_allclose(got, a.mask[k], rtol=0, atol=step(entry["channel"]) + 1e-5)
        # what the page fetches per channel: a few per cent of the whole answer
        assert len(response.content) < 0.1 * len(default.content), (len(response.content), len(default.content))


@pytest.mark.parametrize(("params", "message"), [
    ({"channel": 256}, "channel: must be in [0, 255] (the most channels of any module is 256); got 256"),
    ({"channel": -1}, "channel"), ({"channel": "red"}, "channel"), ({}, "channel"),
])
def test_the_channel_route_refuses_a_channel_no_module_has_or_none(client, params, message):
    response = client.post("/api/v1/explain/channel", params=params,
                           files={"file": ("p.png", corpus.one_pixel(), "image/png")})
    body = assert_problem(response, 422, "Invalid parameters", message)
    assert body["errors"][0]["loc"] == ["query", "channel"]


@pytest.mark.parametrize(("params", "message"), [
    ({"channel": 256}, "channel: must be in [0, 255] (the most channels of any module is 256); got 256"),
    ({"channel": -1}, "channel"), ({"channel": "red"}, "channel"), ({"all_channels": "maybe"}, "all_channels"),
])
def test_explain_refuses_a_channel_no_module_has(client, params, message):
    response = client.post("/api/v1/explain", params=params,
                           files={"file": ("p.png", corpus.one_pixel(), "image/png")})
    body = assert_problem(response, 422, "Invalid parameters", message)
    assert body["errors"][0]["loc"] == ["query", next(iter(params))]


@pytest.fixture(scope="module")
def imagenet_client(tmp_path_factory):
    """attention92 in the ImageNet layout at 224 pixels, random weights (seed 0), served from a manifest."""
    import torch

    from ranlens.model.registry import get_model
    from ranlens.model.weights import Weights, save_checkpoint

    folder = tmp_path_factory.mktemp("imagenet-weights")
    torch.manual_seed(0)
    digest = save_checkpoint(get_model("attention92", num_classes=3), folder / "a92.safetensors", "attention92")
    manifest = Weights(name="attention92.random", arch="attention92", file="a92.safetensors", sha256=digest,
                       classes=("ant", "bee", "cow"), input_size=224, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), directory=folder).write_manifest()
    with TestClient(create_app(Settings(weights=str(manifest)))) as c:
        yield c


def test_a_224_pixel_model_answers_at_least_ten_times_smaller_by_default(imagenet_client):
    image = corpus.encode(corpus.photo(), "JPEG")
    sizes = {}
    for name, params in (("full", {"all_channels": "true"}), ("default", {}), ("channel", {"channel": 7})):
        response = imagenet_client.post("/api/v1/explain", params=params, files={"file": ("c.jpg", image, "image/jpeg")},
                                        headers={"accept-encoding": "identity"})
        assert response.status_code == 200, response.text
        sizes[name] = len(response.content)
        body = response.json()
    assert [(a["channels"], a["shape"]) for a in body["attention"]] == [
        (256, [56, 56]), (512, [28, 28]), (512, [28, 28]), (1024, [14, 14]), (1024, [14, 14]), (1024, [14, 14])]
    assert all(a["channel"]["index"] == [7] for a in body["attention"])
    assert sizes["full"] > 5_000_000, sizes
    assert sizes["full"] >= 10 * sizes["default"], sizes
    assert sizes["channel"] - sizes["default"] < 20_000, sizes  # one channel of six modules: 5,292 uint16


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
    # what each decodes to is checked pixel by pixel in test_imaging.py; here, that the API serves them
    make, ctype = OK_ODDITIES[name]
    response = post(client, make(), ctype=ctype)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [a["module"] for a in body["attention"]] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    assert len(body["predictions"]) == 5 and 0 < body["predictions"][0]["probability"] <= 1


def test_sixteen_bit_upload_is_not_black(client):
    """The model input the page draws keeps the 16-bit ramp's range."""
    body = client.post("/api/v1/explain", files={"file": ("r.png", corpus.sixteen_bit_png(), "image/png")}).json()
    model_input = Image.open(io.BytesIO(base64.b64decode(body["images"]["model_input"].split(",", 1)[1])))
    pixels = np.asarray(model_input.convert("L"))
    assert pixels.min() < 60 and pixels.max() > 200, (pixels.min(), pixels.max())


def test_exif_orientation_is_applied(client):
    data, upright = corpus.exif_rotated_jpeg()
    body = client.post("/api/v1/explain", files={"file": ("r.jpg", data, "image/jpeg")}).json()
    assert (body["image"]["width"], body["image"]["height"]) == upright


def test_image_jpg_the_type_many_clients_send_is_a_jpeg(client):
    data = corpus.encode(corpus.photo(), "JPEG")
    answers = [post(client, data, name="cat.jpg", ctype=ctype).json() for ctype in ("image/jpg", "image/jpeg")]
    for answer in answers:
        answer.pop("timing_ms")
    assert answers[0] == answers[1] and answers[0]["predictions"][0]["label"] == "cat"


def test_a_jpeg_lacking_only_its_end_marker_is_classified_as_the_whole_file(client):
    data = corpus.encode(corpus.photo(), "JPEG")
    answers = [post(client, body, name="cat.jpg", ctype="image/jpeg").json() for body in (data, data[:-2])]
    for answer in answers:
        answer.pop("timing_ms")
    assert answers[0] == answers[1] and answers[0]["predictions"][0]["label"] == "cat"


BAD = {
    "zero-bytes": (lambda: b"", "image/png", 400, "Empty upload", "no bytes"),
    "truncated": (corpus.truncated_jpeg, "image/jpeg", 400, "Undecodable image", "corrupt or truncated"),
    "text-as-png": (lambda: b"hello, I am text\n" * 10, "image/png", 415, "Unsupported image", "not an image"),
    "text-type": (lambda: b"hello", "text/plain", 415, "Unsupported image", "'text/plain'"),
    "pdf": (lambda: b"%PDF-1.4\n%\xe2\xe3\n", "application/pdf", 415, "Unsupported image", "'application/pdf'"),
    "bomb": (corpus.decompression_bomb, "image/png", 413, "Image too large", None),
    # under Pillow's own guard: only the app's own limit (20 MP here) refuses it
    "over-pixel-limit": (lambda: corpus.over_pixel_limit(20_000_000), "image/png", 413, "Image too large",
                         "the limit is 20,000,000"),
    "over-byte-limit": (lambda: b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024), "image/jpeg", 413,
                        "Upload too large", "2,097,152 bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_get_problem_json_and_server_stays_up(client, name):
    make, ctype, status, title, detail = BAD[name]
    assert_problem(post(client, make(), ctype=ctype), status, title, detail)
    assert client.get("/readyz").json()["status"] == "ready"
    assert post(client, corpus.one_pixel()).json()["predictions"][0]["label"] in CLASSES


def test_not_multipart_and_missing_field(client):
    assert_problem(client.post("/api/v1/predict", content=corpus.one_pixel(),
                               headers={"content-type": "image/png"}), 415, "Unsupported media type", "multipart")
    assert_problem(client.post("/api/v1/predict", files={"image": ("a.png", corpus.one_pixel(), "image/png")}),
                   422, "Missing file", "'file'")


def test_a_thin_picture_costs_what_a_square_one_does(client):
    """1 x 200,000 pixels in a PNG of a few hundred bytes: resized whole to the page's 256-pixel crop it
    would have been 256 x 51,200,000 pixels (39 GB); the crop comes first now."""
    data = corpus.png(Image.new("RGB", (1, 200_000), (200, 30, 30)))
    assert len(data) < 2_000
    body = client.post("/api/v1/explain", files={"file": ("thin.png", data, "image/png")}).json()
    assert (body["image"]["width"], body["image"]["height"]) == (1, 200_000)
    assert body["predictions"][0]["label"] in CLASSES


def test_a_cut_off_body_and_several_files_are_refused(client):
    image = corpus.one_pixel()
    whole = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--b--\r\n")
    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert client.post("/api/v1/predict", content=whole, headers=headers).status_code == 200
    cut = whole[: whole.index(b"\r\n--b--")]  # the upload stops before the closing boundary
    assert_problem(client.post("/api/v1/predict", content=cut, headers=headers), 400, "Incomplete upload",
                   "closing boundary")
    two = [("file", ("a.png", image, "image/png")), ("file", ("b.png", image, "image/png"))]
    assert_problem(client.post("/api/v1/predict", files=two), 422, "Several files", "2 fields named 'file'")


def test_boundary_parameter_case_and_length(client):
    """MIME parameter names ignore case (Boundary= is a boundary); one longer than the parser takes
    (256 bytes) is a malformed body, not a server error."""
    image = corpus.one_pixel()

    def body(boundary: bytes) -> bytes:
        return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n")

    r = client.post("/api/v1/predict", content=body(b"b"), headers={"content-type": "multipart/form-data; Boundary=b"})
    assert r.status_code == 200, r.text
    long = b"x" * 300
    assert_problem(client.post("/api/v1/predict", content=body(long),
                               headers={"content-type": "multipart/form-data; boundary=" + long.decode()}),
                   400, "Malformed multipart body", "Boundary length 300")


def test_unknown_route_is_problem_json(client):
    body = assert_problem(client.get("/api/v1/nothing"), 404, "Not Found")
    assert body["instance"] == "/api/v1/nothing"


def test_openapi_documents_the_upload(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["file"]["format"] == "binary"
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui-bundle.js" in docs.text and "openapi.json" in docs.text, docs.text[:500]


def test_not_ready_is_503(tmp_path):
    settings = Settings(weights=str(tmp_path / "missing.json"))
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert_problem(c.get("/readyz"), 503, "Model not ready", "missing.json")
        assert_problem(post(c, corpus.one_pixel()), 503, "Model not ready", "missing.json")
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # the page says why, instead of a model line
        assert "The model is not loaded:" in page.text and "missing.json" in page.text
        assert 'id="model-line"' not in page.text


def test_settings_choose_the_served_models(tmp_path):
    # one weights name: that model alone, whatever else is shipped
    with TestClient(create_app(Settings(weights="attention56_cifar.v7"))) as c:
        listing = c.get("/api/v1/models").json()
        assert [m["weights"] for m in listing["models"]] == ["attention56_cifar.v7"]
        assert listing["default"] == "attention56_cifar.v7"
        assert_problem(post(c, corpus.one_pixel(), model="attention92_cifar"), 422, "Invalid parameters",
                       "attention56_cifar.v7")
    # DEFAULT of one architecture
    with TestClient(create_app(Settings(arch="attention92_cifar"))) as c:
        assert [m["name"] for m in c.get("/api/v1/models").json()["models"]] == ["attention92_cifar"]
        assert post(c, corpus.png(corpus.photo())).json()["model"] == "attention92_cifar"
    # several, with a chosen default
    with TestClient(create_app(Settings(weights="attention56_cifar.v7, DEFAULT",
                                        default_model="attention92_cifar"))) as c:
        listing = c.get("/api/v1/models").json()
        assert [m["weights"] for m in listing["models"]] == [
            "attention56_cifar.v7", A56, A92]
        assert listing["default"] == A92
        assert post(c, corpus.png(corpus.photo())).json()["weights"] == A92
        # an architecture name means the best loaded weights of it
        assert post(c, corpus.png(corpus.photo()), model="attention56_cifar").json()["weights"] == A56
        assert post(c, corpus.png(corpus.photo()), model="attention56_cifar.v7").json()["weights"] == "attention56_cifar.v7"
        assert c.get("/readyz").json()["models"] == ["attention56_cifar.v7", A56, A92]
    # a default named by architecture is its best loaded weights, whatever the settings' order
    with TestClient(create_app(Settings(weights="attention56_cifar.v7, DEFAULT", arch="attention56_cifar",
                                        default_model="attention56_cifar"))) as c:
        assert c.get("/api/v1/models").json()["default"] == A56
        assert post(c, corpus.png(corpus.photo()), model="attention56_cifar").json()["weights"] == A56


def _shipped_with(**fields) -> str:
    """The shipped default A56 manifest with some fields replaced, its weights file by absolute path."""
    shipped = json.loads((WEIGHTS_DIR / f"{A56}.json").read_text())
    return json.dumps({**shipped, "file": str(WEIGHTS_DIR / shipped["file"]), **fields})


@pytest.mark.parametrize("manifest", [None, "{}", "[1]", "not json", _shipped_with(metrics=None),
                                      _shipped_with(input_size="32px"), _shipped_with(mean=[0.5, 0.5])],
                         ids=["missing", "empty", "list", "text", "null-metrics", "text-size", "short-mean"])
def test_a_model_that_fails_to_load_keeps_the_others_serving_but_not_ready(tmp_path, manifest):
    path = tmp_path / "broken.json"
    if manifest is not None:
        path.write_text(manifest)
    with TestClient(create_app(Settings(weights=f"DEFAULT,{path}"))) as c:
        assert_problem(c.get("/readyz"), 503, "Model not ready", "broken.json")
        assert post(c, corpus.png(corpus.photo())).status_code == 200
        assert len(c.get("/api/v1/models").json()["models"]) == 2


def test_a_default_model_that_is_not_loaded_leaves_the_best_answering_and_the_server_unready():
    with TestClient(create_app(Settings(default_model="nope"))) as c:
        assert_problem(c.get("/readyz"), 503, "Model not ready", "default model 'nope'")
        assert post(c, corpus.png(corpus.photo())).json()["weights"] == A92  # the best top-1, as unset
    with TestClient(create_app(Settings(weights="nope,DEFAULT"))) as c:  # a name no weights have
        assert_problem(c.get("/readyz"), 503, "Model not ready", "unknown weights 'nope': name shipped weights")


def test_page_renders_with_relative_urls(client):
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="model-line"' in html and "attention56_cifar" in html
    assert 'href="static/style.css"' in html and 'src="static/js/main.js"' in html
    assert 'src="/' not in html and 'href="/' not in html
    for example in ("chelsea.jpg", "cifar10-cat.jpg"):
        assert f"static/examples/{example}" in html
        served = client.get(f"/static/examples/{example}")
        assert served.headers["content-type"] == "image/jpeg"
        assert served.content == (corpus.PHOTOS / example).read_bytes()
    assert_problem(client.get("/static/examples/nothing.jpg"), 404, "Not Found")



# --- the real server: uvicorn in a subprocess, spoken to over a socket ---------------------------------
# The test client always sends a Content-Length, so only the header check of the upload reader runs there.
# A chunked body has none: only the checks made while the body streams in can stop it.

SERVER_MAX_BYTES = 100_000
SERVER_MAX_PIXELS = 10_000
BOUNDARY = "ranlens-test-boundary"
ANSWER_TIMEOUT = 20  # seconds to wait for a refusal


@pytest.fixture(scope="module")
def server():
    command = [sys.executable, "-m", "uvicorn", "ranlens.app.main:app", "--host", "127.0.0.1"]
    with running_server(command, RANLENS_MAX_UPLOAD_BYTES=str(SERVER_MAX_BYTES),
                        RANLENS_MAX_IMAGE_PIXELS=str(SERVER_MAX_PIXELS), RANLENS_TORCH_THREADS="1") as url:
        yield url


def multipart(*fields: tuple[str, bytes, str]) -> bytes:
    """A multipart/form-data body with ``(name, data, content_type)`` file fields."""
    out = b""
    for name, data, ctype in fields:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.bin\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def raw_post(url: str, body: bytes, *, send: int | None = None, headers: tuple = (), chunk: int = 4096):
    """POSTs ``body`` to /api/v1/predict chunked, with no Content-Length, over a plain socket.

    With ``send``, stops after the chunk that carries byte number ``send`` and never finishes the body:
    any answer then came while the upload was still streaming. Returns (status, headers, body bytes).
    """
    parsed = urlsplit(url)
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        request_headers = [("Host", parsed.netloc), ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
                           *(headers or [("Transfer-Encoding", "chunked")])]
        sock.sendall(conn.send(h11.Request(method="POST", target="/api/v1/predict", headers=request_headers)))
        end = len(body) if send is None else send
        sent = 0
        while sent < end:
            piece = body[sent:sent + chunk]
            sock.sendall(conn.send(h11.Data(data=piece)))
            sent += len(piece)
        if send is None and body:
            sock.sendall(conn.send(h11.EndOfMessage()))
        response, data = None, b""
        # a refusal mid-stream needs no model, so it must come quickly; a whole upload may run inference
        wait = ANSWER_TIMEOUT if send is not None else 120
        sock.settimeout(wait)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    received = sock.recv(65536)
                except TimeoutError:
                    pytest.fail(f"no answer within {wait} s"
                                + (f" after {sent:,} of {len(body):,} body bytes: the server waits for the rest"
                                   " instead of refusing the upload" if send is not None else ""))
                assert received or response is not None, "the server closed the connection without answering"
                conn.receive_data(received)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    return response.status_code, {k.decode(): v.decode() for k, v in response.headers}, data


def assert_raw_problem(answer, status: int, title: str, detail: str) -> None:
    code, headers, data = answer
    assert code == status, data
    assert headers["content-type"].startswith(PROBLEM), headers
    body = json.loads(data)
    assert (body["status"], body["title"]) == (status, title) and detail in body["detail"], body


def assert_still_serving(url: str) -> None:
    assert httpx.get(url + "readyz", timeout=30).json()["status"] == "ready"
    with (corpus.PHOTOS / "cifar10-cat.jpg").open("rb") as f:  # 32x32: under SERVER_MAX_PIXELS
        answer = httpx.post(url + "api/v1/predict", files={"file": ("c.jpg", f, "image/jpeg")}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "cat"


def test_chunked_upload_without_content_length_works(server):
    """The control for the tests below: a chunked upload under the limits is served."""
    data = corpus.encode(corpus.photo().resize((80, 60)), "JPEG")
    assert len(data) < SERVER_MAX_BYTES
    code, _, body = raw_post(server, multipart(("file", data, "image/jpeg")))
    assert code == 200, body
    assert len(json.loads(body)["predictions"]) == 5


def test_chunked_file_over_the_limit_is_cut_off_mid_stream(server):
    file_field = multipart(("file", b"\xff\xd8\xff" + b"\0" * (SERVER_MAX_BYTES + 4000), "image/jpeg"))
    header_len = file_field.index(b"\xff\xd8\xff")
    # the whole body is under the reader's total-body allowance: only the per-file count can refuse it
    assert len(file_field) < SERVER_MAX_BYTES + 64 * 1024
    answer = raw_post(server, file_field, send=header_len + SERVER_MAX_BYTES + 1)
    assert_raw_problem(answer, 413, "Upload too large", f"{SERVER_MAX_BYTES:,} bytes")
    assert_still_serving(server)


def test_chunked_body_over_the_limit_is_cut_off_mid_stream(server):
    # each field is under the per-file limit; together they are over the whole-body allowance
    fields = [(f"field{i}", b"\0" * (SERVER_MAX_BYTES - 10_000), "application/octet-stream") for i in range(3)]
    body = multipart(*fields)
    answer = raw_post(server, body, send=SERVER_MAX_BYTES + 64 * 1024 + 1)
    assert_raw_problem(answer, 413, "Upload too large", f"{SERVER_MAX_BYTES:,} bytes")
    assert_still_serving(server)


def test_declared_length_over_the_limit_is_refused_before_the_body(server):
    declared = [("Content-Length", str(50 * SERVER_MAX_BYTES))]
    answer = raw_post(server, b"", send=0, headers=declared)
    assert_raw_problem(answer, 413, "Upload too large", f"{SERVER_MAX_BYTES:,} bytes")
    assert_still_serving(server)


def test_pixel_limit_comes_from_the_environment(server):
    side = int(SERVER_MAX_PIXELS**0.5) + 1
    data = corpus.png(Image.new("RGB", (side, side)))
    code, headers, body = raw_post(server, multipart(("file", data, "image/png")))
    assert_raw_problem((code, headers, body), 413, "Image too large", f"the limit is {SERVER_MAX_PIXELS:,}")
    assert_still_serving(server)


def test_a_body_of_many_empty_parts_is_refused_at_the_seventeenth(client):
    """10 MiB of empty multipart parts were a million kept parts (390 MiB, seconds of a blocked server);
    this client's limit is 2 MiB, so 150,000 of them here."""
    body = b"--b\r\n\r\n\r\n" * 150_000 + b"--b--\r\n"
    r = client.post("/api/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_problem(r, 400, "Malformed multipart body", "more than 16 parts")
