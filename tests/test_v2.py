"""The Open Inference Protocol (KServe v2) REST API, called with Triton's own HTTP client."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ranlens.model import get_weights
from ranlens.model.weights import DEFAULT_WEIGHTS, list_weights

from .live import live_server
from .test_serving import sample

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar10-test"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def server():
    with live_server() as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.removeprefix("http://").rstrip("/"))
    yield c
    c.close()


def test_health_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    for name, modules in (("attention56_cifar", 3), ("attention92_cifar", 6)):
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["name"] == name and meta["versions"][0].startswith(name + ".v")
        assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {"image": "BYTES", "input": "FP32"}
        assert [o["name"] for o in meta["outputs"]][:2] == ["logits", "probabilities"]
        assert sum(o["name"].startswith("mask:") for o in meta["outputs"]) == modules
    with pytest.raises(InferenceServerException, match="no model 'resnet50'"):
        client.get_model_metadata("resnet50")


def test_pictures_as_bytes_give_the_same_answer_as_the_rest_api(client, server):
    files = [FIXTURES / "cat" / "0000.jpg", FIXTURES / "ship" / "0000.jpg", FIXTURES / "horse" / "0001.jpg"]
    pictures = np.array([f.read_bytes() for f in files], dtype=np.object_)
    image = triton.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(pictures, binary_data=True)  # the binary tensor extension, as Triton sends it
    wanted = [triton.InferRequestedOutput(n) for n in ("logits", "probabilities", "mask:stage2.module1")]
    result = client.infer("attention92_cifar", [image], outputs=wanted, request_id="r1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 10) and result.get_response()["id"] == "r1"
    assert result.get_response()["model_version"].startswith("attention92_cifar.v")
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    logits = result.as_numpy("logits")
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probabilities, atol=1e-5)
    assert result.as_numpy("mask:stage2.module1").shape == (3, 128, 16, 16)
    for f, row in zip(files, probabilities):
        rest = httpx.post(server + "api/v1/predict", params={"model": "attention92_cifar", "top_k": 10},
                          files={"file": (f.name, f.read_bytes(), "image/jpeg")}, timeout=60).json()
        by_label = {p["label"]: p["probability"] for p in rest["predictions"]}
        np.testing.assert_allclose(row, [by_label[c] for c in CLASSES], atol=1e-4)
    assert [CLASSES[i] for i in probabilities.argmax(1)][:2] == ["cat", "ship"]


def test_a_preprocessed_tensor_in_fp32(client):
    weights = get_weights("attention56_cifar", "DEFAULT")
    from PIL import Image

    x = weights.transforms()(Image.open(FIXTURES / "cat" / "0001.jpg").convert("RGB")).unsqueeze(0).numpy()
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=False)  # JSON numbers this time
    result = client.infer("attention56_cifar", [tensor])
    assert CLASSES[int(result.as_numpy("probabilities").argmax())] == "cat"
    assert result.as_numpy("logits").shape == (1, 10)


def test_bad_requests_are_clear_errors(client, server):
    junk = triton.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="(?i)image"):
        client.infer("attention56_cifar", [junk])
    wrong = triton.InferInput("input", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match=r"\[N, 3, 32, 32\]"):
        client.infer("attention56_cifar", [wrong])
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([(FIXTURES / "cat" / "0000.jpg").read_bytes()], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="no output 'mask:stage9'"):
        client.infer("attention56_cifar", [image], outputs=[triton.InferRequestedOutput("mask:stage9")])
    r = httpx.post(server + "v2/models/attention56_cifar/infer", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    assert "not JSON" in r.json()["error"]


def test_a_model_version_has_its_own_routes(client):
    """The metadata's `versions` name routes of their own (/v2/models/{name}/versions/{version}/...),
    which Triton's client calls when given model_version."""
    version = client.get_model_metadata("attention56_cifar")["versions"][0]
    assert client.get_model_metadata("attention56_cifar", model_version=version)["versions"] == [version]
    assert client.is_model_ready("attention56_cifar", model_version=version)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([(FIXTURES / "cat" / "0000.jpg").read_bytes()], dtype=np.object_))
    result = client.infer("attention56_cifar", [image], model_version=version)
    assert result.get_response()["model_version"] == version
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               client.infer("attention56_cifar", [image]).as_numpy("probabilities"), atol=1e-6)
    assert not client.is_model_ready("attention56_cifar", model_version="attention56_cifar.v1")
    with pytest.raises(InferenceServerException, match="no version 'attention56_cifar.v1'"):
        client.infer("attention56_cifar", [image], model_version="attention56_cifar.v1")


