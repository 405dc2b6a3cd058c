"""The same FastAPI app on Ray Serve: several replicas, in several processes, on one machine or many.

    ray start --head && ranlens serve-ray --address auto --replicas 2 --port 8000

Each replica is the whole app that ``uvicorn ranlens.app.main:app`` runs, built by ``create_app`` in
the replica's own process: the same routes, errors, limits and /metrics (per replica). Serve runs the
app's lifespan when a replica starts, so every replica loads the catalog and starts its batchers
before Serve sends it a request; a deployment counts as running only once that has happened.

Batching stays the app's own (``ranlens.model.batching``), inside each replica, rather than
``@serve.batch``: the routes decode, crop and render each picture in a worker thread and only the
forward is shared, while ``serve.batch`` batches calls of an async deployment method, so the routes
would have to become Ray-specific and the uvicorn app would lose its batching. The app's batcher also
waits only for requests it knows are still decoding (a lone request runs at once), where
``serve.batch`` waits out a fixed timeout. Ray's part is what the app cannot do: spread requests over
replicas and machines, and restart a replica that dies.

Settings are read once, where the command runs (``RANLENS_*`` variables and ``.env``), and travel to
every replica as ``RANLENS_*`` environment variables (a replica on another machine has neither the
caller's environment nor its working directory). ``root_path`` becomes the application's route prefix:
Serve serves the app under it and tells the app (the ASGI ``root_path``), so links and the OpenAPI
``servers`` carry it, as behind a path-stripping proxy with ``ranlens serve``; a proxy in front of
Serve passes paths on unchanged.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

try:
    import ray
    from ray import serve
except ImportError as exc:  # the optional extra: say how to get it in one line
    raise ImportError("Ray Serve is not installed: pip install 'ranlens[serve]'") from exc

from ranlens.app.core.config import Settings
from ranlens.model.catalog import weights_specs
from ranlens.model.weights import resolve_weights

APP_NAME = "ranlens"


def build_app():
    """Runs in each replica when it starts, so the app and its models live in the replica's process;
    its settings are the replica's ``RANLENS_*`` variables (``settings_env``)."""
    from ranlens.app.main import create_app

    return create_app(Settings())


@serve.deployment(name=APP_NAME)
@serve.ingress(build_app)  # a builder, not an app: an app holds locks and metrics that cannot be pickled
class Ranlens:
    """One replica of the app; Serve's HTTP proxy sends it requests, the app does the rest."""

    def check_health(self) -> None:
        """Serve calls this every few seconds (``self.app`` is the replica's app)."""
        replica_health(self.app)


def replica_health(app) -> None:
    """Raises unless the replica's app loaded a model. The app keeps serving without one, to say why
    (503 with the reason), which suits one process; a replica that answers only 503 would count as
    healthy and take its share of requests for ever. Unhealthy, Serve replaces it and its status
    names the reason. A replica missing some of its models still serves the others: healthy."""
    if app.state.catalog is None:
        raise RuntimeError(f"no model loaded: {app.state.load_error}")


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``RANLENS_*`` variables that make ``Settings()`` read them back unchanged,
    but for manifest paths, made absolute: a replica runs in Ray's working directory, not the caller's."""
    values = settings.model_dump()
    values["weights"] = ",".join(str(Path(spec).resolve()) if spec.endswith(".json") else spec
                                 for spec in (s.strip() for s in settings.weights.split(",")) if spec)
    # an unset optional setting stays unset: str(None) would read back as the string "None"
    return {f"RANLENS_{name.upper()}": str(value) for name, value in values.items() if value is not None}


def replica_settings(settings: Settings, replica_cpus: float) -> Settings:
    """``settings`` for one replica: automatic workers and threads (0) follow the replica's CPU share,
    not the node's cores, which every replica on a large node would otherwise take as its own."""
    workers, threads = settings.forward_threads(cores=max(1, int(replica_cpus)))
    return settings.model_copy(update={"inference_workers": workers, "torch_threads": threads})


def application(settings: Settings, replicas: int = 2, replica_cpus: float = 1.0) -> serve.Application:
    if replicas < 1 or replica_cpus <= 0:
        raise ValueError(f"need at least one replica and some CPU for each; got {replicas}, {replica_cpus}")
    # Serve's own cap on a replica's requests (default 5) would queue requests in the proxy before the
    # app's batcher and gate see them: let through what the app admits (running, waiting) and a little
    # more for /readyz and /metrics, so the app's own backpressure (503 with Retry-After) decides.
    ongoing = settings.max_concurrent_inferences + settings.max_queued_inferences + 8
    return Ranlens.options(
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": replica_cpus, "runtime_env": {"env_vars": settings_env(replica_settings(settings, replica_cpus))}},
    ).bind()


def connect(address: str) -> None:
    try:
        if address not in ("auto", "local") and "://" not in address:
            # ray.init retries an address where nothing listens for minutes: ask the port first
            host, _, port = address.rpartition(":")
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, OSError, ValueError) as exc:
        raise ConnectionError(f"no Ray cluster at {address!r} ({' '.join(str(exc).split())[:200]}): start one "
                              "with `ray start --head`, or pass its address with --address") from exc


# where Serve runs its HTTP proxies: every node that holds a replica (each an entry point, for a load
# balancer in front; Serve's default) or the head node alone (one entry point)
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


def check_weights(settings: Settings) -> None:
    """Every weights name the settings give is one this install ships, checked before any replica
    starts: a misspelt name would deploy replicas that load nothing and fail their health checks
    (``replica_health``), over and over, with the reason only in Serve's status and the nodes' logs.
    A manifest path missing here is only a warning: it may be on the nodes' own storage."""
    for arch, spec in weights_specs(settings.weights, settings.arch):
        if spec.endswith(".json") and not Path(spec).is_file():
            warnings.warn(f"weights manifest {Path(spec).resolve()} is not on this machine: each replica's node "
                          "must have it", stacklevel=2)
            continue
        resolve_weights(arch or None, spec)


def deploy(settings: Settings, address: str, replicas: int, replica_cpus: float, host: str, port: int,
           proxy_location: str = "EveryNode") -> None:
    """Deploys (or updates) the app on the cluster at ``address`` and returns once every replica has
    loaded its models; the application outlives this process (Serve's controller is detached)."""
    if proxy_location not in PROXY_LOCATIONS:
        raise ValueError(f"proxy location must be one of {', '.join(PROXY_LOCATIONS)}; got {proxy_location!r}")
    check_weights(settings)  # WeightsError, before a cluster is asked for anything
    app = application(settings, replicas, replica_cpus)
    connect(address)
    try:
        # HTTP options and proxy placement belong to the whole cluster, fixed when Serve first starts on it
        serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix=settings.root_path or "/", blocking=False)
    finally:
        ray.shutdown()  # this driver only; the cluster and the application stay


def undeploy(address: str) -> None:
    connect(address)
    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def replica_states(address: str) -> dict[str, int]:
    """How many replicas of the app are in each state, e.g. ``{"RUNNING": 2}``."""
    connect(address)
    try:
        status = serve.status().applications[APP_NAME]
        return dict(status.deployments[APP_NAME].replica_states)
    finally:
        ray.shutdown()
