"""Trains a Residual Attention Network, resumably, on CPU cores, one GPU, or several under torchrun.

Small images (CIFAR, up to 64 pixels): the whole data set lives as uint8 tensors on the training device
and is augmented there per batch, so neither a 2-core CPU nor a GPU waits on per-image Python work.
Larger ones (ImageNet): streamed from the ImageFolder tree by DataLoader workers (``stream.py``).

Under torchrun (``WORLD_SIZE`` > 1) every process trains on its share of every global batch in
DistributedDataParallel, with batch norm over the global batch; see ``distributed.py``.

One-cycle-style schedule (linear warm-up, cosine decay to zero) stepped per batch and computed
from the global step, so a resumed run lands on exactly the learning rate it stopped at.

``last.pt`` is written at every epoch's end and, in one process, every ``save_every`` minutes inside
an epoch too (a CPU epoch of Attention-92 takes a quarter of an hour). A run resumed from inside an
epoch draws that epoch's batches again from its start and skips those already trained on: the
augmentation's random draws then follow on exactly, whichever loader made them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from . import distributed
from .data import Split, augment, check_source_size, cutout, load_split, normalize, trivial_augment
from .distill import Distillation, distillation_loss, load_teachers, parse_teachers, resolve_teacher, soft_targets
from .distributed import Processes
from .network import ResidualAttentionNet
from .registry import ARCHITECTURES
from .weights import load_state_checked, read_checkpoint, save_checkpoint, write_atomically

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# ImageNet-layout networks normalise with ImageNet's statistics, CIFAR-layout ones with CIFAR-10's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the largest image side kept in memory by default; larger ones stream from disk
MEMORY_MAX_SIZE = 64
# training images (a seeded subset, augmented as in training) whose batch statistics an averaged
# network's batch norm gets: its running statistics are exact averages, and 10,000 32-pixel images
# give each channel ten million values, so more would only cost time every SWA epoch
SWA_BN_IMAGES = 10_000


def _setting(default, help: str, **argparse_extra):
    """A TrainConfig field whose help text (and choices) the ``ranlens train`` options show."""
    return field(default=default, metadata={"help": help, **argparse_extra})


@dataclass
class TrainConfig:
    arch: str = _setting("attention56_cifar", "architecture to train", choices=sorted(ARCHITECTURES))
    data: str = _setting("/tmp/data/cifar10-jpeg", "data folder (DATA/train/<class>/*, DATA/test/<class>/*) "
                         "or, with --source torchvision, where CIFAR-10 is downloaded")
    source: str = _setting("folder", "how to read --data (torchvision: CIFAR-10 at its own 32 pixels, so "
                           "--image-size must be 32 or 0 with a CIFAR-layout --arch)",
                           choices=["folder", "torchvision"])
    out: str = _setting("runs/attention56_cifar", "run folder: checkpoints, metrics, last.pt to resume from")
    epochs: int = _setting(6, "length of the schedule in epochs")
    batch_size: int = _setting(128, "images per step")
    lr: float = _setting(0.2, "peak learning rate")
    warmup: float = _setting(0.15, "fraction of the steps before the --swa epochs (of all steps without "
                             "--swa) spent raising the learning rate linearly from a tenth of --lr to --lr; "
                             "0 = no warm-up, the first step at --lr")
    momentum: float = _setting(0.9, "SGD Nesterov momentum")
    weight_decay: float = _setting(5e-4, "weight decay on conv and linear weights (not BN, not biases)")
    label_smoothing: float = _setting(0.1, "label smoothing of the cross-entropy")
    cutout: int = _setting(0, "side of the square zeroed per training image; 0 = off")
    trivial_augment: bool = _setting(False, "TrivialAugment (Müller & Hutter 2021, torchvision's TrivialAugmentWide): "
                                     "one random operation at a random strength per training image, after the "
                                     "crop and flip and before cutout")
    seed: int = _setting(0, "seed of initialisation, batch order and augmentation")
    threads: int = _setting(2, "CPU threads for torch")
    limit_train: int = _setting(0, "use only N training images (smoke tests); 0 = all")
    limit_test: int = _setting(0, "evaluate on only N test images after each epoch; 0 = all")
    stop_after: int = _setting(0, "stop this invocation after N more epochs (resume later); 0 = run to the end")
    save_every: float = _setting(10.0, "also save last.pt every N minutes inside an epoch, so a stopped run loses "
                                 "at most that much of it (one process; under torchrun at epoch ends); "
                                 "0 = at epoch ends only")
    init: str = _setting("", "start from these weights (a .safetensors file), e.g. to continue a shipped model")
    amp: str = _setting("auto", "bf16: autocast forward and loss to bfloat16; off: float32; "
                        "auto: bf16 where the device has native bfloat16", choices=["auto", "bf16", "off"])
    device: str = _setting("auto", "where to train: cpu, cuda, or auto (cuda where a GPU is visible)",
                           choices=["auto", "cpu", "cuda"])
    image_size: int = _setting(0, "side of the square training image; 0 = the architecture's reference size")
    loader: str = _setting("auto", "memory: decode the data set once into uint8 tensors on the device "
                           "(padded crop + flip); stream: ImageFolder + DataLoader workers (random resized "
                           "crop + flip); auto: memory up to 64 pixels, stream above",
                           choices=["auto", "memory", "stream"])
    workers: int = _setting(8, "DataLoader worker processes per training process (stream loader)")
    accumulate: int = _setting(1, "split each process's share of a batch into N micro-steps (less memory; "
                               "batch norm then sees the micro-batches)")
    compile: bool = _setting(False, "torch.compile the network (minutes of compiling; for GPUs: on a CPU it "
                              "measured slower, see benchmarks/train_speed.py --compile)")
    swa: int = _setting(0, "stochastic weight averaging (Izmailov et al. 2018): hold the learning rate at "
                        "--swa-lr over the last N epochs and average the weights at the end of each; their "
                        "checkpoints are the average, with batch-norm statistics recomputed; 0 = off")
    swa_lr: float = _setting(0.01, "the learning rate held over the --swa epochs")
    teacher: str = _setting("", "distil from these weights (comma-separated shipped names, e.g. "
                            "attention56_cifar.v8,attention92_cifar.v8, or manifest paths): the loss adds the KL "
                            "divergence to their averaged softened predictions on the same augmented batch "
                            "(Hinton et al. 2015); empty = off")
    distill_weight: float = _setting(0.5, "with --teacher: the share of the loss that is the teachers' (the rest "
                                     "is the cross-entropy with the labels)")
    distill_temperature: float = _setting(4.0, "with --teacher: the temperature both sides' predictions are "
                                          "softened at")
    preset: str = _setting("none", "a published recipe: imagenet = SGD momentum 0.9, weight decay 1e-4, "
                           "batch 256, lr 0.1, 90 epochs, cosine (options given explicitly win)",
                           choices=["none", "imagenet"])


# What a preset sets. Applied where the settings are gathered (``with_preset``), so config.json and
# last.pt record the values the run used, and a resume compares those.
PRESETS: dict[str, dict] = {
    # Wang et al. 2017 trained ImageNet with SGD, momentum 0.9, weight decay 1e-4, batch 256, lr 0.1;
    # cosine decay and a short warm-up replace their step schedule (ours is per batch, as for CIFAR)
    "imagenet": {"epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                 "warmup": 0.05, "label_smoothing": 0.1, "cutout": 0},
}


def with_preset(cfg: TrainConfig, given: Iterable[str] = ()) -> TrainConfig:
    """``cfg`` with its preset's values, except for the settings named in ``given`` (options the
    person typed, which win)."""
    if cfg.preset == "none":
        return cfg
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    keep = set(given)
    return replace(cfg, **{k: v for k, v in PRESETS[cfg.preset].items() if k not in keep})


def resolve_loader(loader: str, image_size: int) -> str:
    if loader not in {"auto", "memory", "stream"}:
        raise ValueError(f"loader must be 'auto', 'memory' or 'stream', got {loader!r}")
    if loader != "auto":
        return loader
    return "memory" if image_size <= MEMORY_MAX_SIZE else "stream"


def statistics(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a network of ``arch`` normalises its input with."""
    return (IMAGENET_MEAN, IMAGENET_STD) if ARCHITECTURES[arch].stem == "imagenet" else (CIFAR_MEAN, CIFAR_STD)


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
# run learns, so a resume refuses to change it. The process count (torchrun's WORLD_SIZE, recorded as
# "world_size") is no setting and may change too: with the global batch, its sampling and batch norm
# the same whatever the count, the processes compute what one would (the stream loader's sampler and
# worker seeds do depend on it; see README).
RESUMABLE_SETTINGS = ("out", "data", "threads", "stop_after", "save_every", "device", "workers", "compile")
# What a run recorded before a setting existed means: it trained in float32 (no --amp yet), in memory
# at the architecture's reference size, in one step per batch, with no preset.
LEGACY_SETTINGS = {"amp": "off", "loader": "memory", "accumulate": 1, "preset": "none",
                   "image_size": lambda saved: ARCHITECTURES[saved.get("arch", _DEFAULT_ARCH)].reference_size}


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``Intel(R) Xeon(R) Platinum 8481C``; ``unknown`` if unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(cfg: TrainConfig, world_size: int = 1) -> dict:
    """The facts of the machine a run trains on, recorded in its config.json for the manifest."""
    gpu = torch.cuda.get_device_name() if cfg.device == "cuda" else None
    return {
        "device": cfg.device,
        **({"gpu": gpu} if gpu else {}),
        "processes": world_size,
        "cpu": cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "precision": "bfloat16 autocast" if cfg.amp == "bf16" else "float32",
        "memory_format": "channels_last",
    }


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_DEFAULT_ARCH = _DEFAULTS["arch"]


