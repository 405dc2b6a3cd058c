"""Training and inference throughput of any registered network, beside torchvision's ResNets, as ratios.

    python benchmarks/throughput.py --models attention56 resnet50 --image-size 224 --batch 8 --device cpu
    python benchmarks/throughput.py --models attention56 attention92 resnet50 resnet101 \\
        --image-size 224 --batch 128 --device cuda --json bench.json
    python benchmarks/throughput.py --batch 500 64 16 --mode infer --precision fp32 --device cpu --threads 2

For each model, precision (fp32, bf16 autocast) and mode (train: the project's own training step with
SGD and label-smoothed cross-entropy; infer: eval-mode forward under ``torch.inference_mode``) it times
``--steps`` batches of random data after ``--warmup`` untimed ones, synchronising the GPU around the timed
span, and prints images per second. Pairs from the paper's comparison (Attention-56 with ResNet-50,
Attention-92 with ResNet-101) that are both measured get their ratio printed too: ratios, not absolute
rates, are what compare across machines. Given several ``--batch`` sizes it measures each and prints every
rate as a ratio to the first size's: on a CPU, per-image speed falls once a batch's activations outgrow
the caches, which is why evaluation there runs in small batches (``ranlens.model.train.eval_batch_size``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from ranlens.model.registry import ARCHITECTURES, get_model
from ranlens.model.train import TrainConfig, cpu_model, make_optimizer, train_step

TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
PAIRS = (("attention56", "resnet50"), ("attention92", "resnet101"))


def build(name: str, num_classes: int) -> torch.nn.Module:
    if name in ARCHITECTURES:
        return get_model(name, num_classes=num_classes)
    if name in TORCHVISION:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=num_classes)
    raise SystemExit(f"unknown model {name!r}: choose from {sorted(ARCHITECTURES)} or {list(TORCHVISION)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: torch.nn.Module, mode: str, amp: str, batch: int, size: int, classes: int,
            steps: int, warmup: int, device: torch.device, seconds: float = 0.0) -> float:
    """Images per second over ``steps`` timed batches, or over as many as fill ``seconds``."""
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    if mode == "train":
        model.train()
        optimizer = make_optimizer(model, TrainConfig(lr=1e-3))

        def step() -> None:
            train_step(model, optimizer, x, y, label_smoothing=0.1, amp=amp)
    else:
        model.eval()

        @torch.inference_mode()
        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                model(x)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    done = 0
    while done < steps or time.perf_counter() - start < seconds:
        for _ in range(5 if seconds else steps):
            step()
        done += 5 if seconds else steps
        sync(device)
    return done * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["attention56_cifar", "attention92_cifar"])
    parser.add_argument("--image-size", type=int, default=None, help="default: each registered model's own size")
    parser.add_argument("--batch", type=int, nargs="+", default=[64], help="one or more batch sizes")
    parser.add_argument("--classes", type=int, default=None, help="default: 10 at 32 px and below, else 1000")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--mode", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="time at least this long per figure (e.g. to overlap with another process)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    batches = ", ".join(map(str, args.batch))
    print(f"torch {torch.__version__} on {where}; batch {batches}, {args.steps} timed steps after {args.warmup}")

    results = []
    for name in args.models:
        size = args.image_size or (ARCHITECTURES[name].reference_size if name in ARCHITECTURES else 224)
        classes = args.classes or (10 if size <= 32 else 1000)
        torch.manual_seed(0)
        model = build(name, classes).to(device, memory_format=torch.channels_last)
        for mode in args.mode:
            for precision in args.precision:
                for batch in args.batch:
                    rate = measure(model, mode, "bf16" if precision == "bf16" else "off", batch, size, classes,
                                   args.steps, args.warmup, device, args.seconds)
                    results.append({"model": name, "size": size, "mode": mode, "precision": precision,
                                    "batch": batch, "img_per_s": rate})
                    print(f"{name:<18} {size:>4}px {mode:<5} {precision} batch {batch:<4} {rate:9.1f} img/s", flush=True)
                    if args.json:  # after every figure: a run stopped at a time limit keeps what it measured
                        with open(args.json, "w") as fh:
                            json.dump({"device": where, "torch": torch.__version__, "results": results}, fh, indent=2)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for name, mode, precision in itertools.product(args.models, args.mode, args.precision):
        first, *others = [r for r in results if (r["model"], r["mode"], r["precision"]) == (name, mode, precision)]
        for r in others:  # each further batch size against the first
            print(f"{name} {mode} {precision} batch {r['batch']} / batch {first['batch']}: "
                  f"{r['img_per_s'] / first['img_per_s']:.2f}x")
    # the comparisons below at the first batch size
    rate = {(r["model"], r["mode"], r["precision"]): r["img_per_s"] for r in results if r["batch"] == args.batch[0]}
    for attention, resnet in PAIRS:
        for mode in args.mode:
            for precision in args.precision:
                a, r = rate.get((attention, mode, precision)), rate.get((resnet, mode, precision))
                if a and r:
                    print(f"{attention} / {resnet} {mode} {precision}: {a / r:.2f}x")
    for name in args.models:
        for mode in args.mode:
            fp32, bf16 = rate.get((name, mode, "fp32")), rate.get((name, mode, "bf16"))
            if fp32 and bf16:
                print(f"{name} {mode} bf16 / fp32: {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
