"""Teaching routes: the architecture view's data and the attention-off ablation."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app
from ranlens.model import get_model
from ranlens.model.architecture import architecture

from . import corpus


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings())) as c:
        yield c


@pytest.mark.parametrize("name", ["attention56_cifar", "attention92_cifar", "attention56", "attention92"])
def test_architecture_lists_exactly_the_models_modules(name):
    model = get_model(name, num_classes=10)
    size = model.config.reference_size
    arch = architecture(model, size)
    listed = [m["name"] for stage in arch["stages"] for m in stage["modules"]]
    assert listed == model.module_names
    with torch.no_grad():
        out = model.eval().forward_intermediates(torch.zeros(1, 3, size, size))
    assert [m["resolution"] for s in arch["stages"] for m in s["modules"]] == [list(a.resolution) for a in out.attention]
    for stage in arch["stages"]:
        for m in stage["modules"]:
            levels = m["mask_levels"]
            assert levels[0] == m["resolution"] and len(levels) == m["mask_depth"] + 1
    assert arch["classifier"]["classes"] == 10


def test_architecture_routes(client):
    served = client.get("/api/v1/models/attention56_cifar/architecture").json()
    assert [m["name"] for s in served["stages"] for m in s["modules"]] == [
        "stage1.module1", "stage2.module1", "stage3.module1"]
    a92 = client.get("/api/v1/architectures/attention92_cifar").json()
    assert [len(s["modules"]) for s in a92["stages"]] == [2, 2, 2]
    assert client.get("/api/v1/architectures/vgg16").status_code == 404


@pytest.mark.parametrize("name, classes", [("attention56_cifar", 10), ("attention92_cifar", 10),
                                           ("attention56", 1000), ("attention92", 1000)])
def test_a_layout_is_described_with_its_own_class_count(client, name, classes):
    """The CIFAR layouts with CIFAR-10's 10 classes; the ImageNet layouts with the registry's default
    head (get_model without num_classes), ImageNet's 1,000, not CIFAR's 10."""
    body = client.get(f"/api/v1/architectures/{name}").json()
    assert body["classifier"]["classes"] == classes
    if classes == 1000:
        assert get_model(name).num_classes == classes


def test_ablation_matches_the_model_with_masks_zeroed(client):
    data = corpus.png(corpus.photo("chelsea.jpg"))
    body = client.post("/api/v1/ablate", files={"file": ("c.png", data, "image/png")}).json()
    explainer = client.app.state.catalog.default
    x = explainer.preprocess(corpus.photo("chelsea.jpg")).unsqueeze(0)
    model = explainer.model
    with torch.no_grad():
        expected = {
            "normal": torch.softmax(model(x), 1)[0],
            "all_off": torch.softmax(model.forward_intermediates(x, masks_off=True).logits, 1)[0],
        }
        for name in model.module_names:
            expected[name] = torch.softmax(model.forward_intermediates(x, masks_off=[name]).logits, 1)[0]
    torch.testing.assert_close(torch.tensor(body["normal"]["probabilities"]), expected["normal"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(body["all_off"]["probabilities"]), expected["all_off"], atol=1e-5, rtol=0)
    assert [m["module"] for m in body["per_module"]] == model.module_names
    for entry in body["per_module"]:
        assert entry["masks_off"] == [entry["module"]]
        torch.testing.assert_close(torch.tensor(entry["probabilities"]), expected[entry["module"]], atol=1e-5, rtol=0)
    # attention really matters for this image
    assert not torch.allclose(expected["normal"], expected["all_off"], atol=1e-3)
    assert len(body["normal"]["top"]) == 5
    spec = client.get("/openapi.json").json()
    assert "/api/v1/ablate" in spec["paths"]


def test_ablation_bad_input(client):
    r = client.post("/api/v1/ablate", files={"file": ("x.txt", b"text", "text/plain")})
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/problem+json")
