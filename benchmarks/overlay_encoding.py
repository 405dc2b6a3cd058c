"""What one overlay costs to encode as a data URI: PNG (zlib level 1) against JPEG (quality 90).

    python benchmarks/overlay_encoding.py [--repeats 200]

The overlay is what ``/api/v1/predict?overlays=true`` draws for each module: a photo's crop at the
display size (256) blended with a colour-mapped mask (``ranlens.model.render.overlay``). Prints the
median time and the bytes of each format and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ranlens.model import render

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--image", default=str(ROOT / "static" / "examples" / "chelsea.jpg"))
    args = parser.parse_args()
    backdrop = Image.open(args.image).convert("RGB").resize((256, 256))
    mask = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    overlay = render.overlay(backdrop, mask)
    results = {}
    for fmt in ("PNG", "JPEG"):
        render.data_uri(overlay, fmt)  # warm-up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            uri = render.data_uri(overlay, fmt)
            times.append(1000 * (time.perf_counter() - started))
        size = len(uri.split(",", 1)[1]) * 3 // 4  # the encoded bytes inside the base64
        results[fmt] = (statistics.median(times), size)
        print(f"{fmt:4s}: {results[fmt][0]:6.2f} ms, {size / 1024:5.1f} KB", flush=True)
    print(f"JPEG takes {results['JPEG'][0] / results['PNG'][0]:.3f}x PNG's time and "
          f"{results['JPEG'][1] / results['PNG'][1]:.3f}x its bytes")


if __name__ == "__main__":
    main()
