"""decode_image on odd and bad inputs: the pixels that come out, not just that something does."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ranlens.model.imaging import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    to_rgb,
)

from . import corpus

LIMIT = 20_000_000
WHITE = (255, 255, 255)


def decode(data: bytes, content_type: str | None = None, max_pixels: int = LIMIT) -> np.ndarray:
    image = decode_image(data, max_pixels, content_type)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_sixteen_bit_ramp_keeps_its_ramp():
    ramp = corpus.sixteen_bit_ramp()
    out = decode(corpus.sixteen_bit_png(), "image/png")
    assert out.shape == (48, 64, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all(), "gray in, gray out"
    expected = ramp.astype(float) / 65535 * 255
    # full range kept (not crushed to black by a bare 16 -> 8 bit cast), monotonic, within rounding
    assert out[0, 0, 0] <= 1 and out[-1, -1, 0] >= 254
    assert np.all(np.diff(out[..., 0].ravel()) >= 0)
    assert np.abs(out[..., 0] - expected).max() <= 1


def test_sixteen_bit_tiff_too():
    ramp = corpus.sixteen_bit_ramp()
    out = decode(corpus.encode(Image.fromarray(ramp), "TIFF"), "image/tiff")
    assert np.abs(out[..., 0] - ramp.astype(float) / 65535 * 255).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_come_out_white(mode):
    out = decode(corpus.half_transparent_png(mode), "image/png")
    assert out.shape == (20, 40, 3)
    assert (out[:, :20] == WHITE).all(), "transparent pixels are composited on white"
    opaque = (120, 0, 0) if mode == "RGBA" else (120, 120, 120)
    assert (out[:, 20:] == opaque).all(), "opaque pixels keep their colour"


def test_half_alpha_blends_with_white():
    out = decode(corpus.png(Image.new("RGBA", (4, 4), (0, 0, 0, 128))))
    # 128/255 black over white: about 127 each
    assert np.abs(out - 127).max() <= 1


def test_palette_transparency_is_white_and_the_rest_keeps_the_palette():
    data = corpus.palette_with_transparency()
    source = Image.open(io.BytesIO(data))
    assert source.mode == "P" and source.info.get("transparency") == 0
    indices = np.asarray(source)
    rgb = np.asarray(source.convert("RGB")).astype(int)
    out = decode(data, "image/png")
    transparent = indices == 0
    assert transparent.any() and (~transparent).any(), "the fixture needs both kinds of pixels"
    assert (out[transparent] == WHITE).all()
    assert (out[~transparent] == rgb[~transparent]).all()


def test_cmyk_jpeg_comes_back_close_to_the_photo():
    original = np.asarray(corpus.photo()).astype(int)
    out = decode(corpus.cmyk_jpeg(), "image/jpeg")
    assert out.shape == original.shape
    # JPEG is lossy; inverted or garbled CMYK would be off by ~100 on average
    assert np.abs(out - original).mean() < 8


def test_exif_orientation_is_applied():
    data, (width, height) = corpus.exif_rotated_jpeg()
    out = decode(data, "image/jpeg")
    assert out.shape == (height, width, 3)
    # the stored image is red on its left half; EXIF orientation 6 (rotate 90 clockwise) puts that on top
    top, bottom = out[: height // 2 - 5].mean((0, 1)), out[height // 2 + 5:].mean((0, 1))
    assert top[0] > 150 and top[1] < 60 and top[2] < 60, top
    assert (bottom > 230).all(), bottom


def test_exif_orientation_is_applied_when_another_tag_has_an_unexpected_type():
    """Pillow's exif_transpose rewrites the EXIF block for the turned copy and fails (struct.error, once
    a 500) on a text tag relabelled as a numeric one, as some editors write it: the picture still turns."""
    data, (width, height) = corpus.exif_rotated_jpeg(make="Canon")
    data = bytearray(data)
    at = data.find(b"\x01\x0f\x00\x02")  # the Make entry (tag 0x010F, type ASCII)
    data[at: at + 2] = b"\x01\x28"  # now ResolutionUnit (0x0128), which should be a number
    with pytest.raises(Exception):
        from PIL import ImageOps

        ImageOps.exif_transpose(Image.open(io.BytesIO(bytes(data))))  # keeps this test about that failure
    out = decode(bytes(data), "image/jpeg")
    assert out.shape == (height, width, 3)
    top = out[: height // 2 - 5].mean((0, 1))
    assert top[0] > 150 and top[1] < 60 and top[2] < 60, top


def _orientation_exif(field_type: int, value: bytes) -> bytes:
    """An EXIF block whose one tag is the orientation, stored as TIFF ``field_type`` (value at offset 26
    when it is over 4 bytes)."""
    inline = len(value) <= 4
    entry = struct.pack("<HHI", 0x0112, field_type, 1) + (value.ljust(4, b"\0") if inline else struct.pack("<I", 26))
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0) + (b"" if inline else value)


@pytest.mark.parametrize(("field_type", "value"), [
    (3, struct.pack("<H", 6)), (5, struct.pack("<II", 6, 1)), (11, struct.pack("<f", 6.0)), (12, struct.pack("<d", 6.0)),
], ids=["SHORT", "RATIONAL", "FLOAT", "DOUBLE"])
def test_exif_orientation_of_any_numeric_type_is_applied(field_type, value):
    """Pillow reads an orientation stored as a RATIONAL or a FLOAT as 6.0, which is orientation 6 too."""
    image = Image.new("RGB", (120, 60), "white")
    image.paste((200, 0, 0), (0, 0, 60, 60))
    picture = decode_image(corpus.encode(image, "JPEG", exif=_orientation_exif(field_type, value)), LIMIT)
    assert picture.size == (60, 120)
    assert np.asarray(picture)[:50].mean((0, 1))[0] > 150, "red on top: turned clockwise"


def test_the_decoded_picture_is_upright_plain_and_one_frame():
    """What decode_image returns is detached from the decoder: an animated PNG's result keeps its first
    frame (a seek on a decoder object would change it), and a turned picture no longer says it needs
    turning (a caller that applied the orientation again turned it twice)."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    animated = corpus.encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(animated)), "n_frames", 1) == 2
    picture = decode_image(animated, LIMIT)
    assert type(picture) is Image.Image and getattr(picture, "n_frames", 1) == 1
    assert picture.getpixel((0, 0)) == (255, 0, 0)
    data, size = corpus.exif_rotated_jpeg()
    turned = decode_image(data, LIMIT)
    assert turned.size == size and turned.getexif().get(0x0112) in (None, 1)
    from PIL import ImageOps

    assert ImageOps.exif_transpose(turned).size == size


