"""The app on Ray Serve: a real Ray cluster of two nodes on this machine, a replica on each, the core
API cases over real HTTP, under a path prefix (``RANLENS_ROOT_PATH``, Serve's route prefix).

Slow (two Ray nodes and two replicas each loading both models: about a minute on two cores). Ray
Serve is a test dependency (pip install 'ranlens[serve]'): without it this module fails, never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

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


NODE_PORTS = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
              "runtime-env-agent", "metrics-export")


def _start_node(head: str | None, ports: list[int], low: int, temp: str, env: dict, log) -> subprocess.Popen:
    """``ray start --block`` for one node of one CPU on loopback: the head at ``ports[:2]`` (GCS, Ray
    client) when ``head`` is None, else a node that joins it; its workers take ports from low..low+200."""
    if head is None:
        gcs, client, *ports = ports
        where = ["--head", "--port", str(gcs), "--ray-client-server-port", str(client), "--include-dashboard", "false",
                 "--disable-usage-stats"]
    else:
        where = ["--address", head]
    command = [RAY, "start", "--block", *where, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
               *(arg for name, port in zip(NODE_PORTS, ports, strict=True) for arg in (f"--{name}-port", str(port))),
               "--min-worker-port", str(low), "--max-worker-port", str(low + 200),
               "--object-store-memory", str(100 * 1024**2), "--temp-dir", temp]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str, env: dict) -> int:
    result = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], "
                             "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))", address],
                            env=env, capture_output=True, text=True, timeout=60)
    return int(result.stdout.split()[-1]) if result.returncode == 0 and result.stdout.split() else 0


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster of its own, one CPU per node, both on this machine (own ports and temp
    dirs, loopback only): two one-CPU replicas then have to run one on each node, as on two machines.
    Stopped by process group and then by its own processes' ids, never with ``ray stop`` (which
    stops every Ray on the machine)."""
    # short: Ray puts Unix sockets under it, and their paths have a length limit
    temp = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(Path(temp) / "ray-start.log", "wb")
    # every port at once, so that none is handed out twice; each node's workers get a range of 200
    # that holds none of them and not the other node's range
    ports = free_ports(2 + 2 * len(NODE_PORTS))
    lows: list[int] = []
    while len(lows) < 2:
        p = free_ports(1)[0]
        if p + 200 < 65536 and not any(p <= q <= p + 200 for q in ports) and all(abs(p - q) > 200 for q in lows):
            lows.append(p)
    address = f"127.0.0.1:{ports[0]}"
    procs = []
    try:
        head_proc = _start_node(None, ports[:2 + len(NODE_PORTS)], lows[0], f"{temp}/head", env, log)
        procs.append(head_proc)
        deadline = time.time() + 120
        while subprocess.run([RAY, "status", "--address", address], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            if head_proc.poll() is not None or time.time() > deadline:
                pytest.fail("Ray did not start: " + (Path(temp) / "ray-start.log").read_text()[-2000:])
            time.sleep(1)
        procs.append(_start_node(address, ports[2 + len(NODE_PORTS):], lows[1], f"{temp}/worker", env, log))
        deadline = time.time() + 120
        while _alive_nodes(address, env) < 2:
            if procs[-1].poll() is not None or time.time() > deadline:
                pytest.fail("the second Ray node did not join: " + (Path(temp) / "ray-start.log").read_text()[-2000:])
            time.sleep(1)
        yield address, env
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for pid in _ray_processes(temp):  # workers the raylets started in sessions of their own
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
        # one proxy, on the head: both nodes share this machine's loopback, where a second proxy
        # could not take the port
        [RANLENS, "serve-ray", "--address", address, "--replicas", "2", "--host", "127.0.0.1", "--port", str(port),
         "--proxy-location", "HeadOnly"],
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


def test_two_replicas_run_one_on_each_node(served):
    _, address, env = served
    # serve.status() from a driver of its own, as an operator would ask; two one-CPU replicas on two
    # one-CPU nodes leave no CPU free only if each node holds one; --proxy-location HeadOnly: one proxy
    script = ("import json, sys, ray; from ray import serve; from ranlens.app.serve_ray import replica_states; "
              "states = replica_states(sys.argv[1]); ray.init(address=sys.argv[1], logging_level='ERROR'); "
              "print(json.dumps({'states': states, 'nodes': sum(n['Alive'] for n in ray.nodes()), "
              "'cpus': ray.cluster_resources()['CPU'], 'free': ray.available_resources().get('CPU', 0), "
              "'proxies': len(serve.status().proxies)}))")
    result = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "states": {"RUNNING": 2}, "nodes": 2, "cpus": 2.0, "free": 0, "proxies": 1}, result.stdout


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