def lengthens_swa(saved: dict, cfg: TrainConfig) -> int:
    """How many epochs a resume adds to an averaging run (0 if it adds none).

    ``lr_at`` decays over ``epochs - swa`` epochs and holds ``swa_lr`` after them, so growing
    ``--epochs`` and ``--swa`` by the same N leaves every learning rate the run has used, and the
    epoch its averaging began, as they were: the longer run is the one that would have been planned
    from the start. Without averaging (``swa`` 0) the cosine's floor would change, so that is no
    lengthening."""
    added = cfg.epochs - saved.get("epochs", cfg.epochs)
    if added > 0 and saved.get("swa", 0) > 0 and cfg.swa - saved["swa"] == added:
        return added
    return 0


def recorded_setting(saved: dict, key: str):
    """The value of setting ``key`` a run recorded; for a run made before the setting existed, what it
    meant then (``LEGACY_SETTINGS``, else the default)."""
    if key in saved:
        return saved[key]
    legacy = LEGACY_SETTINGS.get(key, _DEFAULTS[key])
    return legacy(saved) if callable(legacy) else legacy


def check_resumable(saved: dict, cfg: TrainConfig, source: Path) -> None:
    """Refuses to resume with any setting that shapes the run changed, naming it; an averaging run
    may lengthen (``lengthens_swa``)."""
    current = asdict(cfg)
    longer = lengthens_swa(saved, cfg)
    for key, value in current.items():
        if key in RESUMABLE_SETTINGS or (longer and key in ("epochs", "swa")):
            continue
        before = recorded_setting(saved, key)
        if before != value:
            hint = (" (an averaging run lengthens when --epochs and --swa grow by the same number)"
                    if key in ("epochs", "swa") and saved.get("swa", 0) > 0 else "")
            raise ValueError(
                f"{source} was made with {key}={before!r}; resuming with {key}={value!r} would change the run. "
                f"Resume with {key}={before!r}, or start a new run in another --out folder{hint}."
            )


