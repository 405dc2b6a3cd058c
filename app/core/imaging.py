"""Turns untrusted upload bytes into one RGB picture, or a clear client error."""

from __future__ import annotations

import io
import warnings
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .problems import Problem

SUPPORTED_TYPES = {
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/x-ms-bmp",
}
SUPPORTED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}




def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white, 16-bit scaled to 8-bit."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        if image.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(array) if hi <= lo else (array - lo) / (hi - lo) * 255.0
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int, content_type: str | None = None) -> Image.Image:
    if not data:
        raise Problem(400, "Empty upload", "The uploaded file has no bytes.")
    if content_type and content_type.split(";")[0].strip().lower() not in SUPPORTED_TYPES | {
        "application/octet-stream", ""
    }:
        raise Problem(
            415, "Unsupported media type",
            f"{content_type!r} is not an image type this server reads; send JPEG, PNG, GIF, WebP, BMP or TIFF.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise Problem(415, "Unsupported image format", f"{image.format} images are not supported.")
            width, height = image.size
            if width * height > max_pixels:
                raise Problem(
                    413, "Image too large",
                    f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}.",
                )
            image.seek(0)  # animated images: the first frame
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except Problem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Problem(413, "Image too large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_MAGIC):
            raise Problem(400, "Undecodable image", "The image data is corrupt or truncated.") from exc
        raise Problem(415, "Not an image", "The file is not an image this server can read.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Problem(400, "Undecodable image", f"The image data is corrupt or truncated ({exc}).") from exc


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
