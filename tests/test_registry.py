"""Every registered layout against the paper's figures."""

from __future__ import annotations

import pytest

from ranlens.model import ARCHITECTURES, count_parameters, get_model

# Wang et al. 2017: CIFAR-10 Attention-92 has 1.9M parameters; ImageNet Attention-56/92 31.9M/51.3M
# in the paper's table, 31.8M/52.5M in the official deploy prototxts, which we follow.
PAPER_PARAMETERS = {
    "attention92_cifar": (1.9e6, 10),
    "attention56": (31.8e6, 1000),
    "attention92": (52.5e6, 1000),
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_parameter_count_matches_the_paper_within_5_percent(name):
    expected, classes = PAPER_PARAMETERS[name]
    count = count_parameters(get_model(name, num_classes=classes))
    assert abs(count - expected) / expected < 0.05, f"{name}: {count / 1e6:.2f}M vs {expected / 1e6:.2f}M"


def test_cifar_layouts_have_m_modules_in_every_stage():
    # trunk depth 36m + 20: m = 1 is Attention-56, m = 2 Attention-92
    assert ARCHITECTURES["attention56_cifar"].modules_per_stage == (1, 1, 1)
    assert ARCHITECTURES["attention92_cifar"].modules_per_stage == (2, 2, 2)
    names = get_model("attention92_cifar", num_classes=10).module_names
    assert names == [f"stage{s}.module{m}" for s in (1, 2, 3) for m in (1, 2)]