# Each invocation's own: a resume runs to the end of the schedule unless told to stop sooner
NOT_CARRIED = ("stop_after",)


def resumed_config(run: str | Path, given: dict) -> TrainConfig:
    """The settings that continue the run in folder ``run``: those its ``config.json`` recorded (a
    lengthened run's longer plan included), except ``stop_after``, with the ``given`` ones on top. A
    given setting that shapes the run and differs from the record is then refused by
    ``check_resumable``, as for any resume, so only how and how long this invocation runs can change
    (or the plan of an averaging run grow, ``lengthens_swa``)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run to resume in {run}: it has no config.json (a run writes one when it starts)")
    recorded = json.loads(path.read_text())
    if "out" in given and Path(given["out"]) != Path(run):
        raise ValueError(f"--resume {run} continues the run in that folder; leave out --out (got {given['out']})")
    values = {f.name: recorded_setting(recorded, f.name) for f in fields(TrainConfig) if f.name not in NOT_CARRIED}
    return TrainConfig(**{**values, **given, "out": str(run)})


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on BN parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               label_smoothing: float = 0.0, amp: str = "off", micro_steps: int = 1,
               distill: Distillation | None = None) -> tuple[Tensor, Tensor]:
    """One optimisation step on a batch, in ``micro_steps`` equal parts whose gradients add up
    before the update; returns the batch's logits and mean loss (detached). With ``distill`` the
    loss is ``(1 - w) * cross-entropy + w * distillation_loss`` against the teachers' view of each part."""
    if len(x) % micro_steps:
        raise ValueError(f"a batch of {len(x)} does not split into {micro_steps} equal micro-steps")
    optimizer.zero_grad(set_to_none=True)
    logits_parts, losses = [], []
    for j, (xj, yj) in enumerate(zip(x.chunk(micro_steps), y.chunk(micro_steps))):
        # DDP averages gradients across processes in backward; the micro-steps before the last
        # only accumulate locally, so the exchange happens once per batch
        last = j == micro_steps - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = model(xj)
                loss = F.cross_entropy(logits, yj, label_smoothing=label_smoothing)
            if distill is not None:
                targets = soft_targets(distill.teachers, xj, distill.temperature, amp)
                loss = ((1 - distill.weight) * loss
                        + distill.weight * distillation_loss(logits, targets, distill.temperature))
            (loss / micro_steps if micro_steps > 1 else loss).backward()
        logits_parts.append(logits.detach())
        losses.append(loss.detach())
    optimizer.step()
    return torch.cat(logits_parts), torch.stack(losses).mean()


