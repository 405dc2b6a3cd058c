"""Trains attention56_cifar and attention92_cifar side by side on one GPU inside a wall-clock budget.

    python scripts/train_cifar_gpu.py --data-tar cifar10-jpeg.tar.gz --budget 540 --results $OUT

Made for a lent GPU that is held for minutes, not hours, and driven as one command:

1. unpacks the data and decodes it into ranlens' array cache, on the CPU, while the GPU
2. measures throughput: each CIFAR network's bf16 training step at the run's batch size, both at once
   as the run will be (``benchmarks/throughput.py``), then the ImageNet-layout networks beside
   torchvision's ResNet-50/101 at 224 px (issue 13's figures);
3. plans each network's epochs from its measured concurrent rate so both schedules end inside the
   budget, and runs the two ``ranlens train`` processes at once (a GPU that waits on one Python process's
   kernel launches has room for a second);
4. packs each run's last-epoch weights, metrics, config, curves and log into ``--results``.

The schedule is fixed before training starts (epochs are an ordinary ``--epochs``), so each run is an
ordinary resumable ``ranlens train`` run; only the choice of its length used the measured speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("attention56_cifar", "attention92_cifar")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_bench(args: list[str], json_path: Path, log_path: Path) -> subprocess.Popen:
    """Starts benchmarks/throughput.py; the caller bounds it with ``wait``."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *args, "--json", str(json_path)]
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def rate_of(json_path: Path) -> float | None:
    try:
        return json.loads(json_path.read_text())["results"][0]["img_per_s"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-tar", help="CIFAR-10 ImageFolder tarball to unpack (else --data must exist)")
    parser.add_argument("--data", default="/tmp/ranlens-data/cifar10-jpeg")
    parser.add_argument("--runs", default="/tmp/ranlens-runs", help="where the run folders go")
    parser.add_argument("--results", required=True, help="folder for the packed results")
    parser.add_argument("--budget", type=float, default=540, help="seconds from start to packed results")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.4)
    parser.add_argument("--cutout", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--train-images", type=int, default=50_000, help="for planning; --limit-train too")
    parser.add_argument("--imagenet-bench", type=float, default=75, help="seconds for the 224 px figures; 0 = skip")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `ranlens train` options")
    args = parser.parse_args()

    t0 = time.monotonic()
    left = lambda: args.budget - (time.monotonic() - t0)  # noqa: E731
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    logs = Path(args.runs) / "logs"  # measurements and logs, packed into one file at the end
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CACHE_HOME", "/tmp/ranlens-cache")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 0. a few seconds on the committed test images: a broken GPU path fails here, not after minutes
    smoke = subprocess.run(
        [sys.executable, "-m", "ranlens", "train", "--arch", NETWORKS[1], "--data", str(ROOT / "tests/fixtures/cifar10-test"),
         "--out", str(Path(args.runs) / "smoke"), "--epochs", "2", "--stop-after", "1", "--batch-size", "10",
         "--device", args.device, "--amp", "bf16"], env=env, capture_output=True, text=True)
    smoke_resume = subprocess.run(
        [sys.executable, "-m", "ranlens", "train", "--arch", NETWORKS[1], "--data", str(ROOT / "tests/fixtures/cifar10-test"),
         "--out", str(Path(args.runs) / "smoke"), "--epochs", "2", "--batch-size", "10",
         "--device", args.device, "--amp", "bf16"], env=env, capture_output=True, text=True) if smoke.returncode == 0 else smoke
    if smoke.returncode or smoke_resume.returncode:
        print(smoke.stdout[-3000:], smoke.stderr[-3000:], smoke_resume.stderr[-3000:], sep="\n")
        sys.exit("the smoke run on the committed test images failed; nothing else was started")
    log(f"smoke run (train, checkpoint, resume on {args.device}) passed; {left():.0f} s left")

    # 1. data, on the CPU, while the GPU measures
    if args.data_tar:
        Path(args.data).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(Path(args.data).parent), "-xzf", args.data_tar], check=True)
    decode = [
        subprocess.Popen([sys.executable, "-c", f"from ranlens.model.data import load_split; load_split({args.data!r}, {split!r})"],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(logs / f"decode-{split}.log", "w"))
        for split in ("train", "test")
    ]
    log(f"data unpacked; decoding; {left():.0f} s left")

    # 2. throughput: the two CIFAR networks at once, as they will train, then the 224 px figures
    common = ["--device", args.device, "--precision", "bf16", "--mode", "train", "--batch", str(args.batch),
              "--steps", "5", "--warmup", "5", "--seconds", "12"]
    probes = {name: run_bench(["--models", name, *common], logs / f"probe-{name}.json",
                              logs / f"probe-{name}.log") for name in NETWORKS}
    rates = {}
    for name, proc in probes.items():
        wait(proc, 90)
        rates[name] = rate_of(logs / f"probe-{name}.json")
    log(f"concurrent bf16 training rates at batch {args.batch}: {rates}; {left():.0f} s left")
    if args.imagenet_bench > 0:
        bench = run_bench(["--models", "attention56", "resnet50", "attention92", "resnet101", "--image-size", "224",
                           "--batch", "64", "--steps", "8", "--warmup", "3", "--device", args.device],
                          logs / "throughput-224.json", logs / "throughput-224.log")
        if wait(bench, args.imagenet_bench) is None:
            log("224 px benchmark stopped at its time limit; see throughput-224.log for what it measured")
        log(f"224 px benchmark done; {left():.0f} s left")
    for proc in decode:
        if proc.wait() != 0:
            sys.exit("decoding the data failed; see decode-*.log")

    # 3. plan and train both at once
    reserve = 30  # start-up (data onto the GPU), the last evaluation and packing
    deadline = time.monotonic() + left() - 12

    def start(name: str, epoch_s: float) -> tuple[subprocess.Popen, Path, int]:
        window = deadline - time.monotonic() - reserve
        epochs = max(1, min(args.max_epochs, math.floor(window / epoch_s)))
        out = Path(args.runs) / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "ranlens", "train", "--arch", name, "--data", args.data, "--out", str(out),
               "--epochs", str(epochs), "--batch-size", str(args.batch), "--lr", str(args.lr),
               "--cutout", str(args.cutout), "--device", args.device, "--amp", "bf16", "--threads", "4", *args.extra]
        log(f"{name}: {epochs} epochs planned ({epoch_s:.1f} s each, window {window:.0f} s): {' '.join(cmd[2:])}")
        proc = subprocess.Popen(cmd, env=env, stdout=open(logs / f"{name}.log", "a"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        return proc, out, epochs

    # measured on random data without augmentation, evaluation or checkpoints: keep a margin
    runs = {name: start(name, args.train_images / (0.85 * (rates[name] or 1000.0)) + 1.5) for name in NETWORKS}
    checked: set[str] = set()
    while any(proc.poll() is None for proc, _, _ in runs.values()) and time.monotonic() < deadline:
        time.sleep(2)
        for name, (proc, out, epochs) in list(runs.items()):
            # after two epochs, the real pace: a schedule that would not end in time is restarted shorter
            # now, rather than cut off later with no finished run at all
            if name in checked or proc.poll() is not None:
                continue
            try:
                history = json.loads((out / "metrics.json").read_text())
            except (OSError, ValueError):
                continue
            if len(history) < 2:
                continue
            checked.add(name)
            epoch_s = history[-1]["epoch_seconds"]
            finish = time.monotonic() + (epochs - len(history)) * epoch_s
            log(f"{name}: {epoch_s:.1f} s per epoch; on pace to end {deadline - finish:.0f} s before the deadline")
            if finish > deadline - 10:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                runs[name] = start(name, epoch_s * 1.05)
    for name, (proc, _, _) in runs.items():
        if wait(proc, deadline - time.monotonic()) is None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log(f"{name} did not finish inside the budget and was stopped")
        else:
            log(f"{name} finished with exit code {proc.returncode}")

    # 4. pack what each run has: last epoch, metrics, config, curves, log
    for name, (_, out, _) in runs.items():
        epochs = sorted(out.glob("epoch*.safetensors"))
        with tarfile.open(results / f"{name}.tar.gz", "w:gz") as tar:
            for path in [*epochs[-1:], *(out / f for f in ("metrics.json", "config.json", "curves.png"))]:
                if path.is_file():
                    tar.add(path, arcname=f"{name}/{path.name}")
            tar.add(logs / f"{name}.log", arcname=f"{name}/train.log")
        metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else []
        log(f"{name}: {len(metrics)} epochs done, last {metrics[-1] if metrics else None}")
    with tarfile.open(results / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    log(f"done; {left():.0f} s of the budget left")


if __name__ == "__main__":
    main()
