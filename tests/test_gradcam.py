"""Other people's tools on the shipped model: Grad-CAM (pytorch-grad-cam) and plain forward hooks
on every attention module, as the model card promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ranlens.model import get_model, get_weights
from ranlens.model.imaging import decode_image

from .conftest import PHOTOS

MODULES = ["stage1.module1", "stage2.module1", "stage3.module1"]


@pytest.fixture(scope="module")
def shipped():
    weights = get_weights("attention56_cifar", "DEFAULT")
    model = get_model("attention56_cifar", weights=weights)
    image = decode_image((PHOTOS / "chelsea.jpg").read_bytes(), 10**8)
    return model, weights.transforms()(image).unsqueeze(0)


def test_the_shipped_model_lists_its_attention_modules(shipped):
    model, _ = shipped
    assert list(model.attention_modules()) == MODULES == model.module_names


@pytest.mark.parametrize("name", MODULES)
def test_gradcam_targets_each_attention_module(shipped, name):
    model, x = shipped
    module = model.attention_modules()[name]
    with torch.no_grad():
        predicted = int(model(x).argmax(1))
    with GradCAM(model=model, target_layers=[module]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(predicted)])
    assert heat.shape == (1, 32, 32)
    assert np.isfinite(heat).all()
    # a map, not a constant: Grad-CAM saw both the module's activations and their gradients
    assert float(heat.max() - heat.min()) > 0.1 and float(heat.std()) > 0.01


@pytest.mark.parametrize("name", MODULES)
def test_forward_hooks_on_an_attention_module_fire(shipped, name):
    model, x = shipped
    module = model.attention_modules()[name]
    seen = []
    handle = module.register_forward_hook(lambda m, args, output: seen.append(output.shape))
    try:
        with torch.no_grad():
            logits = model(x)
            out = model.forward_intermediates(x)
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, logits)
    # once per pass, with the module's output: (1 + M) * T after its post unit, at the mask's size
    assert len(seen) == 2 and seen[0] == seen[1]
    assert tuple(seen[0][-2:]) == out[name].resolution and seen[0][1] == out[name].mask.shape[1]