def lr_at(step: int, total: int, cfg: TrainConfig, swa_steps: int = 0) -> float:
    """The learning rate of ``step`` of ``total``: warm-up, then cosine decay to zero; with
    ``swa_steps``, the decay ends at ``cfg.swa_lr`` that many steps before the end and holds there."""
    decay = total - swa_steps
    if step >= decay:
        return cfg.swa_lr
    floor = cfg.swa_lr if swa_steps else 0.0
    # a warm-up of a few steps is at least one; none is none (max(1, 0) once ran the first step at a tenth)
    warm = max(1, int(cfg.warmup * decay)) if cfg.warmup > 0 else 0
    if step < warm:
        return cfg.lr * (0.1 + 0.9 * step / warm)
    progress = min(1.0, (step - warm) / max(1, decay - warm))
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def subset(split: Split, limit: int, seed: int) -> Split:
    if not limit or limit >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit]
    return Split(split.images[index], split.labels[index], split.classes)


def eval_batch_size(device: torch.device | str, size: int) -> int:
    """Images per forward when a whole split is scored. A GPU wants big batches; on a CPU the rate per
    image falls once a batch's activations outgrow the caches (32 px, 2 cores: batch 64 runs at 2.5 to
    3.2 times the rate of 500, ``benchmarks/throughput.py --batch 500 64 16 --mode infer``), so CPU batches
    hold about 64 images' worth of 32 px pixels, and at least one image."""
    if torch.device(device).type != "cpu":
        return 500
    return max(1, 64 * 32 * 32 // (size * size))


@torch.no_grad()
def evaluate_split(
    model: ResidualAttentionNet, split: Split, mean, std, batch_size: int | None = None, desc: str = "eval",
    show: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits (N, K), labels (N,)) in eval mode, on the CPU, whatever device the model is on;
    ``batch_size`` defaults to ``eval_batch_size``."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device, split.images.shape[-1])
    outs = [torch.zeros((0, model.num_classes))]
    for start in tqdm(range(0, len(split), batch_size), desc=desc, unit="batch", leave=False, disable=not show):
        batch = split.images[start : start + batch_size].to(device, non_blocking=True)
        batch = normalize(batch, mean, std).contiguous(memory_format=torch.channels_last)
        outs.append(model(batch).float().cpu())
    return torch.cat(outs), split.labels.cpu()


@torch.no_grad()
def evaluate_loader(model: ResidualAttentionNet, loader, mean, std, show: bool = True) -> tuple[Tensor, Tensor]:
    """As ``evaluate_split``, for batches of uint8 images from a DataLoader."""
    model.eval()
    device = next(model.parameters()).device
    outs, labels = [torch.zeros((0, model.num_classes))], [torch.zeros(0, dtype=torch.int64)]
    for images, y in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not show):
        outs.append(model(normalize(images.to(device, non_blocking=True), mean, std)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


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


@dataclass
class _Data:
    """A run's data, whichever loader reads it, as this process sees it."""

    classes: tuple[str, ...]
    train_images: int
    test_images: int
    steps_per_epoch: int
    # epoch -> this process's share of each global batch: (normalised images, labels) on the device
    batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]]
    # (network, show progress) -> logits and labels of this process's strided share of the test split
    evaluate: Callable[[nn.Module, bool], tuple[Tensor, Tensor]]
    # training batches, augmented as in training, whose statistics an averaged network's batch norm takes
    bn_batches: Callable[[], Iterator[Tensor]] | None = None


def check_split_classes(train: Iterable[str], test: Iterable[str], data: str) -> None:
    """Refuses a test split whose classes differ from the training split's: each split numbers its
    classes by its own sorted folder names, so one folder more, fewer or renamed would score test
    images against the labels of other classes."""
    train, test = list(train), list(test)
    if train != test:
        raise ValueError(f"the train and test splits of {data} have different classes: train {train}, test {test}; "
                         f"give both splits the same class folders")


