"""Model registry in the style of ``torchvision.models``: ``list_models`` and ``get_model``."""

from __future__ import annotations

from .network import ArchConfig, ResidualAttentionNet
from .weights import Weights, get_weights

__all__ = ["ARCHITECTURES", "get_model", "list_models"]

ARCHITECTURES: dict[str, ArchConfig] = {
    # ImageNet layout (224x224): stages at 56/28/14 pixels, masks pooled 3/2/1 times down to 7x7.
    "attention56": ArchConfig("attention56", "imagenet", 64, (256, 512, 1024), (1, 1, 1), (3, 2, 1), 2048, 2, 224),
    "attention92": ArchConfig("attention92", "imagenet", 64, (256, 512, 1024), (1, 2, 3), (3, 2, 1), 2048, 2, 224),
    # CIFAR layout (32x32): 3x3 stem to 16, stages of 64/128/256 at 32/16/8 pixels (pre-act
    # ResNet-164 widths), masks pooled 3/2/1 times down to 4x4, final units stay at 8x8.
    # The paper's CIFAR networks put the same number m of modules in every stage (trunk depth
    # 36m + 20): Attention-56 is m = 1, Attention-92 is m = 2 (1.9M parameters in the paper).
    "attention56_cifar": ArchConfig("attention56_cifar", "cifar", 16, (64, 128, 256), (1, 1, 1), (3, 2, 1), 256, 1, 32),
    "attention92_cifar": ArchConfig("attention92_cifar", "cifar", 16, (64, 128, 256), (2, 2, 2), (3, 2, 1), 256, 1, 32),
}


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def get_model(
    name: str,
    *,
    weights: Weights | str | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> ResidualAttentionNet:
    """Builds ``name``; with ``weights`` (an object or its name, e.g. ``"attention56_cifar.v8"``
    or ``"DEFAULT"``) loads and verifies that checkpoint and puts the model in eval mode."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    if weights is not None:
        weights = get_weights(name, weights)
        if num_classes is not None and num_classes != len(weights.classes):
            raise ValueError(
                f"num_classes={num_classes} does not match the {len(weights.classes)} classes of {weights.name}"
            )
        num_classes = len(weights.classes)
    model = ResidualAttentionNet(ARCHITECTURES[name], num_classes=num_classes or 1000)
    if weights is not None:
        weights.load_into(model, progress=progress)
        model.eval()
    return model

