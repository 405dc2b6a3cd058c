"""The network itself: shapes, masks, ablation, parameter counts, determinism."""

from __future__ import annotations

import pytest
import torch

from ranlens.model import count_parameters, get_model, list_models
from ranlens.model.network import AttentionModule, ResidualUnit, SoftMaskBranch

MODULES_PER_MODEL = {"attention56": 3, "attention92": 6, "attention56_cifar": 3, "attention92_cifar": 6}


def test_registry_lists_every_variant():
    assert list_models() == sorted(MODULES_PER_MODEL)
    with pytest.raises(ValueError, match="unknown model"):
        get_model("attention1000")


@pytest.mark.parametrize("name", sorted(MODULES_PER_MODEL))
@pytest.mark.parametrize("size", [224, 32, 37])
def test_shapes_and_masks(name, size):
    torch.manual_seed(0)
    # train-mode BN normalises activations; an untrained net in eval mode has exploding
    # activations that saturate float32 sigmoids, which says nothing about the architecture
    model = get_model(name, num_classes=7).train()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model.forward_intermediates(x)
        plain = model(x)
    assert out.logits.shape == (2, 7)
    torch.testing.assert_close(out.logits, plain)
    assert [a.name for a in out.attention] == model.module_names
    assert len(out.attention) == MODULES_PER_MODEL[name]
    for a in out.attention:
        assert a.mask.shape == a.trunk.shape
        assert a.mask.shape[0] == 2
        # masks must be strictly inside (0, 1): a sigmoid that saturates would hide the attention
        assert float(a.mask.min()) > 0 and float(a.mask.max()) < 1
    # each stage's mask resolution halves, whatever the input size (odd sizes round up)
    stages = {a.stage: a.resolution for a in out.attention}
    assert sorted(stages) == [1, 2, 3]
    assert stages[2][0] == (stages[1][0] + 1) // 2 and stages[3][0] == (stages[2][0] + 1) // 2


def test_reference_resolutions():
    cifar = get_model("attention56_cifar", num_classes=10).eval()
    imagenet = get_model("attention56", num_classes=10).eval()
    with torch.no_grad():
        c = cifar.forward_intermediates(torch.randn(1, 3, 32, 32))
        i = imagenet.forward_intermediates(torch.randn(1, 3, 224, 224))
    assert [a.resolution for a in c.attention] == [(32, 32), (16, 16), (8, 8)]
    assert [a.resolution for a in i.attention] == [(56, 56), (28, 28), (14, 14)]
    assert [a.mask.shape[1] for a in c.attention] == [64, 128, 256]


@pytest.mark.parametrize("name,expected", [("attention56", 31.8e6), ("attention92", 52.5e6)])
def test_official_parameter_counts(name, expected):
    params = count_parameters(get_model(name, num_classes=1000))
    assert abs(params - expected) / expected < 0.01, params


def test_soft_mask_bottom_is_lowest_resolution():
    branch = SoftMaskBranch(channels=8, depth=3)
    seen = []
    handle = branch.bottom.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    branch(torch.randn(1, 8, 56, 56))
    handle.remove()
    assert seen == [torch.Size([7, 7])]


def test_residual_unit_projection_only_where_shape_changes():
    assert ResidualUnit(16, 16).projection is None
    assert ResidualUnit(16, 64).projection is not None
    assert ResidualUnit(64, 64, stride=2).projection is not None
    assert ResidualUnit(16, 64, stride=2)(torch.randn(1, 16, 9, 9)).shape == (1, 64, 5, 5)


def test_ablation_changes_output_and_zeroed_module_equals_trunk_path():
    torch.manual_seed(0)
    model = get_model("attention56_cifar", num_classes=10).eval()
    # give BN non-trivial statistics so that the mask matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        normal = model.forward_intermediates(x)
        off = model.forward_intermediates(x, masks_off=True)
        one = model.forward_intermediates(x, masks_off=["stage2.module1"])
    assert not torch.allclose(normal.logits, off.logits)
    assert not torch.allclose(normal.logits, one.logits)
    assert all(float(a.mask.abs().max()) == 0 for a in off.attention)
    assert float(one["stage1.module1"].mask.max()) > 0 and float(one["stage2.module1"].mask.max()) == 0
    # with M = 0 a module is exactly post(trunk(pre(x))): attention residual learning
    module: AttentionModule = model.attention_modules()["stage1.module1"]
    with torch.no_grad():
        h = model.stages[0].transition(model.stem(x))
        record = []
        out = module(h, mask_off=True, record=record)
        torch.testing.assert_close(out, module.post(module.trunk(module.pre(h))))
        torch.testing.assert_close(record[0].trunk, module.trunk(module.pre(h)))
    with pytest.raises(ValueError, match="unknown attention modules"):
        model.forward_intermediates(x, masks_off=["stage9.module1"])


def test_eval_is_deterministic():
    model = get_model("attention56_cifar", num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a = model.forward_intermediates(x)
        b = model.forward_intermediates(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(p.mask, q.mask) for p, q in zip(a.attention, b.attention))


def test_module_output_is_post_of_one_plus_mask_times_trunk():
    """H = post((1 + M) * T), computed from the module's own pre unit, trunk, mask branch and post unit."""
    model = get_model("attention56_cifar", weights="DEFAULT")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m.name, args[0]))
               for m in model.attention_modules().values()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert list(inputs) == model.module_names
    for name, module in model.attention_modules().items():
        with torch.no_grad():
            record = []
            out = module(inputs[name], record=record)
            (a,) = record
            pre = module.pre(inputs[name])
            torch.testing.assert_close(a.trunk, module.trunk(pre))
            torch.testing.assert_close(a.mask, module.mask(pre))
            torch.testing.assert_close(out, module.post((1 + a.mask) * a.trunk))
            # the formula matters here: other ways to combine M and T give other outputs
            for other in (a.trunk + a.mask, a.mask * a.trunk, a.trunk):
                assert not torch.allclose(out, module.post(other), atol=1e-3), name