def _memory_data(cfg: TrainConfig, procs: Processes, device: torch.device, mean, std, per: int) -> _Data:
    # rank 0 decodes (or downloads) and caches first; the others then read its cache instead of
    # decoding the same images at the same time
    if not procs.main:
        distributed.barrier()
    train_split = subset(load_split(cfg.data, "train", cfg.image_size, cfg.source), cfg.limit_train, cfg.seed)
    test_split = subset(load_split(cfg.data, "test", cfg.image_size, cfg.source), cfg.limit_test, cfg.seed)
    if procs.main:
        distributed.barrier()
    check_split_classes(train_split.classes, test_split.classes, cfg.data)  # in every process, past the barrier
    # the data set lives where the model trains: 150 MB of uint8 for CIFAR-10, no loader to wait on
    images, labels = train_split.images.to(device), train_split.labels.to(device)
    batch = cfg.batch_size
    rows = distributed.batch_rows(batch, procs, cfg.accumulate)
    share, mine = (rows, batch), rows.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)

    def augmented(x: Tensor, g: torch.Generator, share: tuple[Tensor, int] | None = None) -> Tensor:
        # the one definition of a training view, for the batches and the averaged network's batch norm alike
        x = augment(x, g, share=share)
        if cfg.trivial_augment:
            x = trivial_augment(x, g, share)
        return cutout(normalize(x, mean, std), cfg.cutout, g, share)

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        # each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches;
        # every process draws the same global order and augmentation and keeps its own rows of each
        # batch, so the global batch is the same whatever the process count
        generator.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(train_split), generator=generator).to(device)
        for i in range(len(train_split) // batch):
            index = order[i * batch : (i + 1) * batch][mine]
            yield augmented(images[index], generator, share), labels[index]

    def bn_batches() -> Iterator[Tensor]:
        # augmented as the network was trained: its batch norm's affine parameters were learnt on
        # statistics of padded crops and cutout, and statistics of clean images lost 4 points of test
        # accuracy in a trial run. The same draws every time (and in every process, whose averaged
        # networks so get the same statistics).
        chosen = subset(Split(images, labels, train_split.classes), SWA_BN_IMAGES, cfg.seed).images
        g = torch.Generator().manual_seed(cfg.seed * 1000 + 999)  # no epoch of a run draws with this seed
        for start in range(0, len(chosen), batch):
            yield augmented(chosen[start : start + batch], g)

    part = slice(procs.rank, None, procs.world_size)
    test_part = Split(test_split.images[part], test_split.labels[part], test_split.classes)
    return _Data(train_split.classes, len(train_split), len(test_split), len(train_split) // batch, batches,
                 lambda net, show: evaluate_split(net, test_part, mean, std, show=show), bn_batches)


def _stream_data(cfg: TrainConfig, procs: Processes, device: torch.device, mean, std, per: int) -> _Data:
    from . import stream  # DataLoader workers and torchvision datasets only where they are used

    if cfg.source != "folder":
        raise ValueError(f"the stream loader reads ImageFolder trees (--source folder), not {cfg.source!r}")
    train_folder = stream.image_folder(cfg.data, "train", stream.train_transform(cfg.image_size, cfg.trivial_augment))
    test_folder = stream.image_folder(cfg.data, "test", stream.eval_transform(cfg.image_size))
    check_split_classes(train_folder.classes, test_folder.classes, cfg.data)
    train_set = stream.limited(train_folder, cfg.limit_train, cfg.seed)
    test_set = stream.limited(test_folder, cfg.limit_test, cfg.seed)
    pin = device.type == "cuda"
    loader = stream.train_loader(train_set, per, procs.rank, procs.world_size, cfg.seed, cfg.workers, pin)
    # the loader's batches are this process's own; cutout draws as for the memory loader
    generator, share = torch.Generator(), (distributed.batch_rows(cfg.batch_size, procs, cfg.accumulate), cfg.batch_size)

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader.sampler.set_epoch(epoch)  # the order follows (seed, epoch)
        # the workers' seeds come from the loader's generator: their crops follow (seed, epoch, rank)
        loader.generator.manual_seed((cfg.seed * 1000 + epoch) * 1000 + procs.rank)
        if cfg.workers == 0:
            # no workers: the transforms draw from this process's global random state, which a resume inside
            # the epoch restores as it was at the save, after the batches it then draws again; seeded here
            # instead, the redrawn epoch repeats its crops as the workers' seeds make them repeat
            torch.manual_seed((cfg.seed * 1000 + epoch) * 1000 + procs.rank)
        generator.manual_seed(cfg.seed * 1000 + epoch)
        for images, labels in loader:
            x = normalize(images.to(device, non_blocking=True), mean, std)
            yield cutout(x, cfg.cutout, generator, share), labels.to(device, non_blocking=True)

    test_loader = stream.eval_loader(test_set, range(procs.rank, len(test_set), procs.world_size), per,
                                     cfg.workers, pin)
    return _Data(tuple(train_folder.classes), len(train_set), len(test_set), len(loader), batches,
                 lambda net, show: evaluate_loader(net, test_loader, mean, std, show=show))


def _test(data: _Data, net: nn.Module, procs: Processes, device: torch.device) -> tuple[float, float]:
    """(loss, top-1 accuracy) of ``net`` on the whole test split, whatever the process count."""
    logits, labels = data.evaluate(net, procs.main)
    logits = distributed.gather_strided(logits, data.test_images, procs, device)
    labels = distributed.gather_strided(labels, data.test_images, procs, device)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


# Each numeric setting's valid range, as (test, what it must be); NaN fails every test.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "threads": (lambda v: v >= 1, "at least 1"),
    "accumulate": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: 0 < v < math.inf, "positive"),
    "warmup": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "momentum": (lambda v: 0 < v < 1, "in (0, 1) (Nesterov momentum needs some)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "cutout": (lambda v: v >= 0, "0 (off) or more"),
    "limit_train": (lambda v: v >= 0, "0 (all) or more"),
    "limit_test": (lambda v: v >= 0, "0 (all) or more"),
    "stop_after": (lambda v: v >= 0, "0 (run to the end) or more"),
    "save_every": (lambda v: v >= 0, "0 (at epoch ends only) or more"),
    "workers": (lambda v: v >= 0, "0 or more"),
    "swa_lr": (lambda v: 0 < v < math.inf, "positive"),
    "distill_temperature": (lambda v: 0 < v < math.inf, "positive"),
}
# Settings read only with another option on, checked only then: a run that never used one resumes
# whatever value it recorded for it
_USED_WITH = {"swa_lr": "swa", "distill_temperature": "teacher"}