@pytest.mark.parametrize("mode", ["I", "F"])
def test_high_bit_pictures_scale_exactly(mode):
    """Each sample x becomes floor((x - lo) / (hi - lo) * 255) of the picture's range, in float64: in
    float32 the brightest sample of a 0..966 ramp came out 254, and 427 of the ramps up to 1200 lost a
    level somewhere; 32-bit samples near 1e9 kept 17 levels of 256."""
    for values in [np.arange(0, 967), np.arange(0, 987), 10**9 + np.arange(0, 4096) * 1000]:
        array = values.reshape(1, -1).astype(np.int32 if mode == "I" else np.float64)
        if mode == "F":
            array = array.astype(np.float32)
        image = Image.fromarray(array, mode)
        out = np.asarray(to_rgb(image))[..., 0].ravel()
        samples = np.asarray(image).astype(np.float64).ravel()
        lo, hi = samples.min(), samples.max()
        np.testing.assert_array_equal(out, np.floor((samples - lo) / (hi - lo) * 255).astype(np.uint8))


@pytest.mark.parametrize(("mode", "key", "kept"), [
    ("RGB", (0, 0, 0), (200, 10, 10)), ("L", 0, 200), ("I;16", 0, 40000),
])
def test_a_colour_key_makes_its_pixels_white(mode, key, kept):
    """PNG's tRNS in a greyscale, RGB or 16-bit image: pixels of the key colour are transparent, so
    they come out white like any transparency, and the others keep their colour."""
    image = Image.new(mode, (4, 4), key)
    image.putpixel((0, 0), kept)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=key)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == mode  # Pillow keeps the key, not an alpha
    out = decode(buffer.getvalue(), "image/png")
    assert tuple(out[2, 2]) == WHITE
    assert tuple(out[0, 0]) != WHITE and out[0, 0].max() > 100


