"""How much the HTTP API adds on top of the bare model.

Measures, in one run on one machine: (a) the bare model's traced forward with preprocessing on a
decoded photo, (b) a full ``POST /api/v1/predict`` round trip through a real uvicorn server without
overlays, and (c) with server-rendered overlays. Prints medians and the ratios b/a and c/a. The server
holds the same weights as the bare model and answers once its own forward is traced, so the ratios
compare one network with itself.

    python benchmarks/predict_overhead.py [--repeats 30] [--image PATH]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import torch
from PIL import Image

from ranlens.model.explainer import Explainer

from _server import wait_traced  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--image", default=str(ROOT / "static" / "examples" / "chelsea.jpg"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.image).read_bytes()

    explainer = Explainer.load()
    explainer.trace()  # as the server runs it
    image = Image.open(io.BytesIO(data)).convert("RGB")

    def bare() -> None:
        explainer.infer(explainer.preprocess(image).unsqueeze(0))  # logits and probabilities

    bare_ms = median_ms(bare, args.repeats)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the bare model's weights alone (the server's default would otherwise be the best top-1,
    # Attention-92), run as the bare loop runs them: one forward at a time of --threads threads
    env = {**os.environ, "RANLENS_TORCH_THREADS": str(args.threads), "RANLENS_INFERENCE_WORKERS": "1",
           "RANLENS_WEIGHTS": explainer.weights.name}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "ranlens.app.main:app", "--port", str(port),
                               "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=60) as client:
            wait_traced(base + "/")  # the server traces its forward just after the start
            def call(**params) -> None:
                r = client.post("/api/v1/predict", params=params, files={"file": ("img", data, "image/jpeg")})
                r.raise_for_status()

            api_ms = median_ms(call, args.repeats)
            overlay_ms = median_ms(lambda: call(overlays="true"), args.repeats)
    finally:
        server.terminate()
        server.wait()

    print(f"{explainer.weights.name}, image {Path(args.image).name}, {args.repeats} repeats, {args.threads} threads, "
          f"medians")
    print(f"bare model forward + preprocessing : {bare_ms:8.1f} ms")
    print(f"POST /api/v1/predict               : {api_ms:8.1f} ms   ratio {api_ms / bare_ms:.2f}x (goal <= 1.5x)")
    print(f"POST /api/v1/predict?overlays=true : {overlay_ms:8.1f} ms   ratio {overlay_ms / bare_ms:.2f}x (goal <= 3x)")


if __name__ == "__main__":
    main()
