"""The Open Inference Protocol (KServe v2) REST API beside ranlens' own, so Triton's and KServe's
clients and tooling can call the served models: health, metadata, readiness and inference."""

from __future__ import annotations

import json
import math
from functools import partial
from typing import Annotated

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from ranlens import __version__
from ranlens.app.api.deps import CatalogDep, SettingsDep, run_inference
from ranlens.app.api.openapi import problems
from ranlens.app.api.schemas import (
    InferRequest,
    InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from ranlens.app.core import oip
from ranlens.app.core.config import Settings
from ranlens.app.core.problems import IMAGE_STATUS
from ranlens.app.core.upload import body_within
from ranlens.model.catalog import UnknownModel
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import ImageError, decode_image
from ranlens.model.weights import DEFAULT_WEIGHTS

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

ModelName = Annotated[str, Path(description="a served model, by architecture or weights name",
                                examples=["attention56_cifar", "attention92_cifar.v8"])]

INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON, or JSON followed by binary tensors (the binary tensor data extension: the JSON's "
                       "length in the Inference-Header-Content-Length header, each binary input's size in "
                       "parameters.binary_data_size)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
    }
}


# the example fits the first example of ModelName, so that the two together name a served version
Version = Annotated[str, Path(description="the model's version: the weights name its metadata lists in `versions`",
                              examples=[DEFAULT_WEIGHTS["attention56_cifar"]])]


def _model(catalog, name: str, version: str | None = None) -> Explainer:
    try:
        explainer = catalog.get(name)
    except UnknownModel as exc:
        raise oip.problem(404, "Unknown model", f"{exc}.") from None
    if version is None or version == explainer.weights.name:
        return explainer
    # an architecture's versions are its loaded weights, as its metadata lists them; weights named
    # in the path are their only version
    versions = _versions(catalog, explainer) if name == explainer.name else [explainer.weights.name]
    if version not in versions:
        raise oip.problem(404, "Unknown model version",
                          f"model {name!r} has no version {version!r}; its versions are {', '.join(versions)}.")
    return catalog.get(version)


def _versions(catalog, explainer: Explainer) -> list[str]:
    """The weights of ``explainer``'s architecture that the server holds, the answering ones first."""
    others = [e.weights.name for e in catalog if e.name == explainer.name and e is not explainer]
    return [explainer.weights.name, *others]


@router.get("/health/live", response_model=V2Live, summary="The server is alive")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=V2Ready, responses=problems(503), summary="Every model is loaded")
def ready(request: Request, catalog: CatalogDep) -> dict:
    if request.app.state.load_error:
        raise oip.problem(503, "Model not ready", f"Not every model is loaded: {request.app.state.load_error}")
    return {"ready": True}


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
def server_metadata() -> dict:
    return {"name": "ranlens", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=problems(404, 503),
            summary="A model's inputs and outputs")
def model_metadata(name: ModelName, catalog: CatalogDep) -> dict:
    explainer = _model(catalog, name)
    return _metadata(explainer, _versions(catalog, explainer) if name == explainer.name else None)


@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=problems(404, 503),
            summary="A model version's inputs and outputs")
def version_metadata(name: ModelName, version: Version, catalog: CatalogDep) -> dict:
    return _metadata(_model(catalog, name, version))


def _metadata(explainer: Explainer, versions: list[str] | None = None) -> dict:
    size, classes = explainer.weights.input_size, len(explainer.weights.classes)
    masks = [{"name": f"mask:{m['module']}", "datatype": "FP32", "shape": [-1, m["channels"], *m["shape"]]}
             for m in explainer.modules]
    verdict = [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in _verdict(explainer)]
    return {
        "name": explainer.name, "versions": versions or [explainer.weights.name], "platform": "pytorch_ranlens",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": "input", "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}, *verdict, *masks],
    }


def _verdict(explainer: Explainer) -> list[tuple[str, str]]:
    """The out-of-distribution outputs: the score always, the flag where the weights are calibrated."""
    return [("ood_score", "FP32"), *([("out_of_distribution", "BOOL")] if explainer.ood is not None else [])]


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=problems(404, 503),
            summary="Whether a model is ready")
def model_ready(name: ModelName, catalog: CatalogDep) -> dict:
    return {"name": _model(catalog, name).name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses=problems(404, 503),
            summary="Whether a model version is ready")
def version_ready(name: ModelName, version: Version, catalog: CatalogDep) -> dict:
    return {"name": _model(catalog, name, version).name, "ready": True}


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    too_large = oip.problem(413, "Request too large", f"The request is over the limit of {limit:,} bytes.")
    try:
        return b"".join([chunk async for chunk in body_within(request, limit, too_large, timeout_s)])
    except ClientDisconnect as exc:  # the client's doing, as on the REST routes: no 500, no traceback
        raise oip.problem(400, "Incomplete request", "The client closed the connection mid-request.") from exc