@pytest.mark.parametrize("method, path, status", [
    ("GET", "v2/nowhere", 404), ("DELETE", "v2/models/attention56_cifar/ready", 405),
    ("GET", "v2/models/attention56_cifar/versions/nothing", 404),
])
def test_every_v2_error_has_the_error_member_triton_reads(server, method, path, status):
    r = httpx.request(method, server + path, timeout=30)
    assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["error"] == r.json()["detail"]


def test_an_invalid_request_says_what_is_invalid(client):
    half = triton.InferInput("input", [1, 3, 32, 32], "FP16")
    half.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float16))
    with pytest.raises(InferenceServerException, match=r"\[422\].*datatype.*'BYTES' or 'FP32'"):
        client.infer("attention56_cifar", [half])
    flat = triton.InferInput("image", [1, 1], "BYTES")
    flat.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"shape \[N\].*\[1, 1\]"):
        client.infer("attention56_cifar", [flat])
    batch = triton.InferInput("image", [2], "BYTES")
    batch.set_data_from_numpy(np.array([(FIXTURES / "cat" / "0000.jpg").read_bytes(), b"junk"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"image\[1\]: "):
        client.infer("attention56_cifar", [batch])


def test_non_finite_inputs_are_refused_in_binary_as_in_json(client, server):
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 1, 2, 3] = np.nan
    tensor = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)  # NaN travels in binary; the answer would be NaN
    with pytest.raises(InferenceServerException, match="values must be finite"):
        client.infer("attention56_cifar", [tensor])
    values = np.zeros((1, 3, 32, 32)).tolist()
    values[0][1][2][3] = 1e39  # JSON has no NaN: a number over float32's range becomes infinity
    r = httpx.post(server + "v2/models/attention56_cifar/infer", timeout=30, json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": values}]})
    assert r.status_code == 400 and "values must be finite" in r.json()["error"]


def test_every_answer_carries_the_out_of_distribution_verdict_of_the_rest_api(client, server):
    """Programs calling the protocol get what /api/v1/predict gives a person: the score, its threshold
    and the flag, by default and per picture; noise is flagged, a CIFAR test image is not."""
    import io

    from PIL import Image

    buffer = io.BytesIO()  # photo-sized noise: the page's and test_ood's out-of-distribution example
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, "PNG")
    pictures = [(FIXTURES / "cat" / "0000.jpg").read_bytes(), buffer.getvalue()]
    meta = {o["name"]: o["datatype"] for o in client.get_model_metadata("attention56_cifar")["outputs"]}
    assert meta["ood_score"] == "FP32" and meta["out_of_distribution"] == "BOOL"
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(pictures, dtype=np.object_), binary_data=True)
    result = client.infer("attention56_cifar", [image])
    answer = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(answer) == ["logits", "probabilities", "ood_score", "out_of_distribution"]
    flags, scores = result.as_numpy("out_of_distribution"), result.as_numpy("ood_score")
    assert flags.dtype == np.bool_ and flags.tolist() == [False, True]
    for data, score, flag in zip(pictures, scores, flags):
        rest = httpx.post(server + "api/v1/predict", params={"model": "attention56_cifar"},
                          files={"file": ("x", data, "application/octet-stream")}, timeout=60).json()
        assert rest["out_of_distribution"] == flag and abs(rest["ood_score"] - score) < 1e-3
        assert answer["ood_score"]["parameters"]["ood_threshold"] == rest["ood_threshold"]
    only = client.infer("attention56_cifar", [image], outputs=[triton.InferRequestedOutput("out_of_distribution")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["out_of_distribution"]


@pytest.mark.parametrize(("header_length", "body", "detail"), [
    ("\u00b2", b'{"inputs": []}', "does not fit"),  # a digit to str.isdigit, not to int()
    (None, b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nested past the JSON parser's depth
])
def test_malformed_headers_and_bodies_are_400_not_500(header_length, body, detail):
    from ranlens.app.core import oip
    from ranlens.app.core.problems import Problem

    with pytest.raises(Problem, match=detail) as caught:
        oip.parse_request(body, header_length)
    assert caught.value.status == 400


def test_deep_json_and_a_boolean_binary_size_are_clear_errors(server):
    infer = server + "v2/models/attention56_cifar/infer"
    deep = '{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": %s1%s}]}'
    for depth in (900, 100_000):  # within the JSON parser's depth, and past it
        r = httpx.post(infer, content=deep % ("[" * depth, "]" * depth), timeout=60)
        assert r.status_code == 400 and r.json()["error"], r.text[:300]
    header = b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", ' \
             b'"parameters": {"binary_data_size": true}}]}'
    r = httpx.post(infer, content=header + b"\0", headers={"inference-header-content-length": str(len(header))},
                   timeout=60)
    assert r.status_code == 400 and "binary_data_size True" in r.json()["error"]


def test_finite_inputs_that_overflow_the_network_are_refused(client):
    """Values no normalised image has (3e38) are finite, but the network's outputs overflow: NaN
    outputs would break the schema's numbers and read as in distribution."""
    tensor = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.full((1, 3, 32, 32), 3e38, np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="too large for the network"):
        client.infer("attention56_cifar", [tensor])


MEMORY_PROBE = """
import io, json, resource, struct
from PIL import Image
from ranlens.app.api.routes import v2
from ranlens.app.core import oip
from ranlens.model.catalog import load_catalog

buffer = io.BytesIO()
Image.new("RGB", (3000, 3000), (120, 30, 200)).save(buffer, "PNG")  # 27 MB decoded, 33 KB as a PNG
explainer = load_catalog("DEFAULT", arch="attention56_cifar")[0].default
peaks = []
for n in (1, 16):
    raw = b"".join(struct.pack("<I", len(buffer.getvalue())) + buffer.getvalue() for _ in range(n))
    header = json.dumps({"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    v2._input_batch(explainer, *oip.parse_request(header + raw, str(len(header))), 40_000_000)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(peaks))
"""


def test_a_batch_of_large_pictures_holds_one_decoded_picture_at_a_time():
    """Sixteen 3000 x 3000 PNGs fit a request in half a megabyte but decode to 27 MB each: decoded all
    before cropping they took 430 MB more than one did (peak RSS); cropped as each is decoded, a few."""
    import json
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    one, sixteen = json.loads(result.stdout.strip().splitlines()[-1])
    assert sixteen - one < 3 * 27_000_000, (one, sixteen)


def _infer_image(server: str, model: str, body: dict, **kw) -> httpx.Response:
    data = (FIXTURES / "cat" / "0000.jpg").read_bytes()
    import base64

    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(data).decode()]}], **body}
    return httpx.post(server + f"v2/models/{model}/infer", json=body, timeout=60, **kw)


