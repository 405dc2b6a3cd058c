"""Bad and odd inputs, made in memory."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from .conftest import PHOTOS


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def photo(name: str = "chelsea.jpg") -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def truncated_jpeg() -> bytes:
    data = encode(photo(), "JPEG")
    return data[: len(data) // 3]


@lru_cache  # seconds to encode; bytes are immutable, so tests may share one copy
def decompression_bomb() -> bytes:
    """A tiny file that decodes to 100 megapixels: over Pillow's own guard (Image.MAX_IMAGE_PIXELS)."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG", optimize=True)


@lru_cache
def over_pixel_limit(limit: int) -> bytes:
    """A tiny file with more pixels than ``limit`` but fewer than Pillow's own guard, so only the
    app's check can refuse it."""
    side = int(limit**0.5) + 100
    assert limit < side * side < Image.MAX_IMAGE_PIXELS, (limit, side, Image.MAX_IMAGE_PIXELS)
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)


def cmyk_jpeg() -> bytes:
    return encode(photo().convert("CMYK"), "JPEG")


def sixteen_bit_ramp() -> np.ndarray:
    """48x64 uint16, 0 at the first pixel rising to 65535 at the last (row-major)."""
    return np.linspace(0, 65535, 64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint16)


def sixteen_bit_png() -> bytes:
    image = Image.fromarray(sixteen_bit_ramp())
    assert image.mode.startswith("I;16"), image.mode
    return encode(image, "PNG")


def palette_with_transparency() -> bytes:
    image = photo().resize((60, 40)).convert("P", palette=Image.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return encode(image, "PNG", transparency=0)


def half_transparent_png(mode: str = "RGBA") -> bytes:
    """40x20: the left half fully transparent dark red (or dark gray for LA), the right half opaque."""
    color = (120, 0, 0) if mode == "RGBA" else (120,)
    image = Image.new(mode, (40, 20), color + (255,))
    image.paste(color + (0,), (0, 0, 20, 20))
    return png(image)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg(make: str | None = None) -> tuple[bytes, tuple[int, int]]:
    """A 120x60 image whose EXIF says 'rotate 90': upright it is 60x120; ``make``: a camera make tag too."""
    image = Image.new("RGB", (120, 60), "white")
    image.paste((200, 0, 0), (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    if make is not None:
        exif[0x010F] = make
    return encode(image, "JPEG", exif=exif), (60, 120)


def one_pixel() -> bytes:
    return png(Image.new("RGB", (1, 1), (10, 200, 30)))