def test_replica_settings_name_manifests_by_absolute_path(tmp_path, monkeypatch):
    """A replica starts in Ray's working directory: a manifest path relative to the caller's would not
    be found there. Everything else reads back unchanged."""
    from ranlens.app.core.config import Settings
    from ranlens.app.serve_ray import settings_env

    monkeypatch.chdir(tmp_path)
    settings = Settings(weights="DEFAULT, runs/mine.json,attention56_cifar.v7", max_upload_bytes=12345)
    env = settings_env(settings)
    assert env["RANLENS_WEIGHTS"] == f"DEFAULT,{tmp_path / 'runs' / 'mine.json'},attention56_cifar.v7"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == {**settings.model_dump(), "weights": env["RANLENS_WEIGHTS"]}


@pytest.mark.parametrize(("cpus", "workers", "threads", "expected"), [
    (1.0, 0, 0, (1, 1)), (4.0, 0, 0, (2, 2)), (8.0, 1, 0, (1, 8)), (0.5, 0, 0, (1, 1)), (4.0, 3, 5, (3, 5)),
])
def test_automatic_workers_and_threads_follow_the_replica_cpu_share(cpus, workers, threads, expected):
    from ranlens.app.core.config import Settings
    from ranlens.app.serve_ray import replica_settings

    mine = replica_settings(Settings(inference_workers=workers, torch_threads=threads), cpus)
    assert (mine.inference_workers, mine.torch_threads) == expected
    assert mine.forward_threads() == expected  # what the replica's app resolves, whatever its node's cores


def test_weights_the_install_does_not_ship_fail_the_deployment_before_any_replica_starts():
    """A replica that cannot load its models fails its health checks, with the reason in Serve's status
    and its node's log: `serve-ray` refuses an unknown weights name itself, in one line, without a cluster. A manifest
    path missing here may be on the nodes: a warning, and the deployment goes on."""
    (port,) = free_ports(1)  # nothing listens there: reaching for the cluster is its own error

    def serve_ray(weights: str) -> tuple[str, str]:
        result = subprocess.run([RANLENS, "serve-ray", "--address", f"127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "RANLENS_WEIGHTS": weights})
        assert result.returncode == 1, result
        return result.stderr, result.stderr.strip().splitlines()[-1]

    _, last = serve_ray("attention56_cifar.v99")
    assert last.startswith("ranlens serve-ray: error: deployment failed:") and "unknown weights" in last, last
    stderr, last = serve_ray("/nodes-only/attention56_cifar.v8.json")
    assert "/nodes-only/attention56_cifar.v8.json is not on this machine" in stderr
    assert last.startswith("ranlens serve-ray: error: no Ray cluster at"), last


def test_a_replica_that_loaded_no_model_is_unhealthy():
    """The app keeps serving without a model, to say why; as a replica it would count as healthy and
    answer 503 for ever. Serve calls the deployment's check_health: it raises, naming the reason, for
    an app that loaded nothing, and passes for one that loaded its models (the real app, started)."""
    from fastapi.testclient import TestClient

    from ranlens.app.core.config import Settings
    from ranlens.app.main import create_app
    from ranlens.app.serve_ray import Ranlens

    replica_class = Ranlens.func_or_class
    broken = create_app(Settings(weights="/nodes-only/attention56_cifar.v8.json"))
    with TestClient(broken):
        with pytest.raises(RuntimeError, match="no model loaded: .*attention56_cifar.v8.json"):
            replica_class.check_health(SimpleNamespace(app=broken))
    working = create_app(Settings(weights=DEFAULT_WEIGHTS["attention56_cifar"]))
    with TestClient(working):
        replica_class.check_health(SimpleNamespace(app=working))