def test_outputs_asked_for_in_binary_follow_the_json_as_triton_sends_them(server):
    """binary_data_output (every output) and an output's binary_data (that one) put the outputs after a
    JSON header whose length is in Inference-Header-Content-Length: the same numbers as the JSON
    answer, FP32 little-endian and BOOL a byte each."""
    plain = _infer_image(server, "attention56_cifar", {})
    assert plain.status_code == 200 and "inference-header-content-length" not in plain.headers
    expected = {o["name"]: np.array(o["data"]) for o in plain.json()["outputs"]}
    r = _infer_image(server, "attention56_cifar", {"id": "b1", "parameters": {"binary_data_output": True}})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    import json

    header, offset = json.loads(r.content[:length]), length
    assert header["id"] == "b1" and [o["name"] for o in header["outputs"]] == list(expected)
    for output in header["outputs"]:
        assert "data" not in output
        size = output["parameters"]["binary_data_size"]
        values = np.frombuffer(r.content[offset: offset + size], "<f4" if output["datatype"] == "FP32" else np.bool_)
        offset += size
        np.testing.assert_allclose(values, expected[output["name"]], atol=1e-6)
    assert offset == len(r.content)
    score = next(o for o in header["outputs"] if o["name"] == "ood_score")
    assert score["parameters"]["ood_threshold"] == next(o for o in plain.json()["outputs"]
                                                        if o["name"] == "ood_score")["parameters"]["ood_threshold"]
    # one output in binary, one in JSON, and a flag that is no boolean refused
    mixed = _infer_image(server, "attention56_cifar", {"outputs": [
        {"name": "logits"}, {"name": "probabilities", "parameters": {"binary_data": True}}]})
    length = int(mixed.headers["inference-header-content-length"])
    logits, probabilities = json.loads(mixed.content[:length])["outputs"]
    assert "data" in logits and "data" not in probabilities and len(mixed.content) == length + 4 * 10
    bad = _infer_image(server, "attention56_cifar", {"parameters": {"binary_data_output": "yes"}})
    assert bad.status_code == 400 and "binary_data_output" in bad.json()["error"]