def _png(bits: int, colour_type: int, row: bytes, key: bytes, width: int) -> bytes:
    """A one-row PNG written by hand: Pillow writes no 16-bit RGB or 2-bit grey with a colour key."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, 1, bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", key)
            + chunk(b"IDAT", zlib.compress(b"\x00" + row)) + chunk(b"IEND", b""))


def test_colour_keys_in_the_files_own_scale():
    """Pillow stretches 2-bit grey to 0..255 (the key is stretched alike), and reads 16-bit RGB as 8-bit,
    where the 16-bit key would whiten the wrong pixels: that key is dropped, the pixels kept."""
    import struct

    grey = decode(_png(2, 0, bytes([0b00011011]), struct.pack(">H", 1), 4), "image/png")  # values 0, 1, 2, 3
    assert [tuple(p) for p in grey[0]] == [(0, 0, 0), WHITE, (170, 170, 170), WHITE]
    pixels = b"".join(struct.pack(">HHH", *c) for c in [(0xFFFF, 0, 0), (0x00FF, 0, 0)])
    rgb = decode(_png(16, 2, pixels, struct.pack(">HHH", 0x00FF, 0, 0), 2), "image/png")
    assert tuple(rgb[0, 0]) == (255, 0, 0)  # bright red, whitened when the key's low byte was matched


def test_animated_gif_gives_its_first_frame():
    out = decode(corpus.animated_gif(), "image/gif")
    assert out.shape == (30, 40, 3)
    assert (np.abs(out - (255, 0, 0)) <= 2).all(), "the first frame is red"


def test_one_pixel_image():
    out = decode(corpus.one_pixel(), "image/png")
    assert out.shape == (1, 1, 3) and tuple(out[0, 0]) == (10, 200, 30)


@pytest.mark.parametrize("fmt, ctype", [("BMP", "image/bmp"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_other_supported_formats(fmt, ctype):
    image = Image.new("RGB", (8, 6), (30, 60, 90))
    out = decode(corpus.encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})), ctype)
    assert out.shape == (6, 8, 3) and (np.abs(out - (30, 60, 90)) <= 3).all()


def test_empty_bytes():
    with pytest.raises(EmptyImageError):
        decode_image(b"", LIMIT, "image/png")


@pytest.mark.parametrize("data", [
    pytest.param(corpus.truncated_jpeg(), id="truncated-jpeg"),
    pytest.param(corpus.png(corpus.photo())[:200], id="truncated-png"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, id="png-magic-then-garbage"),
    pytest.param(b"\xff\xd8\xff" + b"\x00" * 500, id="jpeg-magic-then-zeros"),
])
def test_corrupt_or_truncated(data):
    with pytest.raises(CorruptImageError):
        decode_image(data, LIMIT, "image/png")


JPEG_LAYOUTS = {  # how encoders lay out a JPEG's picture data
    "baseline": {},
    "restart-intervals": {"restart_marker_blocks": 2},  # as many cameras write
    "grey": {"mode": "L"},
    "4:4:4": {"subsampling": 0},
    "progressive": {"progressive": True},
}


def layout_jpeg(layout: str, size: tuple[int, int] = (451, 300), quality: int = 90) -> bytes:
    options = dict(JPEG_LAYOUTS[layout])
    image = corpus.photo().resize(size).convert(options.pop("mode", "RGB"))
    return corpus.encode(image, "JPEG", quality=quality, **options)


@pytest.mark.parametrize("layout", ["baseline", "restart-intervals", "grey", "4:4:4"])
def test_a_jpeg_lacking_only_its_end_marker_is_read_whole(layout):
    """Browsers show such files; the pixels are those of the whole file, not a guess."""
    data = layout_jpeg(layout)
    assert data.endswith(b"\xff\xd9")
    assert np.array_equal(decode(data[:-2], "image/jpeg"), decode(data, "image/jpeg"))


def test_a_progressive_jpeg_lacking_its_end_marker_is_refused():
    """Cut at a scan boundary, a progressive file is a valid one with less detail: no check tells
    the two apart, so none is read without its end."""
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(layout_jpeg("progressive")[:-2], LIMIT, "image/jpeg")


@pytest.mark.parametrize("layout", sorted(JPEG_LAYOUTS))
def test_a_jpeg_cut_anywhere_is_refused_or_read_whole(layout):
    """Closed with an end marker, a cut JPEG decodes to a picture whose missing part is grey (or, cut
    between scans, less detailed): every cut is refused, or read only where no pixel is lost (the last
    scan's padding bits, and its marker)."""
    data = layout_jpeg(layout, (64, 48))
    whole = decode(data, "image/jpeg")
    read = []
    for end in range(data.index(b"\xff\xda"), len(data) - 1):
        try:
            pixels = decode(data[:end], "image/jpeg")
        except CorruptImageError as exc:
            assert "truncated" in str(exc)
        else:
            assert np.array_equal(pixels, whole), (len(data) - end, "bytes cut, and a picture that is not the whole")
            read.append(len(data) - end)
    assert set(read) <= {2, 3}, read


@pytest.mark.parametrize("layout", ["baseline", "restart-intervals", "progressive"])
@pytest.mark.parametrize("quality", [90, 100])
@pytest.mark.parametrize("padding", ["4096", "to-length"])
@pytest.mark.parametrize("tail", [b"\x00", b"\xff"], ids=["zeros", "0xff"])
def test_a_cut_jpeg_padded_is_refused(layout, quality, padding, tail):
    """Download managers that reserve a file's length leave a cut download padded with zeros, which
    decode as picture data: at quality 100 Pillow read such a file whole, its lower half grey."""
    data = layout_jpeg(layout, quality=quality)
    cut = data[:len(data) * 6 // 10]
    padded = cut + tail * (4096 if padding == "4096" else len(data) - len(cut))
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(padded, LIMIT, "image/jpeg")


def test_a_jpeg_cut_near_its_end_with_a_few_zeros_after_is_refused():
    """libjpeg reads a few bytes ahead and drops unused ones without a warning, so the strict decode
    alone passed this file (its last row of blocks 32 levels off): its last byte is not needed."""
    data = corpus.encode(corpus.photo().resize((160, 106)), "JPEG", quality=95)
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[:-5] + bytes(4), LIMIT, "image/jpeg")


@pytest.mark.parametrize("trailer", [b"\x00" * 64, b"camera maker's trailer", "second-jpeg"])
def test_a_whole_jpeg_with_bytes_after_its_end_marker_is_read(trailer):
    data = layout_jpeg("baseline")
    if trailer == "second-jpeg":
        trailer = layout_jpeg("grey", (32, 24))
    assert np.array_equal(decode(data + trailer, "image/jpeg"), decode(data, "image/jpeg"))


def test_a_jpeg_whose_exif_thumbnail_has_an_end_marker_is_judged_by_its_own():
    """The thumbnail inside the EXIF block is a JPEG with its own end marker, before the picture's."""
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    thumbnail = layout_jpeg("baseline", (32, 24))
    image = corpus.photo()
    data = corpus.encode(image, "JPEG", quality=90, exif=exif.tobytes() + thumbnail)
    assert data.count(b"\xff\xd9") == 2
    assert np.array_equal(decode(data[:-2], "image/jpeg"), decode(data, "image/jpeg"))
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[:-40], LIMIT, "image/jpeg")


