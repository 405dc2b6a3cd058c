"""Trains a CIFAR-layout Residual Attention Network, resumably, on CPU cores or one GPU.

The whole data set lives as uint8 tensors on the training device and is augmented there per batch,
so neither a 2-core CPU nor a GPU waits on per-image Python work.

One-cycle-style schedule (linear warm-up, cosine decay to zero) stepped per batch and computed
from the global step, so a resumed run lands on exactly the learning rate it stopped at.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .data import Split, augment, cutout, load_split, normalize
from .network import ResidualAttentionNet
from .registry import ARCHITECTURES
from .weights import load_state_checked, read_checkpoint, save_checkpoint

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _setting(default, help: str, **argparse_extra):
    """A TrainConfig field whose help text (and choices) the ``ranlens train`` options show."""
    return field(default=default, metadata={"help": help, **argparse_extra})


@dataclass
class TrainConfig:
    arch: str = _setting("attention56_cifar", "architecture to train", choices=sorted(ARCHITECTURES))
    data: str = _setting("/tmp/data/cifar10-jpeg", "data folder (DATA/train/<class>/*, DATA/test/<class>/*) "
                         "or, with --source torchvision, where CIFAR-10 is downloaded")
    source: str = _setting("folder", "how to read --data", choices=["folder", "torchvision"])
    out: str = _setting("runs/attention56_cifar", "run folder: checkpoints, metrics, last.pt to resume from")
    epochs: int = _setting(6, "length of the schedule in epochs")
    batch_size: int = _setting(128, "images per step")
    lr: float = _setting(0.2, "peak learning rate")
    warmup: float = _setting(0.15, "fraction of all steps spent warming the learning rate up")
    momentum: float = _setting(0.9, "SGD Nesterov momentum")
    weight_decay: float = _setting(5e-4, "weight decay on conv and linear weights (not BN, not biases)")
    label_smoothing: float = _setting(0.1, "label smoothing of the cross-entropy")
    cutout: int = _setting(0, "side of the square zeroed per training image; 0 = off")
    seed: int = _setting(0, "seed of initialisation, batch order and augmentation")
    threads: int = _setting(2, "CPU threads for torch")
    limit_train: int = _setting(0, "use only N training images (smoke tests); 0 = all")
    limit_test: int = _setting(0, "evaluate on only N test images after each epoch; 0 = all")
    stop_after: int = _setting(0, "stop this invocation after N more epochs (resume later); 0 = run to the end")
    init: str = _setting("", "start from these weights (a .safetensors file), e.g. to continue a shipped model")
    amp: str = _setting("auto", "bf16: autocast forward and loss to bfloat16; off: float32; "
                        "auto: bf16 where the device has native bfloat16", choices=["auto", "bf16", "off"])
    device: str = _setting("auto", "where to train: cpu, cuda, or auto (cuda where a GPU is visible)",
                           choices=["auto", "cpu", "cuda"])


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` where PyTorch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if device not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but PyTorch sees no GPU here; use --device cpu")
    return device


def resolve_amp(amp: str, device: str = "cpu") -> str:
    """``auto`` becomes ``bf16`` where the device computes bfloat16 natively (CPUs with AVX-512 BF16
    or AMX; GPUs that support it), else ``off``."""
    if amp not in {"auto", "bf16", "off"}:
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    if amp != "auto":
        return amp
    if device == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "off"


# Settings that only say where a run lives or how fast it goes; every other setting shapes what a
# run learns, so a resume refuses to change it.
RESUMABLE_SETTINGS = ("out", "data", "threads", "stop_after", "device")
# What a run recorded before a setting existed means: it trained in float32 (no --amp yet).
LEGACY_SETTINGS = {"amp": "off"}


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``Intel(R) Xeon(R) Platinum 8481C``; ``unknown`` if unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(cfg: TrainConfig) -> dict:
    """The facts of the machine a run trains on, recorded in its config.json for the manifest."""
    gpu = torch.cuda.get_device_name() if cfg.device == "cuda" else None
    return {
        "device": cfg.device,
        **({"gpu": gpu} if gpu else {}),
        "cpu": cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "precision": "bfloat16 autocast" if cfg.amp == "bf16" else "float32",
        "memory_format": "channels_last",
    }


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def check_resumable(saved: dict, cfg: TrainConfig, source: Path) -> None:
    """Refuses to resume with any setting that shapes the run changed, naming it."""
    current = asdict(cfg)
    for key, value in current.items():
        if key in RESUMABLE_SETTINGS:
            continue
        before = saved.get(key, LEGACY_SETTINGS.get(key, _DEFAULTS[key]))
        if before != value:
            raise ValueError(
                f"{source} was made with {key}={before!r}; resuming with {key}={value!r} would change the run. "
                f"Resume with {key}={before!r}, or start a new run in another --out folder."
            )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on BN parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               label_smoothing: float = 0.0, amp: str = "off") -> tuple[Tensor, Tensor]:
    """One optimisation step on a batch; returns the batch's logits and loss (detached)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss.detach()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (0.1 + 0.9 * step / warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def subset(split: Split, limit: int, seed: int) -> Split:
    if not limit or limit >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit]
    return Split(split.images[index], split.labels[index], split.classes)


