"""Response models of the REST API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    index: int
    label: str
    probability: float


class AttentionOut(BaseModel):
    module: str = Field(examples=["stage1.module1"])
    stage: int
    shape: list[int] = Field(description="mask resolution [height, width]")
    channels: int
    reduction: str = Field(description="how channels were reduced for min/max/mean, overlay and mask")
    min: float
    max: float
    mean: float
    overlay: str | None = Field(None, description="PNG data URI, with overlays=true")
    mask: list[list[float]] | None = Field(None, description="channel-reduced mask values, with masks=true")


class PredictResponse(BaseModel):
    model: str
    weights: str
    predictions: list[PredictionOut]
    attention: list[AttentionOut]
    timing_ms: dict[str, float]


class ModuleInfo(BaseModel):
    module: str
    stage: int
    channels: int
    shape: list[int]


class ModelInfo(BaseModel):
    name: str
    weights: str
    sha256: str
    classes: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    modules: list[ModuleInfo]
    metrics: dict
    recipe: dict


class ModelList(BaseModel):
    models: list[ModelInfo]
