"""Top-1 of shipped networks alone and of their ensemble (mean class probabilities) on a test split.

    python benchmarks/ensemble.py --data /tmp/data/cifar10-jpeg --weights attention56_cifar.v7,attention92_cifar.v7

What a ``ranlens train --teacher A,B`` run learns towards: the teachers' averaged predictions (at
temperature 1 here; training softens them further). Read as ``ranlens evaluate`` reads the split, in
float32, so each network's own figure is the one in its manifest.
"""

from __future__ import annotations

import argparse

import torch

from ranlens.model.data import load_split
from ranlens.model.distill import load_teachers, parse_teachers, resolve_teacher
from ranlens.model.train import evaluate_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="DATA/test/<class>/*")
    parser.add_argument("--weights", required=True, help="shipped weights names or manifest paths, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    specs = parse_teachers(args.weights)
    first = resolve_teacher(specs[0])
    split = load_split(args.data, "test", first.input_size)
    # the same checks a distilled run makes: one input and one class order for all of them
    members = load_teachers(specs, split.classes, first.input_size, first.mean, first.std, torch.device("cpu"))
    total = None
    for weights, net in members:
        logits, labels = evaluate_split(net, split, weights.mean, weights.std, desc=weights.name)
        p = logits.softmax(1)
        total = p if total is None else total + p
        print(f"{weights.name:<24} top-1 {100 * float((p.argmax(1) == labels).float().mean()):.2f}%", flush=True)
    ensemble = float((total.argmax(1) == labels).float().mean())
    print(f"{'ensemble of ' + str(len(members)):<24} top-1 {100 * ensemble:.2f}%  ({len(labels)} test images)")


if __name__ == "__main__":
    main()
