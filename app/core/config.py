"""Server settings, from environment variables prefixed ``RANLENS_`` (or a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RANLENS_", env_file=".env", extra="ignore")

    weights: str = Field("DEFAULT", description="the models to serve, separated by commas: DEFAULT (every "
                         "architecture's shipped default), weights names, or paths to manifest .json files")
    arch: str = Field("", description="with weights=DEFAULT, serve only this architecture's default")
    default_model: str = Field("", description="the model that answers requests that name none; "
                               "empty: the loaded model with the best recorded top-1")
    host: str = "127.0.0.1"
    port: int = 8000
    # `ranlens serve` hands this to uvicorn: FastAPI deprecated taking it on the app
    root_path: str = Field("", description="path prefix a proxy serves the app under and strips, e.g. /ranlens")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded-size limit against decompression bombs")
    torch_threads: int = Field(2, gt=0)
    max_concurrent_inferences: int = Field(16, gt=0, description="requests decoded, run and rendered at once; "
                                           "those that arrive together share one forward (dynamic batching)")
    max_batch_size: int = Field(16, gt=0, description="the most pictures one forward takes")
    batch_window_ms: float = Field(5.0, ge=0, description="how long a forward waits for requests still decoding; "
                                   "a lone request never waits")

    max_queued_inferences: int = Field(32, ge=0, description="requests that may wait for an inference slot; "
                                       "more are answered 503 with Retry-After at once")
    max_queue_wait_s: float = Field(10.0, gt=0, description="the longest a request waits for a slot before 503")
    display_size: int = Field(256, ge=32, le=1024, description="side of the crop the page draws masks on")


@lru_cache
def get_settings() -> Settings:
    return Settings()
