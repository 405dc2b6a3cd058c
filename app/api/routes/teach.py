"""Teaching support: the architecture read off the model, and the "attention off" ablation."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Query, Request

from ranlens.app.api.deps import ExplainerDep, SettingsDep, run_inference
from ranlens.app.api.routes.predict import PROBLEMS, UPLOAD_BODY
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.app.core.problems import Problem
from ranlens.app.core.upload import read_upload
from ranlens.model import ARCHITECTURES, get_model, list_models
from ranlens.model.architecture import architecture

router = APIRouter(prefix="/api/v1", tags=["teaching"])


@lru_cache
def _architecture_of(name: str) -> dict:
    return architecture(get_model(name, num_classes=10))


@router.get("/architectures/{arch}", summary="Any registered layout, described from a freshly built model")
def describe_architecture(arch: str) -> dict:
    if arch not in ARCHITECTURES:
        raise Problem(404, "Unknown architecture", f"{arch!r} is not one of {list_models()}")
    return _architecture_of(arch)


@router.get("/models/{name}/architecture", summary="The served model's layout: stem, stages, modules, head")
def model_architecture(name: str, explainer: ExplainerDep) -> dict:
    if name not in {explainer.name, explainer.weights.name}:
        raise Problem(404, "Unknown model", f"This server serves {explainer.name!r}, not {name!r}.")
    return architecture(explainer.model, explainer.weights.input_size)


def _ablate(explainer: Explainer, max_pixels: int, data: bytes, content_type: str, top_k: int) -> dict:
    return explainer.ablate(decode_image(data, max_pixels, content_type), top_k)


@router.post(
    "/ablate", openapi_extra=UPLOAD_BODY, responses=PROBLEMS,
    summary="Predictions with attention on, all masks zeroed, and one module's mask zeroed at a time",
    description="Setting a module's soft mask M to zero makes its output (1 + 0) * T = T: the trunk alone. "
                "`normal`, `all_off` and each `per_module` entry carry all class probabilities and the top_k.",
)
async def ablate(
    request: Request,
    explainer: ExplainerDep,
    settings: SettingsDep,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
) -> dict:
    if top_k > len(explainer.weights.classes):
        raise Problem(422, "Invalid parameters", f"top_k must be at most {len(explainer.weights.classes)}")
    upload = await read_upload(request, settings.max_upload_bytes)
    return await run_inference(request, _ablate, explainer, settings.max_image_pixels, upload.data,
                               upload.content_type, top_k)
