"""The app's preprocessing equals torchvision's resize, centre crop, to_tensor and normalize, which it
replaced so that the server does not import all of torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ranlens.model.preprocess import Preprocess, center_crop, model_view

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("size", [(32, 32), (31, 47), (47, 31), (640, 427), (427, 640), (33, 1000), (1, 1)])
@pytest.mark.parametrize("target", [32, 224])
def test_same_as_torchvision(size, target):
    rng = np.random.default_rng(sum(size) + target)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = TF.center_crop(TF.resize(image, target, interpolation=TF.InterpolationMode.BILINEAR, antialias=True),
                              [target, target])
    got = center_crop(image, target)
    assert got.size == expected.size == (target, target)
    if max(size) / min(size) <= 4:
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    else:  # resized through Pillow's box, whose arithmetic may round the other way
        assert np.abs(np.asarray(got, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
        return
    tensor = Preprocess(target, MEAN, STD)(image)
    reference = TF.normalize(TF.to_tensor(expected), list(MEAN), list(STD))
    assert tensor.shape == reference.shape and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 200_000), (200_000, 1), (3, 100_000)])
def test_a_thin_picture_is_cropped_before_it_is_resized(size):
    """A 1 x 200,000 picture resized whole to a 256-pixel short side would be 256 x 51,200,000 pixels
    (150 GB); cropped first it costs what a square does, and it is still the middle of the picture."""
    w, h = size
    ramp = np.linspace(0, 255, max(size)).round().astype(np.uint8)  # along the long side
    array = np.broadcast_to((ramp[:, None] if h > w else ramp[None, :])[..., None], (h, w, 3)).copy()
    got = np.asarray(center_crop(Image.fromarray(array), 256), dtype=int)
    assert got.shape == (256, 256, 3)
    assert 126 <= got.min() and got.max() <= 129  # the middle of the ramp: 127.5


def test_other_modes_are_made_rgb():
    gray = Image.new("L", (40, 30), 128)
    assert center_crop(gray, 32).mode == "RGB"
    assert Preprocess(32, MEAN, STD)(gray).shape == (3, 32, 32)


@pytest.mark.parametrize("size", [(2999, 4498), (4498, 2999), (1000, 1499), (640, 427), (32, 32), (1, 20_000)])
def test_the_display_backdrop_shows_exactly_what_the_model_saw(size):
    """The page draws masks over a 256-pixel view of the model's 32-pixel crop; cropped on its own at 256,
    the view rounded its own way (for a 2999 x 4498 photo, 2% of its height off the model's crop): here
    4 levels of the ramp off, for the sizes but the square and the thin one; within rounding (1) now."""
    w, h = size
    ramp = np.linspace(0, 255, max(size))  # along the long side: a pixel's value says where it came from
    array = np.broadcast_to((ramp[:, None] if h > w else ramp[None, :])[..., None], (h, w, 3))
    image = Image.fromarray(array.round().astype(np.uint8))
    seen = np.asarray(center_crop(image, 32), dtype=float)
    shown = np.asarray(model_view(image, 32, 256).resize((32, 32), Image.BOX), dtype=float)
    axis = 1 if h > w else 0  # the profile along the long side
    assert np.abs(seen.mean(axis=axis) - shown.mean(axis=axis)).max() <= 1.0, (seen.mean(axis=axis)[:, 0],
                                                                              shown.mean(axis=axis)[:, 0])
