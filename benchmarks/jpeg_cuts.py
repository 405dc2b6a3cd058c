"""What ``decode_image`` makes of damaged JPEGs: refused, read whole, or read with other pixels.

    python benchmarks/jpeg_cuts.py [--photos static/examples/*.jpg] [--against COMMIT]

Each photo is encoded at two sizes, four qualities and five layouts (baseline, optimised tables,
4:4:4, grey, a restart marker every block), then damaged in three ways at every point of its last
40 bytes and at 1 to 40% of its length: cut short (the end marker gone with the rest), cut and padded
with zeros to its own length (as download managers reserve a file), and cut with four zero bytes
after. Prints, for each kind of damage, how many files were refused, read with the whole file's
pixels, and read with other pixels, and for those how many rows from the bottom the damage reached.
``--against 6644876`` prints the same for ``model/imaging.py`` as it was at that commit, the last
before JPEGs lacking their end marker were read.
"""

from __future__ import annotations

import argparse
import collections
import io
import subprocess
import types
from pathlib import Path

import numpy as np
from PIL import Image

from ranlens.model.imaging import CorruptImageError, decode_image

LAYOUTS = {"baseline": {}, "optimised": {"optimize": True}, "4:4:4": {"subsampling": 0}, "grey": {},
           "restarts": {"restart_marker_blocks": 1}}
DAMAGE = {
    "cut": lambda data, k: data[:-k],
    "zero-padded": lambda data, k: data[:-k] + bytes(k),
    "cut+4 zeros": lambda data, k: data[:-k] + bytes(4),
}


def encode(image: Image.Image, layout: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    (image.convert("L") if layout == "grey" else image).save(buffer, "JPEG", quality=quality, **LAYOUTS[layout])
    return buffer.getvalue()


def tally(decode_image, corrupt: type[Exception], photos: list[Path]) -> None:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    reach: dict[str, int] = collections.defaultdict(int)
    for path in photos:
        photo = Image.open(path).convert("RGB")
        for size in ((64, 48), (200, 150)):
            for quality in (50, 75, 95, 100):
                for layout in LAYOUTS:
                    data = encode(photo.resize(size), layout, quality)
                    whole = np.asarray(decode_image(data, 10**8))
                    cuts = sorted({*range(1, 41), *(len(data) * p // 100 for p in (1, 5, 10, 20, 40))} - {0})
                    for kind, damage in DAMAGE.items():
                        for k in cuts:
                            try:
                                pixels = np.asarray(decode_image(damage(data, k), 10**8))
                            except corrupt:
                                counts[kind]["refused"] += 1
                                continue
                            differs = np.nonzero((pixels != whole).any(axis=(1, 2)))[0]
                            counts[kind]["read, other pixels" if differs.size else "read, whole"] += 1
                            if differs.size:
                                reach[kind] = max(reach[kind], size[1] - int(differs.min()))
    for kind in DAMAGE:
        c = counts[kind]
        print(f"{kind:12s} refused {c['refused']:6d}  read whole {c['read, whole']:4d}  "
              f"read with other pixels {c['read, other pixels']:4d}"
              + (f" (the bottom {reach[kind]} rows at most)" if reach[kind] else ""), flush=True)


def imaging_at(commit: str, root: Path) -> types.ModuleType:
    """``model/imaging.py`` as it was at ``commit``, as a module of its own (one that imports only
    libraries, as those before this benchmark did)."""
    source = subprocess.run(["git", "-C", str(root), "show", f"{commit}:model/imaging.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(f"imaging_at_{commit}")
    exec(compile(source, f"{commit}:model/imaging.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--photos", nargs="+", type=Path, default=sorted((root / "static" / "examples").glob("*.jpg")))
    parser.add_argument("--against", metavar="COMMIT", help="also measure model/imaging.py as it was at COMMIT")
    args = parser.parse_args()
    print("now:")
    tally(decode_image, CorruptImageError, args.photos)
    if args.against:
        before = imaging_at(args.against, root)
        print(f"at {args.against}:")
        tally(before.decode_image, before.CorruptImageError, args.photos)


if __name__ == "__main__":
    main()