def _input_batch(explainer: Explainer, request: InferRequest, binary: dict[str, bytes], max_pixels: int) -> torch.Tensor:
    """The request's one input as the network's batch: pictures decoded and cropped, or the tensor."""
    tensor = request.inputs[0]
    size = explainer.weights.input_size
    raw = binary.get(tensor.name)
    if tensor.name == "image":
        if tensor.datatype != "BYTES":
            raise oip.problem(400, "Malformed inference request", "input 'image' is BYTES: encoded pictures")
        images = oip.bytes_elements(raw, "image") if raw is not None else oip.json_bytes_elements(tensor.data or [], "image")
        if len(tensor.shape) != 1:
            raise oip.problem(400, "Malformed inference request",
                              f"input 'image' has shape [N], one encoded picture per element; got shape {tensor.shape}")
        if tensor.shape[0] != len(images) or not images:
            raise oip.problem(400, "Malformed inference request",
                              f"input 'image' has shape {tensor.shape} but {len(images)} elements")
        tensors = []
        for index, data in enumerate(images):
            try:
                picture = decode_image(data, max_pixels)
            except ImageError as exc:
                where = f"image[{index}]: " if len(images) > 1 else ""
                raise oip.problem(IMAGE_STATUS.get(type(exc), 400), exc.title, where + exc.detail) from None
            # cropped before the next is decoded: a batch of large pictures holds one at a time, not all
            tensors.append(explainer.prepare(picture)[1])
        x = torch.stack(tensors)
    else:
        if tensor.datatype != "FP32" or len(tensor.shape) != 4 or tensor.shape[1:] != [3, size, size] \
                or tensor.shape[0] < 1:
            raise oip.problem(400, "Malformed inference request",
                              f"input 'input' is FP32 of shape [N, 3, {size}, {size}], got {tensor.datatype} {tensor.shape}")
        x = torch.from_numpy(oip.fp32_tensor(tensor.data, raw, tensor.shape, "input").copy())
    return x


def _outputs(explainer: Explainer, x: torch.Tensor, *, request: InferRequest, wanted: list[str]) -> dict[str, np.ndarray]:
    """The outputs ``wanted``, by name, for the batch ``x``."""
    tensor = request.inputs[0]
    verdict = [name for name, _ in _verdict(explainer)]
    result = explainer.infer(x, masks=any(name.startswith("mask:") for name in wanted),
                             ood=any(name in verdict for name in wanted))
    overflowed = [name for name in ("logits", *wanted) if result[name].dtype != np.bool_
                  and not np.isfinite(result[name]).all()]
    if overflowed:  # finite inputs far outside a normalised image's range overflow inside the network
        raise oip.problem(400, "Malformed inference request",
                          f"input {tensor.name!r}: the values are too large for the network, whose output "
                          f"{overflowed[0]!r} overflows; send images normalised with the model's mean and std")
    return {name: result[name] for name in wanted}


