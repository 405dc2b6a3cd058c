"""Which layer's features tell noise from CIFAR-10: a knn score per attention module, beside the served one.

    python benchmarks/ood_layers.py --data /tmp/data/cifar10-jpeg --weights attention92_cifar.v8

The served out-of-distribution score is the knn score (Sun et al. 2022) of the pooled features the
classifier reads. This computes the same score on other features of the same forward pass: for each
attention module, the per-channel mean and standard deviation over positions of its output
``(1 + M) * T``, and some concatenations (each block made unit length first). Each score is calibrated
as ``ranlens calibrate-ood`` calibrates the served one (``calibrate_knn``: a seeded bank of 5,000 of the
``--limit-train`` training images, the threshold keeping 95% of the others), and it prints the share
flagged of a seeded ``--limit-test`` of the test split and of ``ood_methods.py``'s 20 uniform-noise
pictures at the input size and at 8x it (reduced to the input as the server reduces photos).
A lead for a better score, not the served one: see the README's "Honest about other subjects".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors

from ood_methods import probes  # noqa: E402 - beside this script
from ranlens.model.data import load_split, normalize
from ranlens.model.explainer import Explainer
from ranlens.model.ood import BANK_KEY, calibrate_knn, knn_score
from ranlens.model.train import subset
from ranlens.model.weights import DEFAULT_WEIGHTS, resolve_weights

BANK = 5000
K = 5


def blocks(explainer: Explainer, x: torch.Tensor, batch: int = 250) -> dict[str, torch.Tensor]:
    """Feature blocks (name -> (N, D)) of normalised inputs ``x``."""
    found: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            out = explainer.model.forward_intermediates(x[start:start + batch].contiguous(memory_format=torch.channels_last))
            found.setdefault("classifier features (served)", []).append(out.features.float())
            for module in out.attention:
                h = ((1 + module.mask) * module.trunk).float()
                found.setdefault(f"{module.name} mean", []).append(h.mean((2, 3)))
                found.setdefault(f"{module.name} std", []).append(h.std((2, 3)))
    return {name: torch.cat(parts) for name, parts in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/tmp/data/cifar10-jpeg", help="CIFAR-10 as an ImageFolder")
    parser.add_argument("--weights", default=",".join(DEFAULT_WEIGHTS.values()),
                        help="weights names or manifest paths, comma-separated (default: the shipped defaults)")
    parser.add_argument("--limit-train", type=int, default=10_000, help="training images: the bank, then the threshold's")
    parser.add_argument("--limit-test", type=int, default=2_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for spec in [part.strip() for part in args.weights.split(",") if part.strip()]:
        weights = resolve_weights(None, spec)
        explainer = Explainer.load(weights.arch, spec)
        size = weights.input_size

        def split(name: str, limit: int) -> torch.Tensor:
            images = subset(load_split(args.data, name, size), limit, seed=0).images
            return normalize(images, weights.mean, weights.std)

        def noise(side: int) -> torch.Tensor:
            return torch.stack([explainer.preprocess(p) for p in probes(size)[f"noise {side} px"]])

        train, test = blocks(explainer, split("train", args.limit_train)), blocks(explainer, split("test", args.limit_test))
        noise_small, noise_large = blocks(explainer, noise(size)), blocks(explainer, noise(8 * size))
        means = [name for name in train if name.endswith(" mean")]
        choices = {name: [name] for name in train}
        choices["all module means + classifier features"] = ["classifier features (served)", *means]
        choices["everything above"] = list(train)

        print(f"\n{weights.name}: knn (k = {K}, bank {BANK}, threshold keeps 95% of {args.limit_train - BANK} other "
              f"training images); share flagged")
        print(f"| features | test split | noise {size} px (20) | noise {8 * size} px (20) |")
        print("|---|---|---|---|")
        for label, names in choices.items():
            def features(found: dict[str, torch.Tensor]) -> torch.Tensor:
                return torch.cat([F.normalize(found[n], dim=1) for n in names], dim=1)

            # scored as the app scores: the bank as shipped (float16), the calibration's own verdict
            calibration, payload = calibrate_knn(features(train), data="", bank_file="bank.safetensors",
                                                 test_features=features(test), k=K, bank_size=BANK)
            bank = load_tensors(payload)[BANK_KEY].double()
            shares = [np.mean([calibration.flagged(v) for v in knn_score(features(found), bank, K).tolist()])
                      for found in (noise_small, noise_large)]
            print(f"| {label} | {calibration.test_fraction_flagged:.1%} | {shares[0]:.0%} | {shares[1]:.0%} |",
                  flush=True)


if __name__ == "__main__":
    main()
