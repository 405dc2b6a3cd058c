"""Peak memory of decoding one picture, in bytes a pixel, for the modes that cost the most.

    python benchmarks/decode_memory.py [--side 4000]

Each picture is a small file (a flat image compresses to almost nothing) that decodes to ``side`` x
``side`` pixels: the kind a client can send under the upload limit to make the server allocate far
more than it sent. Each is decoded by ``ranlens.model.imaging.decode_image`` in a fresh process, whose
peak resident memory is measured from just before the call (Linux: clearing ``/proc/self/clear_refs``
resets the peak, so memory the imports freed does not hide the decoder's). Pillow itself holds 4
bytes a pixel for F, RGBA and RGB pictures and 2 for I;16 ones; the rest is the conversion to RGB.
RGB-cut is a JPEG lacking its end-of-image marker: its first decode fails, a scaled-down one checks
it, a third reads it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PEAK = """
import re, sys
from pathlib import Path
data = Path(sys.argv[1]).read_bytes()
from ranlens.model.imaging import decode_image

def status(key):
    return int(re.search(rf"{key}:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
decode_image(data, 10**9)
print(status("VmHWM") - before)
"""

# (name, mode, format): "RGB-cut" is a JPEG lacking its end-of-image marker
CASES = (("F", "F", "TIFF"), ("I", "I", "TIFF"), ("I;16", "I;16", "PNG"), ("RGBA", "RGBA", "PNG"), ("RGB", "RGB", "PNG"),
         ("RGB-cut", "RGB", "JPEG"))


def picture(mode: str, side: int) -> Image.Image:
    if mode in {"F", "I", "I;16"}:
        dtype = {"F": np.float32, "I": np.int32, "I;16": np.uint16}[mode]
        return Image.fromarray(np.zeros((side, side), dtype), mode if mode != "I;16" else None)
    return Image.new(mode, (side, side), (1, 2, 3, 4)[: len(mode)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4000, help="pictures are side x side pixels")
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("needs Linux's /proc/self/clear_refs to measure the peak")
    with tempfile.TemporaryDirectory() as folder:
        for name, mode, fmt in CASES:
            path = Path(folder) / f"{name.replace(';', '')}.{fmt.lower()}"
            picture(mode, args.side).save(path, fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}))
            if name.endswith("-cut"):
                path.write_bytes(path.read_bytes().removesuffix(b"\xff\xd9"))
            out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True)
            peak = int(out.stdout.strip().splitlines()[-1])
            print(f"{name:7s} {fmt:4s} file {path.stat().st_size / 1024:7.0f} KB  peak {peak / 2**20:6.0f} MiB  "
                  f"{peak / args.side**2:5.1f} bytes a pixel", flush=True)


if __name__ == "__main__":
    main()
