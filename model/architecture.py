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
    """Stem, stages with their attention modules (trunk, mask branch, resolutions), head, classifier.

    Shapes come from one forward pass of the network itself (``forward_intermediates``), so this
    description cannot drift from the forward pass.
    """
    c = model.config
    size = size or c.reference_size
    was_training = model.training
    model.eval()
    shapes: dict[str, list[int]] = {}

    def remember(name: str):
        return lambda _module, _args, output: shapes.__setitem__(name, list(output.shape[1:]))

    handles = [model.stem.register_forward_hook(remember("stem")), model.head.register_forward_hook(remember("head"))]
    handles += [stage.transition.register_forward_hook(remember(f"stage{s + 1}"))
                for s, stage in enumerate(model.stages)]
    try:
        with torch.no_grad():
            out = model.forward_intermediates(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    modules = model.attention_modules()
    stages = []
    for s, stage in enumerate(model.stages):
        channels, h, w = shapes[f"stage{s + 1}"]
        stages.append({
            "stage": s + 1, "channels": channels, "resolution": [h, w],
            "transition_stride": stage.transition.conv2.stride[0],
            "modules": [
                {
                    "name": a.name,
                    "channels": int(a.mask.shape[1]),
                    "resolution": list(a.resolution),
                    "trunk_units": len(modules[a.name].trunk),
                    "mask_depth": modules[a.name].mask.depth,
                    "mask_levels": _mask_levels(modules[a.name], a.resolution),
                }
                for a in out.attention if a.stage == s + 1
            ],
        })
    return {
        "name": c.name,
        "input": [3, size, size],
        "stem": {"kind": c.stem, "output": shapes["stem"]},
        "stages": stages,
        "head": {"units": len(model.head), "output": shapes["head"]},
        "classifier": {"in_features": model.classifier.in_features, "classes": model.num_classes},
    }