def check_settings(cfg: TrainConfig) -> None:
    """Refuses a setting no run can use, naming its option, before anything is read or written (a
    batch size of 0 was a ZeroDivisionError after the data set was decoded)."""
    for name, (ok, wanted) in _RANGES.items():
        value = getattr(cfg, name)
        if name in _USED_WITH and not getattr(cfg, _USED_WITH[name]):
            continue
        if not ok(value):
            raise ValueError(f"--{name.replace('_', '-')} must be {wanted}, got {value}")


def train(cfg: TrainConfig) -> list[dict]:
    """Trains as ``cfg`` says (its preset already applied, see ``with_preset``); under torchrun, as one
    of ``WORLD_SIZE`` processes. Returns the per-epoch records."""
    check_settings(cfg)
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    if cfg.image_size < 0:
        raise ValueError(f"image size must be positive (or 0 for the architecture's own), got {cfg.image_size}")
    if not 0 <= cfg.swa <= cfg.epochs:
        raise ValueError(f"--swa averages the last N of the {cfg.epochs} epochs: N must be 0..{cfg.epochs}, "
                         f"got {cfg.swa}")
    if cfg.teacher and not 0 < cfg.distill_weight <= 1:
        raise ValueError(f"--distill-weight is the teachers' share of the loss: it must be in (0, 1], "
                         f"got {cfg.distill_weight}")
    for spec in parse_teachers(cfg.teacher):
        resolve_teacher(spec)  # a misspelt teacher is refused before the data set is read
    init = _init_state(cfg)
    procs = distributed.processes_from_env()
    size = cfg.image_size or ARCHITECTURES[cfg.arch].reference_size
    check_source_size(cfg.source, size)  # before a download, not after it
    device_type = resolve_device(cfg.device)
    # the run records what it did, not "auto" or 0
    cfg = replace(cfg, device=device_type, amp=resolve_amp(cfg.amp, device_type), image_size=size,
                  loader=resolve_loader(cfg.loader, size))
    if cfg.swa and cfg.loader != "memory":
        raise ValueError("--swa recomputes batch-norm statistics from the in-memory training images; "
                         "use --loader memory (images up to 64 pixels)")
    per = distributed.per_process_batch(cfg.batch_size, procs.world_size, cfg.accumulate)
    torch.set_num_threads(cfg.threads)
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    state_path = out / "last.pt"
    # read onto the CPU: a run may resume on another device than the one it stopped on
    state = torch.load(state_path, weights_only=True, map_location="cpu") if state_path.is_file() else None
    if state is not None:
        recorded = state["config"].get("init") or ""
        if recorded and cfg.init and Path(recorded).resolve() == Path(cfg.init).resolve():
            cfg = replace(cfg, init=recorded)  # the run's own command again: the same file, typed relative
        check_resumable(state["config"], cfg, state_path)  # before any work: a refusal is immediate
        if state["epoch"] >= cfg.epochs:
            # nothing is left to train: said plainly, not as "resuming at epoch N/N" and a silent exit
            if procs.main:
                longer = (" (an averaging run lengthens when --epochs and --swa grow by the same number)"
                          if cfg.swa else "")
                print(f"{out} has finished: all {cfg.epochs} epochs are done, nothing to train{longer}")
            return json.loads((out / "metrics.json").read_text())
    elif cfg.init:
        # a new run records --init as an absolute path: `ranlens export` reads it from config.json for the
        # parent's lineage, from whatever folder it runs in (a resume keeps what its run recorded)
        cfg = replace(cfg, init=str(Path(cfg.init).resolve()))

    device = distributed.start(procs, device_type)
    try:
        history = _train(cfg, procs, device, state, per, init)
        # rank 0 still writes its files after the last exchange; a process that tore the group down
        # meanwhile was once aborted inside gloo ("terminate called without an active exception", on a
        # loaded machine), so every process waits until all are done
        distributed.barrier()
        return history
    finally:
        distributed.shutdown()


