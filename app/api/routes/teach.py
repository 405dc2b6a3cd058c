"""Teaching support: the architecture read off the model, and the "attention off" ablation."""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Annotated

from fastapi import APIRouter, Path, Request

from ranlens.app.api.deps import ExplainerDep, ServedModel, SettingsDep, TopK, run_inference
from ranlens.app.api.openapi import UPLOAD_BODY, UPLOAD_PROBLEMS, problems
from ranlens.app.api.schemas import AblateResponse, Architecture
from ranlens.app.core import payloads
from ranlens.app.core.problems import Problem
from ranlens.app.core.upload import read_upload
from ranlens.model import ARCHITECTURES, get_model, list_models
from ranlens.model.architecture import architecture
from ranlens.model.imaging import decode_image

router = APIRouter(prefix="/api/v1", tags=["teaching"])


@lru_cache
def _architecture_of(name: str) -> dict:
    if ARCHITECTURES[name].stem == "cifar":
        return architecture(get_model(name, num_classes=10))
    return architecture(get_model(name))  # the registry's default head: ImageNet's 1,000 classes


@router.get("/architectures/{arch}", response_model=Architecture, responses=problems(404),
            summary="Any registered layout, described from a freshly built model")
async def describe_architecture(
    request: Request,
    arch: Annotated[str, Path(description="a registered architecture", examples=sorted(ARCHITECTURES))],
) -> dict:
    if arch not in ARCHITECTURES:
        raise Problem(404, "Unknown architecture", f"{arch!r} is not one of {list_models()}")
    return await request.app.state.torch.acall(_architecture_of, arch)


@router.get("/models/{name}/architecture", response_model=Architecture, responses=problems(404, 503),
            summary="The served model's layout: stem, stages, modules, head")
async def model_architecture(request: Request, explainer: ServedModel) -> dict:
    return await request.app.state.torch.acall(architecture, explainer.model, explainer.weights.input_size)


@router.post(
    "/ablate", response_model=AblateResponse, openapi_extra=UPLOAD_BODY, responses=UPLOAD_PROBLEMS,
    summary="Predictions with attention on, all masks zeroed, and one module's mask zeroed at a time",
    description="Setting a module's soft mask M to zero makes its output (1 + 0) * T = T: the trunk alone. "
                "`normal`, `all_off` and each `per_module` entry carry all class probabilities and the top_k.",
)
async def ablate(request: Request, explainer: ExplainerDep, settings: SettingsDep, top_k: TopK) -> dict:
    upload = await read_upload(request, settings.max_upload_bytes, settings.body_timeout_s)
    return await run_inference(request, partial(payloads.ablate, top_k=top_k), explainer, upload.data,
                               settings.max_image_pixels, upload.content_type, batched=False, prepare=decode_image)