def test_tritons_client_reads_binary_and_json_answers_alike(client):
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([(FIXTURES / "cat" / "0000.jpg").read_bytes()], dtype=np.object_))
    answers = [client.infer("attention92_cifar", [image], outputs=[
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "out_of_distribution")])
        for binary in (True, False)]
    np.testing.assert_allclose(answers[0].as_numpy("probabilities"), answers[1].as_numpy("probabilities"), atol=1e-6)
    assert answers[0].as_numpy("out_of_distribution").tolist() == answers[1].as_numpy("out_of_distribution").tolist()
    assert answers[0].as_numpy("probabilities").argmax() == CLASSES.index("cat")


def test_an_answer_too_large_is_refused_before_the_model_runs(server):
    """Every mask of 64 pictures would be some 70 MB of JSON for a request of a few kilobytes."""
    masks = [o for o in httpx.get(server + "v2/models/attention56_cifar", timeout=30).json()["outputs"]
             if o["name"].startswith("mask:")]
    fits = 2**21 // sum(int(np.prod(o["shape"][1:])) for o in masks)  # the server's MAX_OUTPUT_VALUES
    masks = [{"name": o["name"]} for o in masks]
    import base64

    picture = base64.b64encode((FIXTURES / "cat" / "0000.jpg").read_bytes()).decode()
    r = httpx.post(server + "v2/models/attention56_cifar/infer", timeout=60, json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [64], "data": [picture] * 64}], "outputs": masks})
    assert r.status_code == 413 and f"send at most {fits} pictures" in r.json()["error"], r.text[:300]
    one = _infer_image(server, "attention56_cifar", {"outputs": masks})
    assert one.status_code == 200 and len(one.json()["outputs"]) == 3


def test_unusable_pictures_get_the_status_of_the_rest_api(server):
    import base64

    from . import corpus

    r = httpx.post(server + "v2/models/attention56_cifar/infer", timeout=60, json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1],
         "data": [base64.b64encode(corpus.decompression_bomb()).decode()]}]})
    assert r.status_code == 413 and r.json()["title"] == "Image too large" and r.json()["error"]


@pytest.mark.parametrize("body", [
    {"id": "\ud800"},  # a lone surrogate, which the answer that echoes the id could not encode
])
def test_an_id_that_is_no_text_is_refused_before_the_model_runs(server, body):
    import json

    raw = json.dumps({**body, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                          "data": [0.0] * 3072}]})  # ensure_ascii: sent as \ud800
    r = httpx.post(server + "v2/models/attention56_cifar/infer", content=raw, timeout=60)
    assert r.status_code == 422 and "surrogate" in r.json()["error"], r.text[:300]


def test_numbers_past_any_float_and_lengths_past_int_are_400_not_500():
    from ranlens.app.core import oip
    from ranlens.app.core.problems import Problem

    with pytest.raises(Problem, match="values must be finite") as caught:
        oip.fp32_tensor([10**400, 0.0], None, [2], "input")  # json.loads reads it as a Python int
    assert caught.value.status == 400
    with pytest.raises(Problem, match="does not fit") as caught:
        oip.parse_request(b"{}", "9" * 5000)  # int() refuses over 4300 digits (ValueError)
    assert caught.value.status == 400


def test_versions_of_an_architecture_are_reachable_by_the_names_the_metadata_gives():
    """With two weights of one architecture served, each answers under the architecture's name and
    its own version, as the metadata lists them."""
    shipped = [w.name for w in list_weights("attention56_cifar")]  # oldest first
    assert len(shipped) >= 2, shipped
    older, newer = shipped[-2:]
    with live_server(RANLENS_WEIGHTS=f"{older},{newer}", RANLENS_DEFAULT_MODEL=newer) as url:
        meta = httpx.get(url + f"v2/models/{older}", timeout=30).json()
        assert meta["name"] == "attention56_cifar" and meta["versions"] == [older]
        listed = httpx.get(url + "v2/models/attention56_cifar", timeout=30).json()["versions"]
        assert listed == [newer, older]
        for version in listed:
            base = f"{url}v2/models/attention56_cifar/versions/{version}"
            assert httpx.get(base + "/ready", timeout=30).json()["ready"] is True
            assert httpx.get(base, timeout=30).json()["versions"] == [version]
            answer = _infer_image(url, f"attention56_cifar/versions/{version}", {})
            assert answer.json()["model_version"] == version
        r = httpx.get(url + f"v2/models/{older}/versions/{newer}", timeout=30)
        assert r.status_code == 404 and f"its versions are {older}" in r.json()["error"]


