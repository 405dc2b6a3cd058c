"""CIFAR-style data as in-memory uint8 tensors: an ImageFolder directory or torchvision's CIFAR-10.

Training on 2 CPU cores cannot afford per-image Python work, so every split is decoded once,
cached as a ``.npz`` outside the repository (``$XDG_CACHE_HOME/ranlens``, else ``~/.cache/ranlens``),
and augmented per batch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .imaging import decode_file
from .preprocess import center_crop

__all__ = ["Split", "augment", "check_source_size", "count_images", "cutout", "load_split", "split_directory",
           "trivial_augment"]

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ranlens"
MAX_PIXELS = 40_000_000  # as the app's default: a data set is no place for decompression bombs either
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
# torchvision's CIFAR-10 comes as 32-pixel arrays, which are used as they are
TORCHVISION_SIZE = 32


@dataclass(frozen=True)
class Split:
    images: Tensor  # (N, 3, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _folder_files(directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names of an ImageFolder directory and its image files with their labels."""
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{directory} has no class folders (expected ImageFolder layout)")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((directory / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return classes, files


def count_images(directory: str | Path) -> int:
    """How many images ``load_split`` would read from an ImageFolder directory, without decoding any."""
    return len(_folder_files(Path(directory))[1])


def _folder_split(directory: Path, size: int) -> Split:
    classes, files = _folder_files(directory)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=f"decoding {directory.name}", unit="img", leave=False)):
        # decoded as the app decodes uploads (orientation, transparency on white, first frame)
        im = decode_file(path, MAX_PIXELS)
        images[i] = np.asarray(im if im.size == (size, size) else center_crop(im, size))
    labels = np.array([label for _, label in files], dtype=np.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), tuple(classes))


def _torchvision_split(root: Path, train: bool) -> Split:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(root), train=train, download=True)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes))


def check_source_size(source: str, size: int) -> None:
    """Refuses an image size a source cannot give: torchvision's CIFAR-10 is read at its own 32 pixels
    (a network trained or evaluated at another size would silently see 32-pixel images)."""
    if source == "torchvision" and size != TORCHVISION_SIZE:
        raise ValueError(f"--source torchvision gives CIFAR-10's images at their own {TORCHVISION_SIZE} pixels, not "
                         f"the {size} asked for (--image-size, or the weights' input size): work at "
                         f"{TORCHVISION_SIZE} pixels, or read a folder of the images (--source folder) at any size")


def split_directory(data: str | Path, split: str) -> Path:
    """``data/<split>``; for the test split ``data/val`` where there is no ``data/test`` (the ImageNet
    layout); else ``data`` itself, a folder of class folders."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = Path(data)
    for name in (split, "val") if split == "test" else (split,):
        if (data / name).is_dir():
            return data / name
    return data


def load_split(data: str | Path, split: str, size: int = 32, source: str = "folder") -> Split:
    """``source="folder"``: ``data/<split>/<class>/*`` (``data/val`` for the test split where there is
    no ``data/test``, or ``data`` itself when it holds class folders); ``source="torchvision"``:
    CIFAR-10 downloaded into ``data``."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = Path(data)
    if source == "torchvision":
        check_source_size(source, size)
        return _torchvision_split(data, train=split == "train")
    if source != "folder":
        raise ValueError(f"source must be 'folder' or 'torchvision', got {source!r}")
    directory = split_directory(data, split)
    # folder modification times change when files are added, removed or renamed: a changed data set
    # gets a new cache entry instead of the old arrays
    stamps = [(p.name, p.stat().st_mtime_ns) for p in [directory, *sorted(directory.iterdir())] if p.is_dir()]
    key = hashlib.sha256(f"{directory.resolve()}|{size}|{stamps}".encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"{directory.name}-{size}-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return Split(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), tuple(z["classes"].tolist()))
    result = _folder_split(directory, size)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # written aside and renamed: another process (a torchrun rank, a second run) never reads half a file
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as fh:
        np.savez(fh, images=result.images.numpy(), labels=result.labels.numpy(), classes=np.array(result.classes))
    partial.replace(cache)
    return result


def _draw_rows(n: int, share: tuple[Tensor, int] | None) -> tuple[int, Tensor | slice]:
    """Random draws are made for the whole global batch and each process keeps the rows of its own
    images (``share``: their positions in the global batch, and its size), so the draws an image gets
    do not depend on how many processes share the batch."""
    if share is None:
        return n, slice(None)
    rows, total = share
    if len(rows) != n:
        raise ValueError(f"{n} images but {len(rows)} positions in the global batch")
    return total, rows


def augment(images: Tensor, generator: torch.Generator, padding: int = 4,
            share: tuple[Tensor, int] | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, for a uint8 batch on any device.

    The draws come from ``generator`` (a CPU generator), so a batch's crops are the same on CPU and GPU;
    the crop itself is one gather, with no per-image Python work for a GPU to wait on. ``share=(rows,
    size)``: ``images`` are the rows ``rows`` (CPU positions) of a global batch of ``size`` images.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    total, mine = _draw_rows(n, share)
    dy = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[mine].to(device)
    dx = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[mine].to(device)
    flip = (torch.rand(total, generator=generator) < 0.5)[mine].to(device)
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    rows = dy[:, None] + ys  # (n, h)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - xs, xs)  # (n, w): a flip reads columns backwards
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def trivial_augment(images: Tensor, generator: torch.Generator,
                    share: tuple[Tensor, int] | None = None) -> Tensor:
    """TrivialAugment (Müller & Hutter 2021): one operation at one random strength per image, torchvision's
    ``TrivialAugmentWide``, for a uint8 batch on any device.

    torchvision draws from the global random state; each image gets it seeded from ``generator`` (one
    draw per image of the global batch, as ``augment`` does), inside ``fork_rng`` so the caller's own
    state is left as it was. A batch so comes out the same whatever the process count, and a resumed
    run sees the same images.
    """
    from torchvision.transforms import TrivialAugmentWide

    total, mine = _draw_rows(len(images), share)
    seeds = torch.randint(0, 2**62, (total,), generator=generator)[mine].tolist()
    policy = TrivialAugmentWide()
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            out[i] = policy(images[i])
    return out


def cutout(images: Tensor, size: int, generator: torch.Generator, share: tuple[Tensor, int] | None = None) -> Tensor:
    """Zero one ``size`` x ``size`` square per image (DeVries & Taylor 2017), clipped at the border.

    Applied after normalisation, so zero is the data-set mean colour rather than black. ``share``: as
    for ``augment``.
    """
    if size < 0:
        raise ValueError(f"cutout size must be >= 0, got {size}")
    if size == 0:
        return images
    n, _, h, w = images.shape
    device = images.device
    total, mine = _draw_rows(n, share)
    cy = torch.randint(0, h, (total, 1, 1), generator=generator)[mine].to(device)
    cx = torch.randint(0, w, (total, 1, 1), generator=generator)[mine].to(device)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    low, high = size // 2, size - size // 2
    hole = (ys >= cy - low) & (ys < cy + high) & (xs >= cx - low) & (xs < cx + high)
    return images.clone().masked_fill_(hole.unsqueeze(1), 0.0)  # clone keeps channels_last


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (N, 3, H, W) to normalised float32 in channels_last memory format."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return ((images.float() - m) / s).contiguous(memory_format=torch.channels_last)
