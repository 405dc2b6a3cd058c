"""The out-of-distribution scores compared: which pictures each flags, on the same model and data.

    python benchmarks/ood_methods.py --data /tmp/data/cifar10-jpeg

For each shipped model it calibrates, from one pass over the data, the energy score (Liu et al. 2020),
the k-th nearest neighbour distance (Sun et al. 2022, ``--k`` of a ``--bank-size`` bank) on the
classifier's features alone, and the same on those and the first module's texture (``ranlens
calibrate-ood``'s default views, a picture flagged when either is unfamiliar), each at the same TPR-95
operating point on the training split,
then prints the fraction each flags of: the CIFAR-10 test split (the cost: real pictures called
unfamiliar), uniform noise at the input size and up to 8x larger (shrunk to it), flat colours, and the
verdict on each shipped example photo (all but the cats are none of the ten classes). A third column,
"served", scores the same pictures with the calibration the weights ship with (bank, threshold), as
the server does; its test-split figure is the one in the manifest.
``--limit-train N`` calibrates on a seeded random N of the 50,000 training images, for a quick look.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_tensors

from ranlens.model.evaluate import split_features
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.model.ood import DEFAULT_VIEWS, HEAD, OODScorer, calibrate, calibrate_knn
from ranlens.model.weights import DEFAULT_WEIGHTS
from photo_reduction import EXAMPLES  # noqa: E402 - beside this script

SEEDS = range(20)


def probes(size: int) -> dict[str, list[Image.Image]]:
    rng = np.random.default_rng
    noise = lambda side: [Image.fromarray(rng(s).integers(0, 256, (side, side, 3), dtype=np.uint8))  # noqa: E731
                          for s in SEEDS]
    flat = [Image.new("RGB", (size, size), tuple(int(v) for v in rng(s).integers(0, 256, 3))) for s in SEEDS]
    # noise larger than the input is shrunk to it by the photo path, which smooths it more the larger it is
    sides = (size, size * 3 // 2, 2 * size, 3 * size, 4 * size, 6 * size, 8 * size)
    return {**{f"noise {side} px": noise(side) for side in sides}, "flat colours": flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/data/cifar10-jpeg", help="CIFAR-10 as an ImageFolder")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--bank-size", type=int, default=5000)
    parser.add_argument("--limit-train", type=int, default=0, help="calibrate on a seeded random N (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", action="append", choices=sorted(DEFAULT_WEIGHTS), help="only this model (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    listing = json.loads((EXAMPLES / "examples.json").read_text())
    photos = {e["file"]: decode_image((EXAMPLES / e["file"]).read_bytes(), 40_000_000) for e in listing}
    for arch in args.arch or sorted(DEFAULT_WEIGHTS):
        explainer = Explainer.load(arch, "DEFAULT")
        w = explainer.weights
        read = dict(mean=w.mean, std=w.std, classes=w.classes, size=w.input_size, views=DEFAULT_VIEWS)
        train_logits, train_features = split_features(explainer.model, args.data, "train", limit=args.limit_train,
                                                      **read)
        test_logits, test_features = split_features(explainer.model, args.data, "test", **read)
        energy = calibrate(train_logits, data="", test_logits=test_logits)
        # scored as the app scores: each calibration through its OODScorer
        scorers = {"energy": OODScorer(energy)}
        knn = {}
        for label, views in (("knn (head)", (HEAD,)), (f"knn ({' + '.join(DEFAULT_VIEWS)})", DEFAULT_VIEWS)):
            knn[label], payload = calibrate_knn({v: train_features[v] for v in views}, data="", k=args.k,
                                                bank_file="bank.safetensors", bank_size=args.bank_size,
                                                test_features={v: test_features[v] for v in views})
            scorers[label] = OODScorer(knn[label], {key: t.double() for key, t in load_tensors(payload).items()})
        # and the calibration the weights ship with (its own bank and threshold), as the server flags
        served = f"served ({explainer.ood.method})" if explainer.ood else None
        if served:
            scorers[served] = explainer.scorer

        def flagged(images: list[Image.Image]) -> dict[str, list[bool]]:
            x = torch.stack([explainer.preprocess(im) for im in images])
            out = explainer.infer(x, features=True, views=DEFAULT_VIEWS)
            z = torch.from_numpy(out["logits"])
            f = {key.removeprefix("features:"): torch.from_numpy(v) for key, v in out.items() if key.startswith("features:")}
            return {m: [s.calibration.flagged(v) for v in s.scores(z, f).tolist()] for m, s in scorers.items()}

        print(f"\n{w.name}: calibrated on {len(train_logits)} training images (knn: {args.bank_size} in the bank, "
              f"k = {args.k}); the share flagged")
        print("| | " + " | ".join(scorers) + " |")
        print("|---" * (len(scorers) + 1) + "|")
        shipped = [explainer.ood.test_fraction_flagged] if served else []
        print(f"| CIFAR-10 test split ({energy.test_images} images) | " + " | ".join(
            f"{100 * v:.1f}%" for v in (energy.test_fraction_flagged, *(c.test_fraction_flagged for c in knn.values()),
                                        *shipped)) + " |")
        for name, images in probes(w.input_size).items():
            result = flagged(images)
            print(f"| {name} ({len(images)}) | " + " | ".join(f"{100 * np.mean(result[m]):.0f}%" for m in scorers) + " |")
        verdicts = flagged(list(photos.values()))
        for i, file in enumerate(photos):
            print(f"| {file} | " + " | ".join("flagged" if verdicts[m][i] else "-" for m in scorers) + " |", flush=True)


if __name__ == "__main__":
    main()
