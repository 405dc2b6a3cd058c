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

With ``--job NAME=OPTIONS`` (repeatable) it runs those ``ranlens train`` runs instead, all at once, with
no throughput probes: each is smoke-tested on the committed test images with its own options, then runs
until it ends or the deadline stops it, and packs its last finished epoch. That suits schedules that any
epoch may end, such as continuing a shipped network with distillation and constant-lr weight averaging
(``--epochs N --swa N``: every epoch's checkpoint is the average so far):

    python scripts/train_cifar_gpu.py --data-tar cifar10-jpeg.tar.gz --results $OUT --budget 560 \
        --job "a92=--arch attention92_cifar --init model/weights/attention92_cifar.v7.safetensors
               --teacher attention56_cifar.v7,attention92_cifar.v7 --epochs 100 --swa 100 --swa-lr 0.04"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses run `python -P`: run from the repository root, plain `-m`/`-c` would put the working
# directory first on sys.path, where ranlens/ (without model/ and app/) hides the installed package.
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


def parse_job(text: str) -> tuple[str, list[str]]:
    """``NAME=OPTIONS`` -> (NAME, the options as ``ranlens train`` arguments)."""
    name, sep, options = text.partition("=")
    if not sep or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"a job is NAME=OPTIONS with NAME in letters, digits, - and _: {text!r}")
    return name, shlex.split(options)


def finished_epochs(out: Path) -> list[dict]:
    """The run's finished epochs: ``metrics.json`` is written after each epoch's checkpoint, so every
    epoch it lists has its weights on disk (a file cut off mid-write reads as none)."""
    try:
        return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return []


Runs = dict[str, tuple[subprocess.Popen, Path, int]]


def replan_after_two_epochs(runs: Runs, deadline: float, start: Callable[[str, float], tuple]) -> None:
    """After two epochs, the real pace: a schedule that would not end in time is restarted shorter now,
    rather than cut off later with no finished run at all."""
    checked: set[str] = set()
    while any(proc.poll() is None for proc, _, _ in runs.values()) and time.monotonic() < deadline:
        time.sleep(2)
        for name, (proc, out, epochs) in list(runs.items()):
            if name in checked or proc.poll() is not None:
                continue
            history = finished_epochs(out)
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