def _init_state(cfg: TrainConfig) -> dict[str, Tensor] | None:
    """The weights a new run starts from (``--init``), read and checked for the architecture before the
    data set is (which can take minutes); None without ``--init``, or for a run that resumes from its
    last.pt, whose --init may be gone by now."""
    if not cfg.init or (Path(cfg.out) / "last.pt").is_file():
        return None
    return read_checkpoint(Path(cfg.init), expected_arch=cfg.arch)


def check_same_data(recorded: dict, data: _Data, cfg: TrainConfig) -> None:
    """Refuses to resume on another data set than the run started on. ``--data`` may name another
    folder (the set moved), but its classes and image counts must be those config.json recorded:
    other classes fed the network other labels (or failed deep in loading last.pt, for another
    count of them), other images other batches than the epochs already trained on. A run made
    before config.json recorded a fact is not checked for it."""
    found = {"classes": list(data.classes), "train_images": data.train_images, "test_images": data.test_images}
    for key, value in found.items():
        if key in recorded and recorded[key] != value:
            raise ValueError(f"{Path(cfg.out) / 'config.json'} recorded {key}={recorded[key]!r}, but --data "
                             f"{cfg.data} gives {key}={value!r}: resume on the data set the run started on, or "
                             f"start a new run in another --out folder")


