from __future__ import annotations

from fastapi import APIRouter

from fastapi import Request

from ranlens.app.api.deps import CatalogDep
from ranlens.app.core.problems import Problem
from ranlens.app.api.openapi import problems
from ranlens.app.api.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=problems(503),
            summary="Every configured model is loaded")
def readyz(request: Request, catalog: CatalogDep) -> dict:
    # a model that failed to load is a deployment error: not ready, even while the others serve
    if request.app.state.load_error:
        raise Problem(503, "Model not ready", f"Not every model is loaded: {request.app.state.load_error}")
    default = catalog.default
    return {"status": "ready", "model": default.name, "weights": default.weights.name,
            "models": [e.weights.name for e in catalog]}
