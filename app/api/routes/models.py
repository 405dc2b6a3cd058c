from __future__ import annotations

from fastapi import APIRouter

from ranlens.app.api.deps import ExplainerDep
from ranlens.app.api.schemas import ModelInfo, ModelList
from ranlens.app.core.problems import Problem

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="The loaded model and its metadata")
def list_models(explainer: ExplainerDep) -> dict:
    return {"models": [explainer.metadata()]}


@router.get("/models/{name}", response_model=ModelInfo, summary="One model's metadata")
def get_model(name: str, explainer: ExplainerDep) -> dict:
    if name not in {explainer.name, explainer.weights.name}:
        raise Problem(404, "Unknown model", f"This server serves {explainer.name!r}, not {name!r}.")
    return explainer.metadata()
