from __future__ import annotations

from fastapi import APIRouter

from ranlens.app.api.deps import ExplainerDep, ServedModel
from ranlens.app.api.openapi import problems
from ranlens.app.api.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models", response_model=ModelList, responses=problems(503),
            summary="The loaded model and its metadata")
def list_models(explainer: ExplainerDep) -> dict:
    return {"models": [explainer.metadata()]}


@router.get("/models/{name}", response_model=ModelInfo, responses=problems(404, 503),
            summary="One model's metadata")
def get_model(explainer: ServedModel) -> dict:
    return explainer.metadata()