@torch.no_grad()
def evaluate_split(
    model: ResidualAttentionNet, split: Split, mean, std, batch_size: int = 500, desc: str = "eval"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits (N, K), labels (N,)) in eval mode, on the CPU, whatever device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in tqdm(range(0, len(split), batch_size), desc=desc, unit="batch", leave=False):
        batch = split.images[start : start + batch_size].to(device, non_blocking=True)
        outs.append(model(normalize(batch, mean, std)).float().cpu())
    return torch.cat(outs), split.labels.cpu()


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plot_curves(history: list[dict], path: Path, restarts: tuple[float, ...] = ()) -> None:
    """Loss and accuracy per epoch; ``restarts`` marks where a warm-started schedule began."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend()
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], "o-", label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("top-1 accuracy (%)"), ax2.legend()
    for ax in (ax1, ax2):
        for x in restarts:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
    if restarts:
        ax2.text(restarts[0], ax2.get_ylim()[0], " warm restart", color="grey", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> list[dict]:
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, device=device, amp=resolve_amp(cfg.amp, device))  # the run records what it did, not "auto"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _set_seed(cfg.seed)

    state_path = out / "last.pt"
    # read onto the CPU: a run may resume on another device than the one it stopped on
    state = torch.load(state_path, weights_only=True, map_location="cpu") if state_path.is_file() else None
    if state is not None:
        check_resumable(state["config"], cfg, state_path)  # before any work: a refusal is immediate

    arch = ARCHITECTURES[cfg.arch]
    train_split = subset(load_split(cfg.data, "train", arch.reference_size, cfg.source), cfg.limit_train, cfg.seed)
    test_split = subset(load_split(cfg.data, "test", arch.reference_size, cfg.source), cfg.limit_test, cfg.seed)
    model = ResidualAttentionNet(arch, num_classes=len(train_split.classes))
    if cfg.init and state is None:
        load_state_checked(model, read_checkpoint(Path(cfg.init), expected_arch=cfg.arch), source=cfg.init)
    model = model.to(device, memory_format=torch.channels_last)
    # the data set lives where the model trains: 150 MB of uint8 for CIFAR-10, no loader to wait on
    train_images, train_labels = train_split.images.to(device), train_split.labels.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(train_split) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs

    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves the momentum buffers to the model's device
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"]
        history = json.loads((out / "metrics.json").read_text())[:start_epoch]
        print(f"resuming {cfg.arch} at epoch {start_epoch}/{cfg.epochs}")
    else:
        # what `ranlens export` writes into the manifest: the facts of this run, not assumptions
        (out / "config.json").write_text(json.dumps({
            **asdict(cfg), "classes": list(train_split.classes), "input_size": arch.reference_size,
            "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "train_images": len(train_split),
            "test_images": len(test_split), "machine": machine(cfg),
        }, indent=2))

    generator = torch.Generator().manual_seed(cfg.seed)
    end_epoch = cfg.epochs if not cfg.stop_after else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        # each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches
        generator.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(train_split), generator=generator).to(device)
        model.train()
        # running sums stay on the device: reading them every step would make a GPU wait for the CPU
        seen, correct, loss_sum, t0 = 0, torch.zeros((), device=device), torch.zeros((), device=device), time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = normalize(augment(train_images[index], generator), CIFAR_MEAN, CIFAR_STD)
            x = cutout(x, cfg.cutout, generator)
            y = train_labels[index]
            logits, loss = train_step(model, optimizer, x, y, cfg.label_smoothing, cfg.amp)
            seen += len(y)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += loss.float() * len(y)
            if i % 20 == 19 or i == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                lr=f"{lr:.3f}", ips=f"{seen / (time.time() - t0):.0f}")
        loss_sum, correct = float(loss_sum), int(correct)  # waits for the device's last step
        train_time = time.time() - t0
        logits, labels = evaluate_split(model, test_split, CIFAR_MEAN, CIFAR_STD)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": float(F.cross_entropy(logits, labels)),
            "test_acc": float((logits.argmax(1) == labels).float().mean()),
            "lr_end": lr,
            "train_img_per_s": seen / train_time,
            "epoch_seconds": time.time() - t0,
        }
        history.append(record)
        print(json.dumps(record), flush=True)
        save_checkpoint(model, out / f"epoch{epoch + 1:03d}.safetensors", cfg.arch,
                        {"epoch": str(epoch + 1), "test_acc": f"{record['test_acc']:.4f}"})
        tmp = out / "last.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "torch_rng": torch.get_rng_state(), "config": asdict(cfg)}, tmp)
        tmp.replace(state_path)  # atomic: a run killed mid-save keeps the previous checkpoint
        (out / "metrics.json").write_text(json.dumps(history, indent=2))
        if device == "cpu" or epoch + 1 == end_epoch:  # a plot costs seconds, a GPU epoch not many more
            plot_curves(history, out / "curves.png")
    return history
