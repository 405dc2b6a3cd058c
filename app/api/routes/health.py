from __future__ import annotations

from fastapi import APIRouter

from ranlens.app.api.deps import ExplainerDep
from ranlens.app.api.openapi import problems
from ranlens.app.api.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=problems(503),
            summary="The weights are loaded and the model answers")
def readyz(explainer: ExplainerDep) -> dict:
    return {"status": "ready", "model": explainer.name, "weights": explainer.weights.name}
