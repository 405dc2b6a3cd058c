from __future__ import annotations

from fastapi import APIRouter, Request

from ranlens.app.api.deps import ExplainerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The weights are loaded and the model answers")
def readyz(request: Request, explainer: ExplainerDep) -> dict:
    return {"status": "ready", "model": explainer.name, "weights": explainer.weights.name}
