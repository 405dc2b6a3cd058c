"""The one preprocessing path: what the app, the CLI, the figures and evaluation feed the model.

Pillow and torch only: torchvision's functional transforms do the same arithmetic, but importing them
imports all of torchvision (models, ops, torch._dynamo), which cost the server about 2 s of its start.
``tests/test_preprocess.py`` holds this to torchvision's ``resize``/``center_crop``/``to_tensor``/
``normalize``, value for value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["Preprocess", "center_crop", "crop_box", "model_view"]


def _resized_crop(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): the picture's size with its shorter side resized to ``size``, and
    where the centre ``size`` x ``size`` square starts in it, rounded as torchvision rounds."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)  # as torchvision rounds: down
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` picture that ``center_crop(picture, size)`` keeps, as a
    (left, top, right, bottom) box in the picture's own pixels."""
    new_w, new_h, left, top = _resized_crop(width, height, size)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side resized to ``size`` (bilinear; Pillow antialiases), centre square of ``size``.

    A picture over 4:1 has only the part the square keeps resized (Pillow's ``box``: the square's
    preimage, at the scale of resizing the whole), so the work stays bounded by ``size``: resizing the
    whole of a 1 x 20,000 PNG of a hundred bytes made it 32 x 640,000 for the model and 256 x 5,120,000
    for the page, gigabytes. The box's arithmetic can differ by one level of 255 from resizing the
    whole, so ordinary pictures keep torchvision's exact path.
    """
    image = image.convert("RGB")
    w, h = image.size
    new_w, new_h, left, top = _resized_crop(w, h, size)
    if max(new_w, new_h) > 4 * size:
        return image.resize((size, size), Image.BILINEAR, box=crop_box(w, h, size))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    return image.crop((left, top, left + size, top + size))


def model_view(image: Image.Image, size: int, display_size: int) -> Image.Image:
    """What ``center_crop(image, size)`` keeps, drawn at ``display_size`` x ``display_size``: the backdrop
    a model's masks line up with exactly. (A centre crop made at the display size rounds its own way: for
    a 2999 x 4498 photo it sat 2% of its height away from the model's 32-pixel crop.)"""
    image = image.convert("RGB")
    return image.resize((display_size, display_size), Image.BILINEAR, box=crop_box(*image.size, size))


@dataclass(frozen=True)
class Preprocess:
    """Shorter side resized to ``size``, centre crop, scaled to [0, 1], normalised.

    ``crop`` gives the picture the model sees, so the app can draw masks on exactly that.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def crop(self, image: Image.Image) -> Image.Image:
        return center_crop(image, self.size)

    def to_tensor(self, cropped: Image.Image) -> Tensor:
        x = torch.from_numpy(np.asarray(cropped.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        x = x.float().div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, image: Image.Image) -> Tensor:
        return self.to_tensor(self.crop(image))