def _wanted(explainer: Explainer, request: InferRequest) -> list[str]:
    """The outputs asked for, checked before any picture is decoded; by default the prediction."""
    verdict = [name for name, _ in _verdict(explainer)]
    wanted = [o.name for o in request.outputs] if request.outputs else ["logits", "probabilities", *verdict]
    available = _values_per_item(explainer)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise oip.problem(400, "Unknown output", f"no output {unknown[0]!r}; this model has {', '.join(available)}")
    twice = [name for name in dict.fromkeys(wanted) if wanted.count(name) > 1]
    if twice:
        raise oip.problem(400, "Malformed inference request", f"output {twice[0]!r} is asked for twice")
    items = request.inputs[0].shape[0]
    per_item = sum(available[name] for name in wanted)
    # one picture always fits: every mask of one 224-pixel Attention-92 alone is over the cap, and
    # /api/v1/explain gives them all too; 64 pictures' every mask would be a 70 MB answer
    if items > 1 and items * per_item > MAX_OUTPUT_VALUES:
        fits = max(1, MAX_OUTPUT_VALUES // per_item)
        raise oip.problem(413, "Answer too large",
                          f"the outputs asked for hold {per_item:,} values a picture, and one answer holds at most "
                          f"{MAX_OUTPUT_VALUES:,}: send at most {fits} picture{'s' if fits > 1 else ''} a request, "
                          f"or ask for fewer masks")
    return wanted


def _values_per_item(explainer: Explainer) -> dict[str, int]:
    """Each output's number of values for one picture, in the order the metadata lists them."""
    classes = len(explainer.weights.classes)
    return {"logits": classes, "probabilities": classes, **{name: 1 for name, _ in _verdict(explainer)},
            **{f"mask:{m['module']}": m["channels"] * math.prod(m["shape"]) for m in explainer.modules}}


def _binary_flags(request: InferRequest, wanted: list[str]) -> list[bool]:
    """Which outputs go after the JSON in binary (the binary tensor data extension): an output's own
    ``binary_data``, else the request's ``binary_data_output``, else JSON."""
    def flag(parameters: dict | None, key: str, default: bool) -> bool:
        value = (parameters or {}).get(key, default)
        if not isinstance(value, bool):
            raise oip.problem(400, "Malformed inference request", f"parameter {key} is true or false, got {value!r}")
        return value

    everything = flag(request.parameters, "binary_data_output", False)
    own = {o.name: o.parameters for o in request.outputs or []}
    return [flag(own.get(name), "binary_data", everything) for name in wanted]


def _answer(explainer: Explainer, request: InferRequest, values: dict[str, np.ndarray],
            binary_flags: list[bool]) -> dict | Response:
    """The JSON answer; with any output asked for in binary, its bytes follow the JSON header, whose
    length is in Inference-Header-Content-Length, as Triton answers."""
    outputs, blobs = [], []
    for (name, array), binary in zip(values.items(), binary_flags, strict=True):
        datatype = "BOOL" if array.dtype == np.bool_ else "FP32"
        output: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:  # FP32 little-endian, BOOL a byte each
            blobs.append(array.astype("<f4" if datatype == "FP32" else np.uint8).tobytes())
            output["parameters"] = {"binary_data_size": len(blobs[-1])}
        elif datatype == "BOOL":
            output["data"] = array.ravel().tolist()
        else:
            output["data"] = np.round(array.astype(np.float64), 7).ravel().tolist()
        if name == "ood_score" and explainer.ood is not None:  # below the threshold: out_of_distribution
            output["parameters"] = {**output.get("parameters", {}), "ood_threshold": explainer.ood.threshold}
        outputs.append(output)
    answer = {"model_name": explainer.name, "model_version": explainer.weights.name, "id": request.id,
              "outputs": outputs}
    if not blobs:
        return answer
    if answer["id"] is None:
        del answer["id"]
    header = json.dumps(answer, separators=(",", ":")).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


MAX_BATCH = 64  # pictures (or tensors) in one inference request
MAX_OUTPUT_VALUES = 2**21  # numbers in one answer (some 20 MB of JSON): 18 pictures' every Attention-56 mask
BINARY_ANSWER = {200: {"description": "The outputs, as JSON, or (with binary_data_output or an output's binary_data) "
                                      "a JSON header of Inference-Header-Content-Length bytes followed by the "
                                      "binary outputs in order, each of its parameters.binary_data_size bytes",
                       "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/models/{name}/infer", response_model=InferResponse, response_model_exclude_none=True,
             openapi_extra=INFER_BODY, responses={**BINARY_ANSWER, **problems(400, 404, 408, 413, 415, 422, 503)},
             summary="Run a model: encoded pictures (BYTES) or preprocessed tensors (FP32) in; logits, "
                     "probabilities and, on request, soft masks out")
async def infer(name: ModelName, request: Request, catalog: CatalogDep, settings: SettingsDep) -> dict | Response:
    return await _infer(_model(catalog, name), request, settings)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferResponse, response_model_exclude_none=True,
             openapi_extra=INFER_BODY, responses={**BINARY_ANSWER, **problems(400, 404, 408, 413, 415, 422, 503)},
             summary="Run a model version, as /v2/models/{name}/infer does")
async def version_infer(name: ModelName, version: Version, request: Request, catalog: CatalogDep,
                        settings: SettingsDep) -> dict | Response:
    return await _infer(_model(catalog, name, version), request, settings)


async def _infer(explainer: Explainer, request: Request, settings: Settings) -> dict | Response:
    body = await _read_body(request, settings.max_upload_bytes + 64 * 1024, settings.body_timeout_s)
    # parsed and validated off the event loop: megabytes of JSON take a while, and every route waits on the loop
    parsed, binary = await anyio.to_thread.run_sync(oip.parse_request, body,
                                                    request.headers.get("inference-header-content-length"))
    if parsed.inputs[0].shape[0] > MAX_BATCH:
        raise oip.problem(413, "Request too large", f"at most {MAX_BATCH} pictures per request")
    wanted = _wanted(explainer, parsed)
    flags = _binary_flags(parsed, wanted)  # a malformed flag is refused before the model runs
    # the answer is built off the event loop and off the torch thread: it may hold megabytes of masks
    return await run_inference(request, partial(_outputs, request=parsed, wanted=wanted), explainer, batched=False,
                               prepare=partial(_input_batch, explainer, parsed, binary, settings.max_image_pixels),
                               finish=lambda values: _answer(explainer, parsed, values, flags))
