"""A description of a built network, read off the model itself, for the teaching view."""

from __future__ import annotations

import torch

from .network import AttentionModule, ResidualAttentionNet


def _mask_levels(module: AttentionModule, size: tuple[int, int]) -> list[list[int]]:
    """Resolutions along the soft mask branch: input, then each max-pool (3x3, stride 2, pad 1)."""
    levels = [list(size)]
    h, w = size
    for _ in range(module.mask.depth):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        levels.append([h, w])
    return levels


def architecture(model: ResidualAttentionNet, size: int | None = None) -> dict:
    """Stem, stages with their attention modules (trunk, mask branch, resolutions), head, classifier."""
    c = model.config
    size = size or c.reference_size
    was_training = model.training
    model.eval()
    shapes: dict[str, list[int]] = {}
    # walk the network's own parts in order, recording each output shape
    with torch.no_grad():
        x = model.stem(torch.zeros(1, 3, size, size))
        shapes["stem"] = list(x.shape[1:])
        for s, stage in enumerate(model.stages):
            x = stage.transition(x)
            shapes[f"stage{s + 1}"] = list(x.shape[1:])
            for module in stage.attention:
                x = module(x)
        shapes["head"] = list(model.head(x).shape[1:])
    model.train(was_training)

    stages = []
    for s, stage in enumerate(model.stages):
        channels, h, w = shapes[f"stage{s + 1}"]
        modules = []
        for m, module in enumerate(stage.attention):
            modules.append({
                "name": f"stage{s + 1}.module{m + 1}",
                "channels": channels,
                "resolution": [h, w],
                "trunk_units": len(module.trunk),
                "mask_depth": module.mask.depth,
                "mask_levels": _mask_levels(module, (h, w)),
            })
        stages.append({
            "stage": s + 1, "channels": channels, "resolution": [h, w],
            "transition_stride": stage.transition.conv2.stride[0], "modules": modules,
        })
    return {
        "name": c.name,
        "input": [3, size, size],
        "stem": {"kind": c.stem, "output": shapes["stem"]},
        "stages": stages,
        "head": {"units": len(model.head), "output": shapes["head"]},
        "classifier": {"in_features": model.classifier.in_features, "classes": model.num_classes},
    }