@pytest.mark.parametrize("ctype, fmt", [
    ("image/jpg", "JPEG"), ("image/pjpeg", "JPEG"), ("IMAGE/JPEG; charset=binary", "JPEG"), ("image/x-png", "PNG"),
    ("image/x-bmp", "BMP"), ("image/x-tiff", "TIFF"),
])
def test_other_names_clients_send_for_a_supported_type(ctype, fmt):
    assert decode(corpus.encode(Image.new("RGB", (8, 6), (200, 10, 10)), fmt), ctype).shape == (6, 8, 3)


@pytest.mark.parametrize("data, ctype", [
    pytest.param(b"hello, I am text\n" * 10, "image/png", id="text-claiming-png"),
    pytest.param(b"%PDF-1.4\n%\xe2\xe3\n", None, id="pdf-no-type"),
    pytest.param(corpus.one_pixel(), "text/plain", id="png-sent-as-text"),
    pytest.param(corpus.encode(Image.new("RGB", (4, 4)), "PPM"), "application/octet-stream", id="ppm"),
])
def test_not_a_supported_image(data, ctype):
    with pytest.raises(UnsupportedImageError):
        decode_image(data, LIMIT, ctype)


def test_over_the_pixel_limit_is_refused_by_our_check():
    data = corpus.over_pixel_limit(LIMIT)  # under Pillow's own guard: only decode_image's check stops it
    with pytest.raises(ImageTooLargeError, match=f"limit is {LIMIT:,}"):
        decode_image(data, LIMIT, "image/png")


