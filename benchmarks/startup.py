"""Where a server's start goes: imports, model loading, first forward, and the memory each adds.

    python benchmarks/startup.py [--repeats 3]

Each step runs in a fresh interpreter (so nothing is cached in-process), medians of ``--repeats``:
(1) ``import torch``; (2) ``import ranlens.app.main`` (the app and everything it imports, model
loading not included); (3) loading the served models (the catalog); (4) a first forward per model;
and a real ``ranlens serve`` from launch until ``/readyz`` answers, with its resident memory then and
after five requests to each served model, with traced forwards (the default) and without.
Also lists the slowest imports of step 2 (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from _server import launched  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    "import torch": "import time; t = time.perf_counter(); import torch; T = time.perf_counter() - t",
    "import the app": "import time; t = time.perf_counter(); import ranlens.app.main; T = time.perf_counter() - t",
    "load the models": ("import ranlens.app.main, time; from ranlens.model.catalog import load_catalog; "
                        "t = time.perf_counter(); c, e = load_catalog(); T = time.perf_counter() - t"),
    "first forward": ("import ranlens.app.main, time; from PIL import Image; from ranlens.model.catalog import load_catalog; "
                      "c, e = load_catalog(); t = time.perf_counter(); [x.explain(Image.new('RGB', (64, 64))) for x in c]; "
                      "T = time.perf_counter() - t"),
}
REPORT = "; import resource; print(T, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def run_step(code: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code + REPORT], capture_output=True, text=True, check=True,
                         env={**os.environ, "RANLENS_TORCH_THREADS": "2"}).stdout.split()
    return float(out[-2]), float(out[-1]) / 1024  # seconds, peak RSS in MiB (Linux reports KiB)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1)) / 1024


def serve_to_ready(trace: bool = True) -> tuple[float, float, float]:
    """Seconds from launch to /readyz, resident MiB then, and resident MiB once the traces are made
    (``RANLENS_TRACE``) and every served model has answered 5 requests."""
    with launched(RANLENS_TRACE=str(trace).lower()) as served:
        rss_ready = rss_mib(served.pid)
        photo = (ROOT / "static" / "examples" / "chelsea.jpg").read_bytes()
        with httpx.Client(base_url=served.url, timeout=60) as client:
            deadline = time.perf_counter() + 120
            # the traces are made after the start, on the torch threads: wait until every model says so
            while trace and not all(m["traced"] for m in client.get("api/v1/models").json()["models"]):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the models were not traced within 2 minutes")
                time.sleep(0.1)
            for model in client.get("api/v1/models").json()["models"]:
                for _ in range(5):
                    client.post("api/v1/predict", params={"model": model["weights"]},
                                files={"file": ("chelsea.jpg", photo, "image/jpeg")}).raise_for_status()
        return served.ready_s, rss_ready, rss_mib(served.pid)


def slowest_imports(n: int = 8) -> list[tuple[float, str]]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ranlens.app.main"],
                         capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|\s*(\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            rows.append((int(m.group(1)) / 1e6, m.group(2).strip()))
    top_level = [r for r in rows if "." not in r[1]]
    return sorted(top_level, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, code in STEPS.items():
        runs = [run_step(code) for _ in range(args.repeats)]
        print(f"{name:>16}: {statistics.median(r[0] for r in runs):6.2f} s   "
              f"peak RSS {statistics.median(r[1] for r in runs):6.0f} MiB", flush=True)
    for trace in (True, False):
        serve = [serve_to_ready(trace) for _ in range(args.repeats)]
        print(f"{'serve to ready':>16}: {statistics.median(r[0] for r in serve):6.2f} s   "
              f"RSS when ready {statistics.median(r[1] for r in serve):6.0f} MiB, after 5 requests per model "
              f"{statistics.median(r[2] for r in serve):6.0f} MiB (RANLENS_TRACE={str(trace).lower()})", flush=True)
    print("slowest top-level imports of the app (cumulative seconds):")
    for seconds, module in slowest_imports():
        print(f"  {seconds:5.2f} s  {module}")


if __name__ == "__main__":
    main()
