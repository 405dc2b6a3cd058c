"""The one preprocessing path: what the app, the CLI, the figures and evaluation feed the model."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

__all__ = ["Preprocess", "center_crop"]


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side resized to ``size`` (antialiased), centre square of ``size``."""
    image = TF.resize(image.convert("RGB"), size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [size, size])


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
        return TF.normalize(TF.to_tensor(cropped), list(self.mean), list(self.std))

    def __call__(self, image: Image.Image) -> Tensor:
        return self.to_tensor(self.crop(image))
