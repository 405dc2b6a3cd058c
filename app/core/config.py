"""Server settings, from environment variables prefixed ``RANLENS_`` (or a ``.env`` file)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # allow_inf_nan: "inf" passes gt=0, and an endless queue wait or batch window is no setting
    model_config = SettingsConfigDict(env_prefix="RANLENS_", env_file=".env", extra="ignore", allow_inf_nan=False)

    weights: str = Field("DEFAULT", description="the models to serve, separated by commas: DEFAULT (every "
                         "architecture's shipped default), weights names, or paths to manifest .json files")
    arch: str = Field("", description="with weights=DEFAULT, serve only this architecture's default")
    default_model: str = Field("", description="the model that answers requests that name none; "
                               "empty: the loaded model with the best recorded top-1")
    host: str = "127.0.0.1"
    port: int = 8000
    # `ranlens serve` hands this to uvicorn: FastAPI deprecated taking it on the app
    root_path: str = Field("", description="path prefix the app is served under, e.g. /ranlens: with "
                           "`ranlens serve` a proxy in front strips it; on Ray Serve it is the route prefix")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(120.0, gt=0, description="the longest an upload's body may take to arrive "
                                  "(10 MB at 85 kB/s); a slower one is answered 408 (a client sending a byte "
                                  "now and then would hold its connection and its bytes for ever)")
    max_connections: int | None = Field(None, gt=1, description="with `ranlens serve`, per worker process, "
                                        "uvicorn's limit_concurrency: a request that arrives while this many "
                                        "connections are open, its own included, is answered 503; unset, no "
                                        "cap. Idle connections count too, /healthz's included: behind a proxy "
                                        "with header and idle timeouts, a cap guards against floods")
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded-size limit against decompression bombs")
    torch_threads: int = Field(0, ge=0, description="intra-op threads of each forward (torch.set_num_threads); "
                               "0: the cores divided among the inference workers")
    inference_workers: int = Field(0, ge=0, description="forwards that run at once, each on its own torch thread "
                                   "with torch_threads threads (workers x threads should not exceed the cores); "
                                   "0: 2, or 1 on a one-core machine or where torch_threads leaves room for one")
    trace: bool = Field(True, description="run each model's forwards through a TorchScript trace (checked "
                        "against the Python forward at start; the Python forward stays if tracing fails)")
    max_concurrent_inferences: int = Field(16, gt=0, description="requests decoded, run and rendered at once; "
                                           "those that arrive together share one forward (dynamic batching)")
    max_batch_size: int = Field(16, gt=0, description="the most pictures one forward takes")
    batch_window_ms: float = Field(5.0, ge=0, description="how long a forward waits for requests still decoding; "
                                   "a lone request never waits")

    max_queued_inferences: int = Field(32, ge=0, description="requests that may wait for an inference slot; "
                                       "more are answered 503 with Retry-After at once")
    max_queue_wait_s: float = Field(10.0, gt=0, description="the longest a request waits for a slot before 503")
    shutdown_timeout_s: float = Field(15.0, gt=0, description="on SIGTERM, how long `ranlens serve` waits for "
                                      "open requests to finish before it cancels them and exits (a client "
                                      "that stalls mid-upload would otherwise keep the server up for ever)")
    display_size: int = Field(256, ge=32, le=1024, description="side of the crop the page draws masks on")

    @field_validator("root_path")
    @classmethod
    def _one_leading_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError(f"a path prefix starts with '/', e.g. '/{value}'")
        return value

    def forward_threads(self, cores: int | None = None) -> tuple[int, int]:
        """(inference workers, torch threads per worker), the zeros (auto) resolved for this machine's
        cores, or for ``cores`` (a Ray replica's CPU share).

        Auto gives two workers of cores / 2 threads. On the 2-core development machine, two
        one-thread forwards at once served 1.2x the requests of one two-thread forward
        (``RANLENS_INFERENCE_WORKERS=1 RANLENS_TORCH_THREADS=2``) when nothing else ran, and 4x when
        another process kept a core busy, as a two-thread OpenMP team stalls whenever either of its
        cores is taken (16 clients, ``benchmarks/load.py --url`` against each server).

        With the threads set and the workers auto, as many workers as fit the cores with that many
        threads each (at most two): ``RANLENS_TORCH_THREADS=2`` on two cores gave two workers of two
        threads, whose OpenMP teams slowed even a lone request's forward (24.7 ms against 12.0 ms per
        request, ``benchmarks/predict_overhead.py``).
        """
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.inference_workers:
            workers = self.inference_workers
        elif self.torch_threads:
            workers = max(1, min(2, cores // self.torch_threads))
        else:
            workers = min(2, cores)
        return workers, self.torch_threads or max(1, cores // workers)


@lru_cache
def get_settings() -> Settings:
    return Settings()
