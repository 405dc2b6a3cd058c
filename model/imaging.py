"""Turns untrusted image bytes into one RGB picture, or a clear error.

Not web code: the app, the CLI and the figures decode the same way. Errors are this module's own
exceptions; the web layer maps each kind to its HTTP status.
"""

from __future__ import annotations

import io
import re
import struct
import traceback
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import jpeg_end

__all__ = [
    "SUPPORTED_FORMATS",
    "SUPPORTED_TYPES",
    "CorruptImageError",
    "EmptyImageError",
    "ImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "decode_file",
    "decode_image",
    "to_rgb",
]

SUPPORTED_TYPES = {
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/x-ms-bmp",
    # names clients still send for the same formats (image/jpg: many HTTP libraries and phones)
    "image/jpg", "image/pjpeg", "image/x-png", "image/x-bmp", "image/x-tiff",
}
SUPPORTED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


class ImageError(ValueError):
    """The bytes are not an image this project can use; ``title`` is a short name for the problem."""

    title = "Unusable image"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class EmptyImageError(ImageError):
    title = "Empty upload"


class UnsupportedImageError(ImageError):
    """Not an image at all, or a format or media type outside the supported set."""

    title = "Unsupported image"


class ImageTooLargeError(ImageError):
    """More pixels than allowed: refused before decoding (decompression bombs)."""

    title = "Image too large"


class CorruptImageError(ImageError):
    """An image whose data is corrupt or truncated."""

    title = "Undecodable image"


