"""Top-1, top-5, per-class accuracy and a confusion matrix for a checkpoint on a data split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .data import load_split, normalize
from .network import ResidualAttentionNet
from .ood import HEAD, view_features
from .train import eval_batch_size, evaluate_split, subset


@dataclass(frozen=True)
class Evaluation:
    split: str
    images: int
    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: list[list[int]]

    def metrics(self, dataset: str) -> dict:
        return {
            "dataset": dataset,
            "split": self.split,
            "images": self.images,
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
            "per_class_top1": {k: round(v, 4) for k, v in self.per_class.items()},
        }

    def report(self) -> str:
        lines = [f"{self.split}: {self.images} images  top-1 {100 * self.top1:.2f}%  top-5 {100 * self.top5:.2f}%"]
        lines += [f"  {name:<12} {100 * acc:6.2f}%" for name, acc in self.per_class.items()]
        return "\n".join(lines)

    def save_confusion(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.per_class)
        fig, ax = plt.subplots(figsize=(7, 6))
        im = ax.imshow(self.confusion, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted"), ax.set_ylabel("true")
        for i, row in enumerate(self.confusion):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count < max(map(max, self.confusion)) / 2 else "black")
        fig.colorbar(im, ax=ax)
        ax.set_title(f"confusion matrix, {self.split} (top-1 {100 * self.top1:.2f}%)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def split_features(model: ResidualAttentionNet, data: str, split: str, mean, std, source: str = "folder",
                   classes: tuple[str, ...] | None = None, size: int | None = None, batch_size: int | None = None,
                   limit: int = 0, views: Sequence[str] = (HEAD,)) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits (N, K), each of ``views``' features (N, D), ``ranlens.model.ood.view_features``) of a
    whole split, read as ``evaluate`` reads it, or of a seeded random ``limit`` of its images."""
    loaded = load_split(data, split, size or model.config.reference_size, source)
    if classes is not None and tuple(loaded.classes) != tuple(classes):
        raise ValueError(f"data classes {loaded.classes} differ from the model's {classes}")
    loaded = subset(loaded, limit, seed=0)
    batch_size = batch_size or eval_batch_size(next(model.parameters()).device, loaded.images.shape[-1])
    model.eval()
    logits, features = [], {view: [] for view in views}
    with torch.inference_mode():
        for start in tqdm(range(0, len(loaded), batch_size), desc=f"scoring {split}", unit="batch", leave=False):
            x = normalize(loaded.images[start:start + batch_size], mean, std).contiguous(memory_format=torch.channels_last)
            # the head alone needs no masks kept; other views read the modules' outputs
            out = model.forward_intermediates(x) if set(views) - {HEAD} else model.forward_head(x)
            logits.append(out.logits.float())
            for view, f in view_features(out, views).items():
                features[view].append(f)
    return torch.cat(logits), {view: torch.cat(parts) for view, parts in features.items()}


def evaluate(model: ResidualAttentionNet, data: str, split: str, mean, std, source: str = "folder",
             classes: tuple[str, ...] | None = None, size: int | None = None) -> Evaluation:
    """``size``: the weights' input size (images are resized and centre-cropped to it as at
    inference); the architecture's reference size if not given."""
    loaded = load_split(data, split, size or model.config.reference_size, source)
    if classes is not None and tuple(loaded.classes) != tuple(classes):
        raise ValueError(f"data classes {loaded.classes} differ from the model's {classes}")
    logits, labels = evaluate_split(model, loaded, mean, std, desc=f"evaluating {split}")
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    num = logits.shape[1]
    confusion = torch.zeros(num, num, dtype=torch.int64)
    confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return Evaluation(
        split=split,
        images=len(labels),
        top1=float((top[:, 0] == labels).float().mean()),
        top5=float((top == labels[:, None]).any(1).float().mean()),
        per_class=dict(zip(loaded.classes, per_class)),
        confusion=confusion.tolist(),
    )