def test_the_pixel_limit_is_exact():
    data = corpus.png(Image.new("RGB", (10, 10)))
    assert decode_image(data, 100).size == (10, 10)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, 99)


def test_decompression_bomb_over_pillows_guard_names_the_callers_limit():
    # Pillow refuses it in Image.open, with its own limit (89,478,485) in the message
    with pytest.raises(ImageTooLargeError, match=r"100,000,000 pixels; the limit is 40,000,000\.$"):
        decode_image(corpus.decompression_bomb(), 40_000_000, "image/png")


def test_a_limit_above_pillows_own_guard_is_the_limit():
    """RANLENS_MAX_IMAGE_PIXELS=200000000 must admit a 100-megapixel picture, which Pillow's default
    guard (89.5 MP) refuses."""
    image = decode_image(corpus.decompression_bomb(), 200_000_000, "image/png")
    assert image.size == (10_000, 10_000) and image.mode == "RGB"


def _in_memory(data):
    from ranlens.model.data import load_split

    return load_split(data, "test", 32)


def _streamed(data):
    from ranlens.model import stream

    return stream.image_folder(data, "test", stream.eval_transform(32))[1]


@pytest.mark.parametrize("read", [_in_memory, _streamed], ids=["in-memory", "streamed"])
def test_a_bad_file_in_a_data_set_is_named(tmp_path, read):
    """One bad file among a data set's thousands must be findable: both loaders name it."""
    folder = tmp_path / "test" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "gray").save(folder / "0.png")
    (folder / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    with pytest.raises(ImageError, match=r"1\.jpg: .*corrupt or truncated"):
        read(tmp_path)


@pytest.fixture(scope="module")
def decode_peaks() -> dict[str, tuple[float, float]]:
    """``benchmarks/decode_memory.py`` at 16 MP: each mode's file size (KB) and peak bytes a pixel."""
    import os
    import re
    import subprocess
    import sys

    from .conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_memory.py"), "--side", "4000"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^(\S+)\s+\S+\s+file\s+(\d+) KB\s+peak\s+\d+ MiB\s+([\d.]+) bytes a pixel$", result.stdout, re.M)
    return {mode: (float(kb), float(per_pixel)) for mode, kb, per_pixel in rows}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory with Linux's /proc")
@pytest.mark.parametrize(("mode", "budget"), [("F", 14), ("I", 14), ("I;16", 10), ("RGBA", 14), ("RGB", 5),
                                               ("RGB-cut", 6)])
def test_decoding_a_large_picture_takes_a_few_copies_of_it_at_most(decode_peaks, mode, budget):
    """A picture under the pixel limit may still be a small file that takes much memory to decode.
    Peak memory in bytes a pixel, with Pillow holding 4 a pixel for F, I, RGBA and RGB, 2 for I;16:
    with float64 copies a float TIFF took 34 (1.3 GB for a 246 KB file of 40 MP), a 16-bit PNG 29, an
    RGBA PNG 20 and an RGB one 12 (copies of pictures already upright and RGB); a JPEG lacking its end
    marker, decoded again, 13 while the failed first try was still held. Measured by the
    benchmark, each picture decoded in a fresh process."""
    kb, per_pixel = decode_peaks[mode]
    assert kb < 1000, "a small file: the point of the test"
    assert per_pixel < budget, f"{per_pixel:.1f} bytes a pixel to decode a {mode} picture"