_ROWS_PER_BLOCK = 256  # rows of a high-bit picture scaled at once: 16 MB of float64 for 8,000 columns


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white, 16-bit scaled to 8-bit.

    Transparency comes as an alpha channel, or as ``info["transparency"]``: a palette's per-entry
    alpha, or a colour key (PNG's tRNS) in greyscale, RGB and 16-bit images, whose keyed pixels are
    transparent too.

    Memory: a picture at the pixel limit is 160 MB decoded, and every copy of it counts; high-bit
    pictures are scaled a block of rows at a time (float64 copies of a whole 40 MP float TIFF, 246 KB
    as a file, took 1.3 GB) and alpha is composited in place."""
    key = image.info.get("transparency")
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        original = np.asarray(image)
        # the key is a value of the original samples, gone once scaled: alpha from the original
        alpha = (original != key).astype(np.uint8) * 255 if isinstance(key, int) else None
        if image.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = float(original.min()), float(original.max())
        grey = np.zeros(original.shape, np.uint8)
        if hi > lo:
            for start in range(0, original.shape[0], _ROWS_PER_BLOCK):
                rows = original[start:start + _ROWS_PER_BLOCK].astype(np.float64)
                # float64 as one expression: float32, or the factor 255 / (hi - lo) taken first,
                # rounds some samples just under a level, and a 32-bit sample needs 53 bits
                grey[start:start + _ROWS_PER_BLOCK] = np.clip((rows - lo) / (hi - lo) * 255.0, 0, 255)
        del original
        image = Image.fromarray(grey, "L")
        if alpha is not None:
            image = Image.merge("LA", (image, Image.fromarray(alpha, "L")))
    elif key is not None and image.mode in {"P", "L", "RGB", "1"}:
        image = image.convert("RGBA")  # Pillow applies the palette's alpha, or the colour key
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        del image
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)  # in place: no third full-size copy
        del rgba
        return white.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


# EXIF orientation (tag 0x0112) -> the transpose that makes the picture upright, as ImageOps applies it
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


# where a file may say its orientation: once the picture is turned, it says so no more
_ORIENTATION_INFO = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, as ``ImageOps.exif_transpose`` turns it, without
    its rewrite of the EXIF block (which fails with ``struct.error`` on a tag of an unexpected type that
    cameras and editors do write) and without its copy of a picture already upright. Either way the
    result is a plain one-frame picture, detached from the decoder (``_new`` shares the pixels)."""
    orientation = image.getexif().get(0x0112)
    try:  # a RATIONAL or FLOAT tag reads as 6.0, which is 6; a tuple or list is no orientation
        method = _ORIENTATION.get(orientation)
    except TypeError:
        method = None
    if method is None:
        return image._new(image.im)
    turned = image.transpose(method)
    for key in _ORIENTATION_INFO:
        turned.info.pop(key, None)
    return turned


def _key_in_pixel_scale(image: Image.Image) -> None:
    """Puts a PNG colour key (tRNS) in the scale of the pixels Pillow reads, before they are read: the
    key is in the file's own sample scale. Pillow stretches 2- and 4-bit grey to 0..255, so the key is
    stretched alike; it reads 16-bit RGB as 8-bit, where a 16-bit key matches no pixel reliably (it
    would whiten others), so that key is dropped and the pixels stay as they are."""
    key = image.info.get("transparency")
    if image.format != "PNG" or key is None or not image.tile:
        return
    rawmode = image.tile[0][3]
    if isinstance(rawmode, str) and rawmode.startswith("RGB;16"):
        del image.info["transparency"]
    elif isinstance(key, int) and isinstance(rawmode, str) and rawmode.startswith(("L;2", "L;4")):
        image.info["transparency"] = key * (85 if rawmode.startswith("L;2") else 17)


def decode_image(data: bytes, max_pixels: int, content_type: str | None = None) -> Image.Image:
    """The first frame of ``data`` as RGB, upright (EXIF orientation applied).

    Refuses more than ``max_pixels`` from the header alone, before any pixel is decoded. A JPEG that
    lacks its end-of-image marker is read, as browsers read it, only where its picture data is whole
    (``jpeg_end``); cut, or cut and padded, it is refused as truncated.
    """
    if not data:
        raise EmptyImageError("The file has no bytes.")
    if content_type and content_type.split(";")[0].strip().lower() not in SUPPORTED_TYPES | {
        "application/octet-stream", ""
    }:
        raise UnsupportedImageError(
            f"{content_type!r} is not an image type this server reads; send JPEG, PNG, GIF, WebP, BMP or TIFF."
        )
    # Pillow's own guard (Image.MAX_IMAGE_PIXELS, 89.5 MP) would refuse a bigger limit's images
    # in Image.open; raised to ours, it only ever refuses what the header check below refuses too.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = _decode(data, max_pixels)
    except CorruptImageError as exc:
        image, refused = None, exc
        # the failed decoder's frames hold its half-decoded picture: free it before decoding again
        for error in (exc, exc.__cause__):
            if error is not None:
                traceback.clear_frames(error.__traceback__)
    whole = jpeg_end.whole_without_end(data)  # None: not a JPEG lacking its end marker
    if image is not None:
        if whole is False:  # zeros after a cut decode as picture data: Pillow reads it, grey blocks and all
            raise CorruptImageError("The image data is corrupt or truncated (a JPEG cut short and padded).")
        return image
    if whole:
        try:
            return _decode(data + jpeg_end.END, max_pixels)
        except ImageError:
            pass
    raise refused


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    """``data`` as upright RGB, with every failure as this module's ``ImageError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise UnsupportedImageError(f"{image.format} images are not supported.")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}."
                )
            image.seek(0)  # animated images: the first frame
            _key_in_pixel_scale(image)
            image.load()
            return to_rgb(_upright(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message names its own limit, not this caller's
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
        raise ImageTooLargeError(f"The image is {size}; the limit is {max_pixels:,}.") from exc
    except UnidentifiedImageError as exc:
        if data.startswith(_MAGIC):
            raise CorruptImageError("The image data is corrupt or truncated.") from exc
        raise UnsupportedImageError("The file is not an image this server can read.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImageError(f"The image data is corrupt or truncated ({exc}).") from exc


def decode_file(path: str | Path, max_pixels: int) -> Image.Image:
    """``decode_image`` of a file's bytes; an ``ImageError`` names the file (one bad file among
    thousands of a data set, or among a figure's rows, must be findable)."""
    try:
        return decode_image(Path(path).read_bytes(), max_pixels)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc.detail}") from exc
