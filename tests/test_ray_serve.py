"""The app on Ray Serve: a real local Ray cluster, two replicas, the core API cases over real HTTP,
under a path prefix (``RANLENS_ROOT_PATH``, Serve's route prefix).

Slow (a Ray cluster and two replicas each loading both models: about a minute on two cores); skipped
where Ray Serve is not installed (pip install 'ranlens[serve]').
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import ray.serve  # noqa: F401 - the test extra installs it: a missing Ray fails here, it is never skipped

from ranlens.model.weights import DEFAULT_WEIGHTS

from . import corpus  # noqa: E402
from .conftest import RANLENS  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    # Ray binds its ports itself, so they cannot be handed over bound; distinct and free a moment ago
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_processes(marker: str) -> list[int]:
    """Processes of this cluster: everything Ray starts names its session directory, under ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster of its own (its own ports and temp dir, loopback only), stopped by
    process group and then by its own processes' ids, never with ``ray stop`` (which stops every Ray
    on the machine)."""
    gcs, client, node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = free_ports(8)
    ports = {gcs, client, node_manager, object_manager, agent, agent_grpc, runtime_env, metrics}
    # workers take ports from a range of their own: one that holds none of the ports above
    low = next(p for p in iter(lambda: free_ports(1)[0], None)
               if p + 200 < 65536 and not any(p <= q <= p + 200 for q in ports))
    # short: Ray puts Unix sockets under it, and their paths have a length limit
    temp = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(Path(temp) / "ray-start.log", "wb")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
         "--object-manager-port", str(object_manager), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
         "--metrics-export-port", str(metrics), "--min-worker-port", str(low), "--max-worker-port", str(low + 200),
         "--include-dashboard", "false", "--object-store-memory", str(100 * 1024**2), "--temp-dir", temp,
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{gcs}"
    try:
        deadline = time.time() + 120
        while subprocess.run([RAY, "status", "--address", address], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("Ray did not start: " + (Path(temp) / "ray-start.log").read_text()[-2000:])
            time.sleep(1)
        yield address, env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for pid in _ray_processes(temp):  # workers the raylet started in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


PREFIX = "/ranlens"


@pytest.fixture(scope="module")
def served(cluster):
    address, env = cluster
    (port,) = free_ports(1)
    deploy = subprocess.run(
        [RANLENS, "serve-ray", "--address", address, "--replicas", "2", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "RANLENS_TORCH_THREADS": "1", "RANLENS_ROOT_PATH": PREFIX + "/"},
        capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert f"ranlens serving on http://127.0.0.1:{port}{PREFIX}/ through Ray Serve" in deploy.stdout, deploy.stdout
    with httpx.Client(base_url=f"http://127.0.0.1:{port}{PREFIX}", timeout=60) as client:
        yield client, address, env


def test_served_under_the_prefix(served):
    client = served[0]
    outside = httpx.get(str(client.base_url).removesuffix(PREFIX + "/") + "/readyz", timeout=60)
    assert outside.status_code == 404, outside.text  # Serve routes only the prefix to the app
    # the app knows its prefix: the page links relatively, the schema names it as the server
    assert client.get("/openapi.json").json()["servers"] == [{"url": PREFIX}]
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/js/main.js"' in page.text
    assert client.get("/static/js/main.js").status_code == 200


def test_two_replicas_are_running(served):
    _, address, env = served
    # serve.status() from a driver of its own, as an operator would ask
    script = ("import json, sys; from ranlens.app.serve_ray import replica_states; "
              "print(json.dumps(replica_states(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '{"RUNNING": 2}', result.stdout


def test_ready_with_both_models(served):
    client = served[0]
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert sorted(ready.json()["models"]) == sorted(DEFAULT_WEIGHTS.values())
    listing = client.get("/api/v1/models").json()
    assert {m["name"] for m in listing["models"]} == {"attention56_cifar", "attention92_cifar"}


def test_predict_a_cat_on_every_replica(served):
    client = served[0]
    image = corpus.png(corpus.photo("chelsea.jpg"))
    # several requests: Serve spreads them over the replicas, and each must answer the same
    for _ in range(4):
        r = client.post("/api/v1/predict", files={"file": ("cat.png", image, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "attention56_cifar" and body["predictions"][0]["label"] == "cat"
        assert len(body["attention"]) == 3


def test_model_parameter_selects_the_network(served):
    client = served[0]
    image = corpus.png(corpus.photo("chelsea.jpg"))
    r = client.post("/api/v1/predict", params={"model": "attention92_cifar"},
                    files={"file": ("cat.png", image, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "attention92_cifar" and len(r.json()["attention"]) == 6


def test_a_bad_upload_is_problem_json(served):
    client = served[0]
    r = client.post("/api/v1/predict", files={"file": ("cat.jpg", corpus.truncated_jpeg(), "image/jpeg")})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["title"] == "Undecodable image" and body["instance"] == PREFIX + "/api/v1/predict", body
    r = client.post("/api/v1/predict", files={"file": ("cat.png", b"not a picture", "image/png")})
    assert r.status_code == 415 and r.json()["title"] == "Unsupported image", r.text


def test_no_cluster_is_one_line():
    (port,) = free_ports(1)  # nothing listens there
    result = subprocess.run([RANLENS, "serve-ray", "--address", f"127.0.0.1:{port}"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ranlens serve-ray: error: no Ray cluster at") and "ray start --head" in last, result.stderr
