"""Streaming ImageFolder data for trees too big to hold in memory (the ImageNet layout), at any size.

Worker processes decode and augment each image (as the app decodes uploads), and hand uint8 batches
over in pinned memory; the training device converts and normalises them, so a quarter of the bytes
cross the bus that float32 would need. Each process reads its own share of every epoch through a
``DistributedSampler``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from .data import IMAGE_SUFFIXES, MAX_PIXELS, split_directory
from .imaging import decode_file
from .preprocess import center_crop

__all__ = ["eval_transform", "image_folder", "limited", "train_loader", "eval_loader", "train_transform"]


def _decode(path: str) -> Image.Image:
    return decode_file(path, MAX_PIXELS)  # a bad file among millions is named


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def train_transform(size: int, trivial_augment: bool = False) -> T.Compose:
    """RandomResizedCrop (8-100% of the area, aspect 3/4-4/3) and a horizontal flip, then TrivialAugment if
    asked, as uint8 CHW. Here TrivialAugment runs in the loader's workers, whose random state follows
    (seed, epoch, rank), rather than per image in the training process."""
    ops = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
    return T.Compose([*ops, *([T.TrivialAugmentWide()] if trivial_augment else []), T.PILToTensor()])


def eval_transform(size: int) -> T.Compose:
    """The served model's crop (``preprocess.center_crop``: shorter side to size, the centre size x size
    square), as uint8 CHW: the test accuracy a run reports is then that of the pictures the app shows
    the network, and of ``ranlens evaluate``, which reads folders through the same crop. (ImageNet's
    usual resize to 256 and 224-pixel centre crop scored a tighter view than the one served.)"""
    return T.Compose([functools.partial(center_crop, size=size), T.PILToTensor()])


def image_folder(data: str | Path, split: str, transform) -> ImageFolder:
    """``data/train`` or ``data/test`` (``data/val`` where there is no test folder), class folders
    sorted by name, images decoded as the app decodes uploads."""
    return ImageFolder(str(split_directory(data, split)), transform=transform, loader=_decode, is_valid_file=_is_image)


def limited(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """The first ``limit`` items of a seeded permutation (as ``train.subset`` picks in-memory images)."""
    if not limit or limit >= len(dataset):
        return dataset
    return Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def train_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int, workers: int,
                 pin_memory: bool) -> DataLoader:
    """This process's batches of ``batch_size``; call ``sampler.set_epoch(epoch)`` and seed
    ``generator`` before each epoch (``train`` does) so the order and the workers' augmentation follow
    (seed, epoch). Incomplete last batches are dropped, so every step has the full global batch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=True, generator=torch.Generator(), persistent_workers=False,
                      prefetch_factor=4 if workers else None)


def eval_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, workers: int,
                pin_memory: bool) -> DataLoader:
    """The items ``indices`` of ``dataset`` in order (a process's strided share of the test split)."""
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)
