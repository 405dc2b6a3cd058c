"""How a picture larger than the model's input is reduced to it, measured: the shipped photos and the test split.

    python benchmarks/photo_reduction.py --data /tmp/data/cifar10-jpeg

The served path takes the centre square (shorter side resized to the input size). This compares it with
the whole picture padded to a square (its mean colour around it, nothing cut off), with the mean of
three crops along the longer side (the whole picture at the centre crop's scale), with the mean of five
crops (corners and centre of the picture resized to 1.25x the input) and with the centre crop plus its
mirror image. ``--limit N`` takes a seeded random N of the 10,000 test images. Multi-crop answers
average the crops' probabilities; their out-of-distribution score is the weights' own score (knn or
energy) of the mean logits and of each view's mean features, against a threshold calibrated on single
centre crops (so it is only indicative). For each shipped model it prints the CIFAR-10 test-split top-1 under each
reduction, then what each shipped example photo gets: the top class and its probability, the
out-of-distribution score and flag.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ranlens.model.data import load_split
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.model.preprocess import center_crop
from ranlens.model.weights import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "static" / "examples"


def centre(image: Image.Image, size: int) -> list[Image.Image]:
    return [center_crop(image, size)]


def padded(image: Image.Image, size: int) -> list[Image.Image]:
    side = max(image.size)
    fill = tuple(int(v) for v in np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0).round())
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return [center_crop(canvas, size)]


def five_crops(image: Image.Image, size: int) -> list[Image.Image]:
    larger = round(1.25 * size)
    w, h = image.size
    scale = larger / min(w, h)
    big = image.resize((max(larger, round(w * scale)), max(larger, round(h * scale))), Image.BILINEAR)
    W, H = big.size
    corners = [(0, 0), (W - size, 0), (0, H - size), (W - size, H - size), ((W - size) // 2, (H - size) // 2)]
    return [big.crop((x, y, x + size, y + size)) for x, y in corners]


def three_crops(image: Image.Image, size: int) -> list[Image.Image]:
    """Shorter side resized to ``size``, then squares at the start, middle and end of the longer side:
    the whole picture at the centre crop's scale (a square picture gives three equal crops)."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    W, H = image.size
    spots = [(0, 0), ((W - size) // 2, (H - size) // 2), (W - size, H - size)]
    return [image.crop((x, y, x + size, y + size)) for x, y in spots]


def centre_and_mirror(image: Image.Image, size: int) -> list[Image.Image]:
    crop = center_crop(image, size)
    return [crop, ImageOps.mirror(crop)]


REDUCTIONS: dict[str, Callable[[Image.Image, int], list[Image.Image]]] = {
    "centre crop (served)": centre,
    "padded to square": padded,
    "mean of three crops along the long side": three_crops,
    "mean of five crops at 1.25x": five_crops,
    "centre + mirror": centre_and_mirror,
}


def answer(explainer: Explainer, images: list[Image.Image], reduce) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean probabilities (N, classes), logits (N, classes) and each OOD view's features (N, D) over each
    picture's crops."""
    size = explainer.weights.input_size
    crops = [reduce(image, size) for image in images]
    per = len(crops[0])
    x = torch.stack([explainer.preprocess.to_tensor(c) for group in crops for c in group])
    out = explainer.infer(x, features=True)
    n = len(images)
    mean = {key: torch.from_numpy(v.reshape(n, per, -1).mean(axis=1)) for key, v in out.items()}
    return (mean["probabilities"].numpy(), mean["logits"].numpy(),
            {key.removeprefix("features:"): v for key, v in mean.items() if key.startswith("features:")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/data/cifar10-jpeg", help="CIFAR-10 as an ImageFolder (test/<class>/*)")
    parser.add_argument("--limit", type=int, default=0, help="only a seeded random N of the test images (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split(args.data, "test", 32)
    count = len(split) if not args.limit else min(args.limit, len(split))
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(split), generator=generator)[:count] if args.limit else torch.arange(len(split))
    tests = [Image.fromarray(split.images[i].permute(1, 2, 0).numpy()) for i in rows.tolist()]
    labels = split.labels[rows].numpy()
    listing = json.loads((EXAMPLES / "examples.json").read_text())
    photos = {e["file"]: decode_image((EXAMPLES / e["file"]).read_bytes(), 40_000_000)
              for e in listing if e.get("kind") == "photo"}
    results: dict = {}
    for arch in sorted(DEFAULT_WEIGHTS):
        explainer = Explainer.load(arch, "DEFAULT")
        explainer.trace()
        name = explainer.weights.name
        results[name] = {}
        print(f"\n{name} ({count} test images)")
        print("| reduction | test top-1 | " + " | ".join(photos) + " |")
        print("|---|---|" + "---|" * len(photos))
        for reduction, reduce in REDUCTIONS.items():
            correct = 0
            for start in range(0, count, 250):
                probs, _, _ = answer(explainer, tests[start:start + 250], reduce)
                correct += int((probs.argmax(axis=1) == labels[start:start + 250]).sum())
            probs, logits, features = answer(explainer, list(photos.values()), reduce)
            scores = explainer.scorer.scores(torch.from_numpy(logits), features).tolist()
            cells, photo_results = [], {}
            for (file, p, score) in zip(photos, probs, scores):
                top = int(p.argmax())
                flagged = None if explainer.ood is None else explainer.ood.flagged(score)
                label = explainer.weights.classes[top]
                photo_results[file] = {"label": label, "probability": float(p[top]), "ood_score": score,
                                       "out_of_distribution": flagged}
                cells.append(f"{label} {100 * p[top]:.0f}%{' (OOD)' if flagged else ''}")
            accuracy = correct / count
            results[name][reduction] = {"test_top1": accuracy, "photos": photo_results}
            print(f"| {reduction} | {100 * accuracy:.2f}% | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