def stop_at_epoch_ends(runs: Runs, deadline: float) -> None:
    """Stops each run just after the last epoch that ends before the deadline: once an epoch's record is
    in metrics.json (written after its checkpoint) and the next epoch, at the last one's pace, would end
    after the deadline. The GPU time a cut-off epoch would take goes to the runs still going."""
    done = dict.fromkeys(runs, 0)
    while any(proc.poll() is None for proc, _, _ in runs.values()) and time.monotonic() < deadline:
        time.sleep(1)
        for name, (proc, out, _) in runs.items():
            if proc.poll() is not None:
                continue
            history = finished_epochs(out)
            if len(history) <= done[name]:
                continue
            done[name] = len(history)
            epoch_s = history[-1]["epoch_seconds"]
            if time.monotonic() + 1.05 * epoch_s > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log(f"{name}: stopped after epoch {len(history)} ({epoch_s:.1f} s each): the next would end "
                    f"after the deadline")


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
    parser.add_argument("--threads", type=int, default=4, help="CPU threads per training process")
    parser.add_argument("--job", type=parse_job, action="append", default=[], metavar="NAME=OPTIONS",
                        help="run these `ranlens train` options instead of the two planned runs (repeatable)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `ranlens train` options")
    args = parser.parse_args()
    if len({name for name, _ in args.job}) < len(args.job):
        parser.error("two --job share a name")

    t0 = time.monotonic()
    left = lambda: args.budget - (time.monotonic() - t0)  # noqa: E731
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    logs = Path(args.runs) / "logs"  # measurements and logs, packed into one file at the end
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CACHE_HOME", "/tmp/ranlens-cache")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 0. data, on the CPU, while the GPU checks and measures
    if args.data_tar:
        Path(args.data).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(Path(args.data).parent), "-xzf", args.data_tar], check=True)
    decode = [
        subprocess.Popen([sys.executable, "-P", "-c", f"from ranlens.model.data import load_split; load_split({args.data!r}, {split!r})"],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(logs / f"decode-{split}.log", "w"))
        for split in ("train", "test")
    ]
    log(f"data unpacked; decoding; {left():.0f} s left")

    # 1. a few seconds on the committed test images: a broken GPU path fails here, not after minutes;
    # they stand in for both splits (ranlens train refuses a folder without train/ and test/)
    fixtures = Path(args.runs) / "smoke-data"
    for split in ("train", "test"):
        if not (fixtures / split).exists():
            fixtures.mkdir(parents=True, exist_ok=True)
            (fixtures / split).symlink_to(ROOT / "tests/fixtures/cifar10-test", target_is_directory=True)
    fixtures = str(fixtures)
    smokes = {name: options for name, options in args.job} or {"smoke": ["--arch", NETWORKS[1]]}

    def smoke(name: str, options: list[str], stop_after: list[str]) -> subprocess.Popen:
        # the job's own options, shrunk to the 30 committed images (later options win)
        cmd = [sys.executable, "-P", "-m", "ranlens", "train", *options, "--data", fixtures,
               "--out", str(Path(args.runs) / "smoke" / name), "--epochs", "2", "--batch-size", "10",
               "--limit-test", "0", "--device", args.device, "--amp", "bf16", "--threads", "2", *stop_after]
        if "--swa" in options:
            cmd += ["--swa", "2"]
        return subprocess.Popen(cmd, env=env, stdout=open(logs / f"smoke-{name}.log", "a"), stderr=subprocess.STDOUT)

    for stop_after in (["--stop-after", "1"], []):  # train and checkpoint, then resume
        procs = {name: smoke(name, options, stop_after) for name, options in smokes.items()}
        failed = [name for name, proc in procs.items() if proc.wait() != 0]
        if failed:
            for name in failed:
                print((logs / f"smoke-{name}.log").read_text()[-3000:])
            sys.exit(f"the smoke run of {', '.join(failed)} on the committed test images failed; "
                     "nothing else was started")
    log(f"smoke runs (train, checkpoint, resume on {args.device}) of {', '.join(smokes)} passed; {left():.0f} s left")

    # 2. throughput: the two CIFAR networks at once, as they will train, then the 224 px figures (the
    # planned runs' need; given jobs are not planned)
    rates = {}
    if not args.job:
        common = ["--device", args.device, "--precision", "bf16", "--mode", "train", "--batch", str(args.batch),
                  "--steps", "5", "--warmup", "5", "--seconds", "12"]
        probes = {name: run_bench(["--models", name, *common], logs / f"probe-{name}.json",
                                  logs / f"probe-{name}.log") for name in NETWORKS}
        for name, proc in probes.items():
            wait(proc, 90)
            rates[name] = rate_of(logs / f"probe-{name}.json")
        log(f"concurrent bf16 training rates at batch {args.batch}: {rates}; {left():.0f} s left")
    if args.imagenet_bench > 0 and not args.job:
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

    def launch(name: str, options: list[str]) -> tuple[subprocess.Popen, Path]:
        out = Path(args.runs) / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-P", "-m", "ranlens", "train", "--data", args.data, "--out", str(out),
               "--device", args.device, "--amp", "bf16", "--threads", str(args.threads), *options]
        log(f"{name}: {' '.join(cmd[3:])}")
        proc = subprocess.Popen(cmd, env=env, stdout=open(logs / f"{name}.log", "a"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        return proc, out

    def start(name: str, epoch_s: float) -> tuple[subprocess.Popen, Path, int]:
        window = deadline - time.monotonic() - reserve
        epochs = max(1, min(args.max_epochs, math.floor(window / epoch_s)))
        log(f"{name}: {epochs} epochs planned ({epoch_s:.1f} s each, window {window:.0f} s)")
        proc, out = launch(name, ["--arch", name, "--epochs", str(epochs), "--batch-size", str(args.batch),
                                  "--lr", str(args.lr), "--cutout", str(args.cutout), *args.extra])
        return proc, out, epochs

    if args.job:
        runs = {name: (*launch(name, options), 0) for name, options in args.job}
        stop_at_epoch_ends(runs, deadline)
    else:
        # measured on random data without augmentation, evaluation or checkpoints: keep a margin
        runs = {name: start(name, args.train_images / (0.85 * (rates[name] or 1000.0)) + 1.5) for name in NETWORKS}
        replan_after_two_epochs(runs, deadline, start)
    for name, (proc, _, _) in runs.items():
        if wait(proc, deadline - time.monotonic()) is None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log(f"{name} did not finish inside the budget and was stopped")
        elif proc.returncode < 0:
            log(f"{name} was stopped at an epoch's end")
        else:
            log(f"{name} finished with exit code {proc.returncode}")

    # 4. pack what each run has: last epoch, metrics, config, curves, log
    for name, (_, out, _) in runs.items():
        # the last epoch metrics.json lists, not the newest file: a run stopped mid-save leaves half a file
        metrics = finished_epochs(out)
        last = [out / f"epoch{len(metrics):03d}.safetensors"] if metrics else []
        with tarfile.open(results / f"{name}.tar.gz", "w:gz") as tar:
            for path in [*last, *(out / f for f in ("metrics.json", "config.json", "curves.png"))]:
                if path.is_file():
                    tar.add(path, arcname=f"{name}/{path.name}")
            tar.add(logs / f"{name}.log", arcname=f"{name}/train.log")
        log(f"{name}: {len(metrics)} epochs done, last {metrics[-1] if metrics else None}")
    with tarfile.open(results / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    log(f"done; {left():.0f} s of the budget left")


if __name__ == "__main__":
    main()
