"""Training throughput of the CIFAR networks, float32 against bfloat16 autocast, as ratios, and what
``--trivial-augment`` adds to a step.

    python benchmarks/train_speed.py --threads 2 --steps 6
    python benchmarks/train_speed.py --compile --models attention56_cifar   # eager against torch.compile

Runs the project's own training step (``ranlens.model.train.train_step``: channels_last input, its SGD,
label-smoothed cross-entropy, ``torch.autocast("cpu", dtype=torch.bfloat16)`` for bf16) on random batches, so the
figure is the network's own speed, without data loading. fp32 and bf16 alternate in rounds so that a
neighbour's load on the machine hits both alike; the ratio is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ranlens.model import get_model
from ranlens.model.data import trivial_augment
from ranlens.model.train import TrainConfig, make_optimizer, resolve_amp, train_step


def images_per_second(model, optimizer, batch: int, steps: int, amp: str) -> float:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        train_step(model, optimizer, x, y, label_smoothing=0.1, amp=amp)

    step()  # warm-up: kernel selection and allocator
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def augment_seconds(batch: int, repeats: int) -> float:
    """Median seconds of ``trivial_augment`` on a uint8 batch of CIFAR-sized images."""
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trivial_augment(images, generator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_compiled(name: str, model, optimizer, args, amp: str) -> None:
    # the same module, eager and compiled, in alternating rounds of one process: a neighbour's load
    # hits both alike, and the compiled one's first steps (the compiling) are left out of its rate
    compiled = torch.compile(model)
    start = time.perf_counter()
    images_per_second(compiled, optimizer, args.batch, 1, amp)
    print(f"{name:<20} compiling and the first steps: {time.perf_counter() - start:.0f} s")
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        rates["eager"].append(images_per_second(model, optimizer, args.batch, args.steps, amp))
        rates["compiled"].append(images_per_second(compiled, optimizer, args.batch, args.steps, amp))
    eager, fast = (statistics.median(rates[m]) for m in ("eager", "compiled"))
    print(f"{name:<20} {amp:<4} eager {eager:7.1f} img/s   compiled {fast:7.1f} img/s   compiled/eager {fast / eager:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["attention56_cifar", "attention92_cifar"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="compare eager against torch.compile (what `ranlens train --compile` does), both in bf16 "
                             "where the CPU has it; compiling takes minutes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = resolve_amp("auto") == "bf16"
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"native bf16 on this CPU: {'yes' if native else 'no'}")
    for name in args.models:
        torch.manual_seed(0)
        model = get_model(name, num_classes=10).to(memory_format=torch.channels_last).train()
        optimizer = make_optimizer(model, TrainConfig(lr=0.01))
        if args.compile:
            compare_compiled(name, model, optimizer, args, "bf16" if native else "off")
            continue
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for mode in rates:
                rates[mode].append(images_per_second(model, optimizer, args.batch, args.steps, "bf16" if mode == "bf16" else "off"))
        fp32, bf16 = (statistics.median(rates[m]) for m in ("fp32", "bf16"))
        print(f"{name:<20} fp32 {fp32:7.1f} img/s   bf16 {bf16:7.1f} img/s   bf16/fp32 {bf16 / fp32:.2f}x")
        # what --trivial-augment adds to a step: its per-image work runs in the training process
        fastest = bf16 if native else fp32
        seconds = augment_seconds(args.batch, args.rounds * args.steps)
        print(f"{name:<20} TrivialAugment {1000 * seconds:6.1f} ms per batch of {args.batch} "
              f"({1000 * seconds / args.batch:.2f} ms an image), {100 * seconds * fastest / args.batch:.0f}% "
              f"of a {'bf16' if native else 'fp32'} step")


if __name__ == "__main__":
    main()
