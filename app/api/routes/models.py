from __future__ import annotations

from fastapi import APIRouter

from ranlens.app.api.deps import CatalogDep, ServedModel
from ranlens.app.api.openapi import problems
from ranlens.app.api.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models", response_model=ModelList, responses=problems(503),
            summary="Every loaded model and its metadata, and which one is the default")
def list_models(catalog: CatalogDep) -> dict:
    return {"default": catalog.default_weights, "models": [e.metadata() for e in catalog]}


@router.get("/models/{name}", response_model=ModelInfo, responses=problems(404, 503),
            summary="One model's metadata")
def get_model(explainer: ServedModel) -> dict:
    return explainer.metadata()
