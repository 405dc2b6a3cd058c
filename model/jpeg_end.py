"""Whether a JPEG that lacks its end-of-image marker still holds its whole picture.

Some cameras, scanners and interrupted writers leave JPEGs without the two-byte end marker, and
browsers show them. Pillow cannot tell such a file from one cut inside its picture data: closed with
the marker, both decode, the missing part grey, and a cut file padded with zeros (as download
managers reserve a file's length) decodes even without it. libjpeg-turbo can: in simplejpeg's strict
mode any sign of missing or extraneous data is an error. A progressive or multi-scan file cut between
its scans is byte for byte a valid shorter file, with less detail or without some components, so only
one sequential scan of every component, as cameras write, is ever judged whole.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import simplejpeg

__all__ = ["END", "whole_without_end"]

START, END = b"\xff\xd8\xff", b"\xff\xd9"
_SEQUENTIAL_FRAMES = {0xC0, 0xC1}  # baseline and extended sequential, Huffman-coded
_OTHER_FRAMES = set(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # progressive, lossless, arithmetic-coded
_SOS = 0xDA
_OTHER_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy data: not stuffing, a restart or fill
# libjpeg-turbo's names for the colour spaces it decodes to unconverted; the rest it converts to RGB
_SPACE = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


class _FirstScan(NamedTuple):
    frame: bytes | None  # the sequential frame header, None for any other kind of frame or none at all
    header: bytes  # the scan header
    data_at: int  # where its entropy-coded data begins


def _first_scan(data: bytes) -> _FirstScan | None:
    """The segments up to the first scan, walked by their lengths (APP segments, an EXIF thumbnail's
    markers among them, are skipped whole); None where they do not add up."""
    if not data.startswith(START):
        return None
    at, frame = 2, None
    while True:
        if at + 4 > len(data) or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        segment = data[at + 4:at + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _SEQUENTIAL_FRAMES:
            frame = segment
        elif marker in _OTHER_FRAMES:
            frame = None
        elif marker == _SOS:
            return _FirstScan(frame, segment, at + 2 + length)
        at += 2 + length


def whole_without_end(data: bytes) -> bool | None:
    """None where ``data`` is not a JPEG, or has an end-of-image marker after its first scan began (one
    cannot occur inside entropy-coded data, where every 0xFF byte is stuffed or a restart). Otherwise
    whether it is one sequential scan of every component that libjpeg-turbo, closing it with the
    marker, reads to its last block with no data missing or left over."""
    scan = _first_scan(data)
    if scan is None or data.rfind(END, scan.data_at) != -1:  # from the end: found at once when there
        return None
    if scan.frame is None or len(scan.frame) < 6 + 3 * scan.frame[5]:
        return False
    frame, header = scan.frame, scan.header
    if not header or len(header) < 1 + 2 * header[0] or header[0] != frame[5]:
        return False  # a scan of some components: the others follow in scans of their own
    if {header[1 + 2 * i] for i in range(header[0])} != {frame[6 + 3 * i] for i in range(frame[5])}:
        return False
    if _OTHER_MARKER.search(data, scan.data_at):
        return False  # another scan, or anything but restarts, after the first
    # libjpeg reads a few bytes ahead and drops unused ones without a word, so a cut file with a few
    # zeros after it can pass as whole; in a whole file the last byte holds the last block's last bits
    data = data.rstrip(b"\xff")  # a marker's first byte, or fill: never entropy data, which stuffs 0xFF
    try:
        space = _SPACE.get(simplejpeg.decode_jpeg_header(data + END)[2], "RGB")
    except ValueError:
        return False
    return _reads_cleanly(data + END, space) and not _reads_cleanly(data[:-1] + END, space)


def _reads_cleanly(data: bytes, colorspace: str) -> bool:
    """Whether libjpeg-turbo decodes ``data`` without an error or warning, at an eighth of the size
    (every coded block is still read)."""
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, min_height=1, min_width=1, strict=True)
    except ValueError:  # simplejpeg's errors, and in strict mode libjpeg's warnings
        return False
    return True
