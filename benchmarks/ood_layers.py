"""Which views of a forward pass tell noise and other subjects from CIFAR-10: the knn score per view.

    python benchmarks/ood_layers.py --data /tmp/data/cifar10-jpeg --weights attention92_cifar.v8

The out-of-distribution score is the knn score (Sun et al. 2022) on one or more views of the forward
pass (``ranlens.model.ood.view_features``): ``head``, the pooled features the classifier reads, and,
for each attention module, the per-channel mean or standard deviation over positions of its output
``(1 + M) * T``. This calibrates, for each single view and for ``head`` with each module's ``:std``
(flagged when either is unfamiliar), a knn score as ``ranlens calibrate-ood`` does (``calibrate_knn``:
a seeded bank of ``--bank-size`` (5,000) of the ``--limit-train`` training images, the threshold keeping 95% of the
others), and prints the share flagged of a seeded ``--limit-test`` of the test split, of
``ood_methods.py``'s 20 uniform-noise pictures at each size it makes (reduced to the input as the
server reduces photos), of its flat colours, and which example photos are flagged. The served views
(``DEFAULT_VIEWS``) were chosen from this table: see the README's "Honest about other subjects".
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from ood_methods import probes  # noqa: E402 - beside this script
from photo_reduction import EXAMPLES  # noqa: E402 - beside this script
from ranlens.model.data import load_split, normalize
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.model.ood import HEAD, OODScorer, calibrate_knn, view_features
from ranlens.model.train import subset
from ranlens.model.weights import DEFAULT_WEIGHTS, resolve_weights

K = 5


def features(explainer: Explainer, x: torch.Tensor, views: list[str], batch: int = 250) -> dict[str, torch.Tensor]:
    """Each view's features (N, D) of normalised inputs ``x``."""
    found: dict[str, list[torch.Tensor]] = {view: [] for view in views}
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            out = explainer.model.forward_intermediates(x[start:start + batch].contiguous(memory_format=torch.channels_last))
            for view, f in view_features(out, views).items():
                found[view].append(f)
    return {view: torch.cat(parts) for view, parts in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/tmp/data/cifar10-jpeg", help="CIFAR-10 as an ImageFolder")
    parser.add_argument("--weights", default=",".join(DEFAULT_WEIGHTS.values()),
                        help="weights names or manifest paths, comma-separated (default: the shipped defaults)")
    parser.add_argument("--limit-train", type=int, default=10_000, help="training images: the bank, then the threshold's")
    parser.add_argument("--limit-test", type=int, default=2_000)
    parser.add_argument("--bank-size", type=int, default=5_000, help="training images in each view's bank")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    listing = json.loads((EXAMPLES / "examples.json").read_text())
    photos = {e["file"]: decode_image((EXAMPLES / e["file"]).read_bytes(), 40_000_000)
              for e in listing if e.get("kind") == "photo"}

    for spec in [part.strip() for part in args.weights.split(",") if part.strip()]:
        weights = resolve_weights(None, spec)
        explainer = Explainer.load(weights.arch, spec)
        size = weights.input_size
        names = explainer.model.module_names
        views = [HEAD, *(f"{m}:{stat}" for m in names for stat in ("mean", "std"))]

        def split(name: str, limit: int) -> torch.Tensor:
            images = subset(load_split(args.data, name, size), limit, seed=0).images
            return normalize(images, weights.mean, weights.std)

        train, test = features(explainer, split("train", args.limit_train), views), \
            features(explainer, split("test", args.limit_test), views)
        pictures = {**probes(size), **{file: [image] for file, image in photos.items()}}
        seen = {name: features(explainer, torch.stack([explainer.preprocess(p) for p in images]), views)
                for name, images in pictures.items()}
        choices = [[view] for view in views] + [[HEAD, f"{m}:std"] for m in names]

        print(f"\n{weights.name}: knn (k = {K}, bank {args.bank_size}, threshold keeps 95% of "
              f"{args.limit_train - args.bank_size} other "
              f"training images); share flagged, and the example photos flagged")
        print("| views | test split | " + " | ".join(f"{name} ({len(pictures[name])})" for name in probes(size))
              + " | photos flagged |")
        print("|---" * (len(probes(size)) + 3) + "|")
        for chosen in choices:
            # scored as the app scores: the bank as shipped (float16), the calibration's own verdict
            calibration, payload = calibrate_knn({v: train[v] for v in chosen}, data="", bank_file="bank.safetensors",
                                                 test_features={v: test[v] for v in chosen}, k=K, bank_size=args.bank_size)
            scorer = OODScorer(calibration, {key: t.double() for key, t in load_tensors(payload).items()})
            flagged = {name: [calibration.flagged(v) for v in scorer.scores(torch.empty(0), found).tolist()]
                       for name, found in seen.items()}
            shares = " | ".join(f"{np.mean(flagged[name]):.0%}" for name in probes(size))
            hits = ", ".join(file.removesuffix(".jpg") for file in photos if flagged[file][0]) or "none"
            print(f"| {' + '.join(chosen)} | {calibration.test_fraction_flagged:.1%} | {shares} | {hits} |", flush=True)


if __name__ == "__main__":
    main()