def _train(cfg: TrainConfig, procs: Processes, device: torch.device, state: dict | None, per: int,
           init: dict[str, Tensor] | None = None) -> list[dict]:
    out, state_path = Path(cfg.out), Path(cfg.out) / "last.pt"
    _set_seed(cfg.seed)  # the same initial weights in every process
    arch = ARCHITECTURES[cfg.arch]
    mean, std = statistics(cfg.arch)
    data = (_memory_data if cfg.loader == "memory" else _stream_data)(cfg, procs, device, mean, std, per)
    if data.steps_per_epoch == 0:
        raise ValueError(f"{data.train_images} training images make no full batch of {cfg.batch_size}")
    if state is not None and (out / "config.json").is_file():
        check_same_data(json.loads((out / "config.json").read_text()), data, cfg)
    net = ResidualAttentionNet(arch, num_classes=len(data.classes))
    if init is not None and state is None:
        load_state_checked(net, init, source=cfg.init)
    if state is not None:
        # the unwrapped network's state: any process count resumes it
        load_state_checked(net, state["model"], source=str(state_path))
    net = net.to(device, memory_format=torch.channels_last)
    model: nn.Module = net
    if procs.distributed:
        # batch norm over the global batch, not each process's share: what one process would compute
        net = distributed.convert_sync_batchnorm(net, device.type)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    teachers = load_teachers(parse_teachers(cfg.teacher), data.classes, cfg.image_size, mean, std, device)
    distill = (Distillation(tuple(t for _, t in teachers), cfg.distill_weight, cfg.distill_temperature)
               if teachers else None)
    if state is not None and teachers:
        # a name can come to mean other weights (a manifest edited, a file replaced): the run goes on
        # learning from the networks it started with, or not at all
        recorded = {t["name"]: t["sha256"] for t in json.loads((out / "config.json").read_text()).get("teachers", [])}
        changed = [w.name for w, _ in teachers if recorded.get(w.name) != w.sha256]
        if changed:
            raise ValueError(f"teacher {', '.join(changed)} is not the network {out} started learning from "
                             "(its sha256 differs from the one config.json recorded); resume with the same files")
    optimizer = make_optimizer(net, cfg)
    total_steps = data.steps_per_epoch * cfg.epochs
    swa_steps = data.steps_per_epoch * cfg.swa
    averaged = torch.optim.swa_utils.AveragedModel(net) if cfg.swa else None

    history: list[dict] = []
    start_epoch, resumed_steps, resumed_sums = 0, 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # moves the momentum buffers to the model's device
        if averaged is not None:
            averaged.load_state_dict(state["swa"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"]
        # saved inside an epoch: the steps of epoch start_epoch + 1 already trained, and their sums
        resumed_steps, resumed_sums = state.get("steps", 0), state.get("sums")
        # a run saved inside its first epoch has no metrics.json yet
        history = json.loads((out / "metrics.json").read_text())[:start_epoch] if start_epoch else []
        if procs.main:
            added = lengthens_swa(state["config"], cfg)
            if added:
                # the run is now the longer one: export reads its plan from config.json
                recorded = json.loads((out / "config.json").read_text())
                # whole or not at all: every later resume and the export read it
                write_atomically(out / "config.json", json.dumps({**recorded, "epochs": cfg.epochs, "swa": cfg.swa},
                                                                 indent=2))
                print(f"lengthening the averaging by {added} epoch(s): {cfg.swa} of {cfg.epochs}")
            inside = f", batch {resumed_steps}/{data.steps_per_epoch} of the next" if resumed_steps else ""
            print(f"resuming {cfg.arch} at epoch {start_epoch}/{cfg.epochs}{inside} in {procs.world_size} process(es)")
    elif procs.main:
        # what `ranlens export` writes into the manifest: the facts of this run, not assumptions (whole or
        # not at all: a resume, `ranlens status` and the export read it)
        write_atomically(out / "config.json", json.dumps({
            **asdict(cfg), "world_size": procs.world_size, "classes": list(data.classes),
            "input_size": cfg.image_size, "mean": list(mean), "std": list(std), "train_images": data.train_images,
            "test_images": data.test_images, "machine": machine(cfg, procs.world_size),
            "teachers": [{"name": w.name, "arch": w.arch, "sha256": w.sha256, "top1": w.metrics.get("top1")}
                         for w, _ in teachers],
        }, indent=2))

    def save_state(epoch: int, **inside) -> None:
        """``last.pt`` after ``epoch`` whole epochs (and, ``inside`` the next one, its steps done so far)."""
        tmp = out / "last.pt.tmp"
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "torch_rng": torch.get_rng_state(), "config": asdict(cfg), "world_size": procs.world_size,
                    **({"swa": averaged.state_dict()} if averaged is not None else {}), **inside}, tmp)
        tmp.replace(state_path)  # atomic: a run killed mid-save keeps the previous checkpoint

    # only one process saves inside an epoch: the others' shares of the epoch's sums are theirs alone
    save_seconds = 60 * cfg.save_every if cfg.save_every > 0 and not procs.distributed else math.inf
    end_epoch = cfg.epochs if not cfg.stop_after else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        # running sums stay on the device: reading them every step would make a GPU wait for the CPU
        seen, correct, loss_sum, t0 = 0, torch.zeros((), device=device), torch.zeros((), device=device), time.time()
        skip = resumed_steps if epoch == start_epoch else 0
        if skip:
            t0 -= resumed_sums["seconds"]
            if procs.main:  # the whole batches' sums so far: one process's share, as the processes add up
                seen = resumed_sums["seen"]
                correct += resumed_sums["correct"]
                loss_sum += resumed_sums["loss_sum"]
        last_save = time.time()
        bar = tqdm(data.batches(epoch), total=data.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not procs.main)
        for i, (x, y) in enumerate(bar):
            if i < skip:
                continue  # trained on before the stop; drawn again so the draws after it are the same
            step = epoch * data.steps_per_epoch + i
            lr = lr_at(step, total_steps, cfg, swa_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits, loss = train_step(model, optimizer, x, y, cfg.label_smoothing, cfg.amp, cfg.accumulate, distill)
            seen += len(y)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += loss.float() * len(y)
            if procs.main and (i % 20 == 19 or i == data.steps_per_epoch - 1):  # rank 0's share of the batches
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                lr=f"{lr:.3f}", ips=f"{procs.world_size * seen / (time.time() - t0):.0f}")
            if time.time() - last_save >= save_seconds and i < data.steps_per_epoch - 1:
                save_state(epoch, steps=i + 1, sums={"seen": seen, "correct": int(correct),
                                                     "loss_sum": float(loss_sum), "seconds": time.time() - t0})
                last_save = time.time()
        # the whole global batch's sums (waits for the device's last step)
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
        train_time = time.time() - t0
        # from the first SWA epoch on, the run's network (what it checkpoints and evaluates) is the average
        swa_epoch = averaged is not None and epoch >= cfg.epochs - cfg.swa
        if swa_epoch:
            averaged.update_parameters(net)
            torch.optim.swa_utils.update_bn(data.bn_batches(), averaged.module)
        result = averaged.module if swa_epoch else net
        test_loss, test_acc = _test(data, result, procs, device)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr_end": lr,
            "train_img_per_s": seen / train_time,
            "epoch_seconds": time.time() - t0,
            "world_size": procs.world_size,
        }
        if swa_epoch:  # what the averaging adds: the last weights SGD reached, alone
            record["swa_models"] = int(averaged.n_averaged)
            record["sgd_test_loss"], record["sgd_test_acc"] = _test(data, net, procs, device)
        history.append(record)
        if not procs.main:
            continue  # rank 0 alone logs and writes; the next epoch's first exchange waits for it
        print(json.dumps(record), flush=True)
        save_checkpoint(result, out / f"epoch{epoch + 1:03d}.safetensors", cfg.arch,
                        {"epoch": str(epoch + 1), "test_acc": f"{record['test_acc']:.4f}"})
        # the record first, whole (a resume reads the epochs last.pt names from it): a stop between the two
        # leaves one epoch more in metrics.json, which the resume cuts, never one fewer
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(history, indent=2))
        os.replace(tmp, out / "metrics.json")
        save_state(epoch + 1)
        if device.type == "cpu" or epoch + 1 == end_epoch:  # a plot costs seconds, a GPU epoch not many more
            plot_curves(history, out / "curves.png")
    return history
