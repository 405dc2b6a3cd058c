"""Size and server time of ``POST /api/v1/explain``: every channel of every mask against what the page draws.

    python benchmarks/explain_payload.py
    python benchmarks/explain_payload.py --repeats 9 --image static/examples/chelsea.jpg --json explain.json

Runs the real app in this process (FastAPI's TestClient: the app's own routes, response model, JSON
encoder and gzip middleware, so the bytes are those a client receives) for two models: the shipped
attention56_cifar at 32 pixels, and attention92 in the ImageNet layout at 224 pixels with random
weights and ``--classes`` classes (no trained 224-pixel weights ship; sizes and times do not depend on
the weights, except how well gzip packs the masks). Each model answers four kinds of request:

* ``all_channels``: ``?all_channels=true``, every channel of every mask (what every answer was before);
* ``default``: the reductions, look-inside data and pictures the page draws at once;
* ``default+channel``: ``?channel=0``, the default answer plus one channel;
* ``channel route``: ``POST /api/v1/explain/channel?channel=0``, only that channel: what the page
  asks for when it shows one.

The kinds take turns (round-robin), so a busy moment of the machine hits each alike. For each it prints
the JSON body's bytes, the bytes on the wire with ``Accept-Encoding: gzip`` (what a browser gets), and
medians of the forward pass (``timing_ms.inference``), of the server's own ``timing_ms.total`` (decode
to built body, before JSON encoding) and of the whole request's wall time in-process (JSON encoding
and gzip included), then the ratios of ``all_channels`` to the others and where the default answer's
bytes go.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXPLAIN, CHANNEL = "/api/v1/explain", "/api/v1/explain/channel"
VARIANTS = {"all_channels": (EXPLAIN, {"all_channels": "true"}), "default": (EXPLAIN, {}),
            "default+channel": (EXPLAIN, {"channel": "0"}), "channel route": (CHANNEL, {"channel": "0"})}


def random_imagenet_manifest(arch: str, classes: int, directory: Path) -> Path:
    """Random-weights (seed 0) checkpoint and manifest of an ImageNet-layout architecture at 224 px."""
    from ranlens.model.registry import get_model
    from ranlens.model.weights import Weights, save_checkpoint

    torch.manual_seed(0)
    model = get_model(arch, num_classes=classes)
    file = f"{arch}.random.safetensors"
    digest = save_checkpoint(model, directory / file, arch)
    weights = Weights(name=f"{arch}.random", arch=arch, file=file, sha256=digest,
                      classes=tuple(f"class {i}" for i in range(classes)), input_size=224,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, recipe={"note": "random weights, for benchmarks"},
                      directory=directory)
    return weights.write_manifest()


def measure(image: Path, repeats: int, threads: int, **served: str) -> dict:
    """``served``: the Settings that choose the one model (weights=, arch=)."""
    from fastapi.testclient import TestClient

    from ranlens.app.core.config import Settings
    from ranlens.app.main import create_app

    files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
    rows = {}
    with TestClient(create_app(Settings(torch_threads=threads, **served))) as client:
        def post(path: str, params: dict):
            started = time.perf_counter()
            r = client.post(path, params=params, files=files, headers={"accept-encoding": "gzip"})
            wall = time.perf_counter() - started
            if r.status_code != 200:
                raise SystemExit(f"{path} {params}: {r.status_code} {r.text[:500]}")
            return r, wall

        post(EXPLAIN, {})  # warm-up: first forward, lazy imports
        walls, totals, model, answers = ({name: [] for name in VARIANTS} for _ in range(4))
        for _ in range(repeats):  # round-robin, so that a busy moment of the machine hits every kind alike
            for name, (path, params) in VARIANTS.items():
                answer, wall = post(path, params)
                timing = answer.json()["timing_ms"]
                walls[name].append(1000 * wall)
                totals[name].append(timing["total"])
                model[name].append(timing["inference"])
                answers[name] = answer
        for name, answer in answers.items():
            body = answer.json()
            rows[name] = {
                "json_bytes": len(answer.content), "wire_bytes": answer.num_bytes_downloaded,
                "gzip": answer.headers.get("content-encoding") == "gzip",
                "server_ms": statistics.median(totals[name]), "model_ms": statistics.median(model[name]),
                "wall_ms": statistics.median(walls[name]),
                "parts": {key: len(json.dumps(body[key], separators=(",", ":")))
                          for key in ("attention", "images", "predictions") if key in body},
                "model": body["model"], "weights": body["weights"],
                "masks": [(a["module"], a["channels"], *a["shape"]) for a in body["attention"]],
            }
    return rows


def report(label: str, rows: dict) -> None:
    full = rows["all_channels"]
    print(f"\n{label}: {full['weights']}, modules " +
          ", ".join(f"{m} {c}x{h}x{w}" for m, c, h, w in full["masks"]))
    print(f"{'request':<17}{'JSON bytes':>12}{'gzip bytes':>12}{'model ms':>10}{'server ms':>11}{'wall ms':>9}"
          f"{'JSON ratio':>12}{'gzip ratio':>12}{'wall ratio':>12}")
    for name, row in rows.items():
        print(f"{name:<17}{row['json_bytes']:>12,}{row['wire_bytes']:>12,}{row['model_ms']:>10.1f}"
              f"{row['server_ms']:>11.1f}{row['wall_ms']:>9.1f}{full['json_bytes'] / row['json_bytes']:>11.1f}x"
              f"{full['wire_bytes'] / row['wire_bytes']:>11.1f}x{full['wall_ms'] / row['wall_ms']:>11.1f}x")
    parts = rows["default"]["parts"]
    print("default answer's JSON bytes: " + ", ".join(f"{k} {v:,}" for k, v in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed requests per kind (median reported)")
    parser.add_argument("--image", type=Path, default=ROOT / "static" / "examples" / "chelsea.jpg")
    parser.add_argument("--classes", type=int, default=1000, help="classes of the random 224-pixel model")
    parser.add_argument("--arch224", default="attention92", choices=["attention56", "attention92"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (RANLENS_TORCH_THREADS)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    results = {"attention56_cifar (32 px)": measure(args.image, args.repeats, args.threads,
                                                                  arch="attention56_cifar")}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = random_imagenet_manifest(args.arch224, args.classes, Path(tmp))
        results[f"{args.arch224} (224 px, random weights)"] = measure(args.image, args.repeats, args.threads,
                                                                      weights=str(manifest))
    print(f"image {args.image.name}, {args.repeats} timed requests per kind, {args.threads} torch threads")
    for label, rows in results.items():
        report(label, rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