def test_a_client_gone_mid_request_is_a_400_not_a_500(caplog):
    """Like /api/v1/predict's "Incomplete upload": the client that sends half a body and goes is
    answered 400, the app's /metrics (asked through the same app) count that 400 under the infer route
    and no 5xx anywhere, and the app logs no error (an exception in a handler would be one). In
    process, with the ASGI messages of a disconnect, which a live server cannot be made to send on cue."""
    import logging

    from ranlens.app.core.config import Settings
    from ranlens.app.main import create_app

    app = create_app(Settings(weights=DEFAULT_WEIGHTS["attention56_cifar"], trace=False, _env_file=None))
    messages = [{"type": "http.request", "body": b'{"inputs":', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    path = "/v2/models/attention56_cifar/infer"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"application/json"), (b"host", b"x")], "server": ("x", 80)}
    from fastapi.testclient import TestClient

    with TestClient(app) as running:  # runs the lifespan: the models load
        caplog.set_level(logging.WARNING)
        running.portal.call(app, scope, receive, send)
        metrics = running.get("/metrics").text
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [400]
    infer = dict(method="POST", route="/v2/models/{name}/infer")
    assert sample(metrics, "ranlens_http_requests_total", **infer, status="400") == 1, metrics
    statuses = re.findall(r'^ranlens_http_requests_total\{.*\bstatus="(\d+)"', metrics, re.M)
    assert statuses and not [s for s in statuses if s.startswith("5")], metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_one_picture_always_fits_and_an_output_is_asked_for_once(monkeypatch):
    """The answer cap limits pictures, never one: every mask of one 224-pixel Attention-92 alone is over
    it, and /api/v1/explain answers them all. An output named twice is refused, not merged."""
    from ranlens.app.api.routes import v2
    from ranlens.app.api.schemas import InferRequest
    from ranlens.app.core.problems import Problem
    from ranlens.model.catalog import load_catalog

    explainer = load_catalog("DEFAULT", arch="attention56_cifar")[0].default
    masks = [{"name": f"mask:{m['module']}"} for m in explainer.modules]

    def request(pictures: int, outputs: list[dict]) -> InferRequest:
        return InferRequest.model_validate({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [pictures]}],
                                            "outputs": outputs})

    monkeypatch.setattr(v2, "MAX_OUTPUT_VALUES", 1000)  # below one picture's masks
    assert v2._wanted(explainer, request(1, masks)) == [m["name"] for m in masks]
    with pytest.raises(Problem, match="send at most 1 picture a request") as caught:
        v2._wanted(explainer, request(2, masks))
    assert caught.value.status == 413
    with pytest.raises(Problem, match="'logits' is asked for twice") as caught:
        v2._wanted(explainer, request(1, [{"name": "logits"}, {"name": "logits"}]))
    assert caught.value.status == 400


def test_a_million_bad_outputs_get_a_short_answer(server):
    """Each of a million invalid outputs was once its own validation error: a 10 MB request got a 171 MB
    answer after seconds of a blocked server. A model has a dozen outputs; more than 64 is refused
    whole, and an answer lists at most 20 errors."""
    import json

    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}],
                       "outputs": [{"name": 1}] * 200_000})
    r = httpx.post(server + "v2/models/attention56_cifar/infer", content=body, timeout=60)
    assert r.status_code == 422 and len(r.content) < 5_000, (r.status_code, len(r.content))
    assert "at most 64" in r.json()["error"]
    bad_names = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}],
                            "outputs": [{"name": 1}] * 50})
    r = httpx.post(server + "v2/models/attention56_cifar/infer", content=bad_names, timeout=60)
    assert r.status_code == 422 and len(r.json()["errors"]) == 20
