"""A figure of every attention module's soft mask, reduced to one map (channel mean by default), over images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .imaging import decode_file
from .network import ResidualAttentionNet
from .render import reduce_mask
from .weights import Weights


def mask_figure(model: ResidualAttentionNet, weights: Weights, images: list[Path], out: Path,
                cmap: str = "viridis", max_pixels: int = 40_000_000, reduction: str = "mean") -> list[dict]:
    """Rows: images; columns: the crop the model sees, then each module's mask reduced by ``reduction``
    (``mean`` over channels, or ``added``: the mean of M * |T|; own colour scale, range in the title),
    with the top prediction over the crop. Returns per-mask statistics (``mean_*`` are the shown map's).

    Images are decoded as the app decodes uploads (EXIF orientation, transparency on white, first
    frame) and preprocessed by the weights' own transforms, so the figure shows what the app shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preprocess = weights.transforms()
    # all decoded before drawing: a bad file fails the call before a figure is half made, and is named
    crops = [preprocess.crop(decode_file(path, max_pixels)) for path in images]
    names = model.module_names
    fig, axes = plt.subplots(len(images), len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.7 * len(images)),
                             squeeze=False)
    stats = []
    for row, (path, crop) in enumerate(zip(images, crops)):
        with torch.no_grad():
            result = model.eval().forward_intermediates(preprocess.to_tensor(crop).unsqueeze(0))
        probs = torch.softmax(result.logits[0], 0)
        top = int(probs.argmax())
        axes[row, 0].imshow(crop)
        axes[row, 0].set_title(f"{path.name}\n→ {weights.classes[top]} {100 * float(probs[top]):.0f}%", fontsize=8)
        for col, a in enumerate(result.attention, start=1):
            mean = reduce_mask(a.mask[0].numpy(), reduction, trunk=a.trunk[0].numpy())
            ax = axes[row, col]
            ax.imshow(crop, extent=(0, 1, 1, 0))
            im = ax.imshow(mean, cmap=cmap, alpha=0.6, interpolation="bilinear", extent=(0, 1, 1, 0))
            ax.set_title(f"{a.name} {a.resolution[0]}x{a.resolution[1]} {reduction}\n{mean.min():.3f}–{mean.max():.3f}",
                         fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            full = a.mask[0].numpy()
            stats.append({"image": path.name, "module": a.name, "mean_min": float(mean.min()),
                          "mean_max": float(mean.max()), "all_min": float(full.min()), "all_max": float(full.max()),
                          "all_std": float(full.std()), "spatial_std_of_mean": float(np.std(mean))})
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return stats
