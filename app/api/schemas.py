"""Response models of the REST API: the contract that static/app.js and API clients rely on."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.json_schema import SkipJsonSchema

from ranlens.model import render

Shape = Annotated[list[int], Field(min_length=2, max_length=2, description="[height, width]")]


class FieldError(BaseModel):
    loc: list[str | int] = Field(examples=[["query", "top_k"]])
    msg: str


class Problem(BaseModel):
    """An error, as ``application/problem+json`` (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI reference naming the kind of problem; about:blank for plain HTTP errors",
                      examples=["about:blank"])
    title: str = Field(examples=["Invalid parameters"])
    status: int = Field(ge=400, le=599, examples=[422])
    detail: str = Field(examples=["top_k must be at most 10, the number of classes; got 11"])
    instance: str = Field(description="the request path this problem is about", examples=["/api/v1/predict"])
    errors: list[FieldError] | None = Field(None, description="each invalid parameter, on 422")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model: str = Field(description="the default model's architecture", examples=["attention92_cifar"])
    weights: str = Field(description="the default model's weights", examples=["attention92_cifar.v8"])
    models: list[str] = Field(description="every loaded model's weights name",
                              examples=[["attention56_cifar.v8", "attention92_cifar.v8"]])


class PredictionOut(BaseModel):
    index: int = Field(ge=0)
    label: str
    probability: float = Field(ge=0, le=1)


class Timing(BaseModel):
    """Milliseconds spent in each step; ``total`` is the whole request as the server saw it."""

    model_config = ConfigDict(extra="allow")

    decode: float
    preprocess: float
    inference: float
    render: float | None = None
    total: float


class ModuleMask(BaseModel):
    """Which attention module a mask belongs to, and its size."""

    module: str = Field(examples=["stage1.module1"])
    stage: int
    shape: Shape = Field(description="mask resolution [height, width]")
    channels: int


class AttentionOut(ModuleMask):
    reduction: str = Field(description="how channels were reduced for min/max/mean, overlay and mask",
                           examples=["mean", "channel 5"])
    min: float
    max: float
    mean: float
    overlay: str | None = Field(None, description="JPEG data URI (quality 90) of the map blended over the picture "
                                                  "the model saw, at the server's display size, with overlays=true")
    mask: list[list[float]] | None = Field(None, description="channel-reduced mask values, with masks=true")


class OODVerdict(BaseModel):
    """How much the picture looks like the training images, by the score the weights were calibrated with
    (``/api/v1/models``' ``ood.method``): knn (Sun et al. 2022) or energy (Liu et al. 2020)."""

    ood_score: float = Field(description="higher = more like the training images. knn with views (ood.views): the "
                                         "smallest over the views of the share of held-out training images that "
                                         "score lower, 0 to 1; knn without views: minus the distance of the "
                                         "unit-length pooled features to the k-th nearest training image's; energy "
                                         "(and weights without a calibration): logsumexp of the logits",
                             examples=[0.412])
    ood_views: dict[str, float] | None = Field(
        description="each view's training percentile (the share of held-out training images that score lower "
                    "in that view), of which ood_score is the smallest: the views below ood_threshold are the ones "
                    "that found the picture unfamiliar. null: the calibration has no views (ood.views)",
        examples=[{"head": 0.412, "stage1.module1:std": 0.318}])
    ood_threshold: float | None = Field(description="scores below it are out of distribution; null when the "
                                                    "weights have no calibration", examples=[0.0262])
    out_of_distribution: bool | None = Field(
        description="true: the picture looks unlike the training images, so the classes are a forced choice; "
                    "null: the weights have no out-of-distribution calibration (run ranlens calibrate-ood)")


class PredictResponse(OODVerdict):
    model: str
    weights: str
    predictions: list[PredictionOut]
    attention: list[AttentionOut]
    timing_ms: Timing


# uint16 rather than uint8: its error, at most 1/131070 of the range, stays far below one step of the
# page's 256-entry colormaps, while uint8's (1/510) can move a value to the next colour
QUANTIZED = "base64 of little-endian uint16 values in C order, 0..65535 mapping linearly onto [lo, hi]"


class QuantizedMap(BaseModel):
    """One (h, w) map of a module, quantised."""

    data: str = Field(description=f"{QUANTIZED}; h * w values")
    lo: float = Field(description="the value uint16 0 stands for: the map's minimum")
    hi: float = Field(description="the value uint16 65535 stands for: the map's maximum")


class ChannelMaps(QuantizedMap):
    """Some channels of a module's soft mask, quantised together: shape (len(index), h, w)."""

    index: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="the channels, in the order of data")
    data: str = Field(description=f"{QUANTIZED}; shape (len(index), h, w)")


class Reductions(BaseModel):
    """Each channel reduction the page offers, as one (h, w) map (reduce_mask in model/render.py)."""

    mean: QuantizedMap = Field(description="the mean of M over channels")
    max: QuantizedMap = Field(description="the max of M over channels")
    added: QuantizedMap = Field(description="each position's mean over channels of M * |T|: what (1 + M) * T adds")


class MaskHistogram(BaseModel):
    """All channels * h * w values of a module's soft mask, counted."""

    counts: list[Annotated[int, Field(ge=0)]] = Field(min_length=50, max_length=50,
                                                      description="values in each of 50 equal bins over [0, 1)")
    mean: float = Field(description="of all the mask's values")
    sd: float = Field(ge=0, description="standard deviation of all the mask's values")


def _left_out(description: str) -> Any:
    """A field the answer leaves out unless asked for: never null, so its schema has no null or default."""
    return Field(None, description=description, json_schema_extra=lambda schema: schema.pop("default", None))


class ExplainAttention(ModuleMask):
    min: float = Field(description="of the channel-mean mask")
    max: float = Field(description="of the channel-mean mask")
    mean: float = Field(description="of the channel-mean mask")
    reductions: Reductions
    varied: ChannelMaps = Field(description="the (at most) 8 channels whose masks vary most over the image, "
                                            "largest variance first")
    histogram: MaskHistogram
    trunk_before: QuantizedMap = Field(description="mean |T| over channels per position, before (1 + M)")
    trunk_after: QuantizedMap = Field(description="mean |(1 + M) T| over channels per position")
    channel: ChannelMaps | SkipJsonSchema[None] = _left_out(
        "with channel=k, channel k alone (index [k]); left out of a module with k or fewer channels")
    data: str | SkipJsonSchema[None] = _left_out(
        f"with all_channels=true, the whole soft mask: {QUANTIZED}; shape (channels, h, w)")
    lo: float | SkipJsonSchema[None] = _left_out("with all_channels=true, the mask value uint16 0 stands for")
    hi: float | SkipJsonSchema[None] = _left_out("with all_channels=true, the mask value uint16 65535 stands for")


class ImageSize(BaseModel):
    width: int
    height: int


class Images(BaseModel):
    uploaded: str = Field(description="JPEG data URI of the upload, at most 640 pixels a side")
    display: str = Field(description="JPEG data URI of the centre crop the masks are drawn over")
    model_input: str = Field(description="PNG data URI of the crop the model saw, at its input size")


class ExplainResponse(OODVerdict):
    model: str
    weights: str
    image: ImageSize = Field(description="the upload's size, orientation applied")
    images: Images
    predictions: list[PredictionOut] = Field(description="every class, most probable first")
    attention: list[ExplainAttention]
    timing_ms: Timing


class ChannelModule(ModuleMask):
    channel: ChannelMaps | SkipJsonSchema[None] = _left_out(
        "channel k alone (index [k]); left out of a module with k or fewer channels")


class ChannelResponse(BaseModel):
    model: str
    weights: str
    channel: int = Field(ge=0, description="the channel asked for")
    attention: list[ChannelModule]
    timing_ms: Timing


class AblationRun(BaseModel):
    masks_off: list[str] = Field(description="the modules whose soft mask was set to zero")
    probabilities: list[float] = Field(description="every class's probability, in class-index order")
    top: list[PredictionOut] = Field(description="the top_k classes, most probable first")


class ModuleAblation(AblationRun):
    module: str


class AblateResponse(OODVerdict):
    """``normal``'s verdict: the calibration holds for the intact network only."""

    model: str
    weights: str
    predicted: str = Field(description="the top class with attention on")
    normal: AblationRun
    all_off: AblationRun
    per_module: list[ModuleAblation]


class ArchitectureModule(BaseModel):
    name: str = Field(examples=["stage1.module1"])
    channels: int
    resolution: Shape
    trunk_units: int
    mask_depth: int = Field(description="max-pools down the soft mask branch")
    mask_levels: list[Shape] = Field(description="resolutions along the soft mask branch, input first")


class ArchitectureStage(BaseModel):
    stage: int
    channels: int
    resolution: Shape
    transition_stride: int
    modules: list[ArchitectureModule]


class Stem(BaseModel):
    kind: str = Field(examples=["cifar"])
    output: list[int] = Field(description="[channels, height, width]")


class Head(BaseModel):
    units: int
    output: list[int] = Field(description="[channels, height, width]")


class Classifier(BaseModel):
    in_features: int
    classes: int


class Architecture(BaseModel):
    name: str
    input: list[int] = Field(description="[channels, height, width]")
    stem: Stem
    stages: list[ArchitectureStage]
    head: Head
    classifier: Classifier


class ModuleInfo(BaseModel):
    module: str
    stage: int
    channels: int
    shape: Shape


class OODCalibration(BaseModel):
    """Where the out-of-distribution line is drawn, chosen on the training split (ranlens calibrate-ood)."""

    method: Literal["energy", "knn"] = Field(description="energy: of the logits (Liu et al. 2020); knn: distance "
                                                         "of the pooled features to training images' (Sun et al. 2022)")
    score: str = Field(description="how the score is computed")
    temperature: float | None = Field(gt=0, description="the energy score's temperature; null for knn")
    threshold: float = Field(description="scores below it are out of distribution")
    tpr_target: float = Field(gt=0, le=1, description="the fraction of training images meant to stay in")
    train_tpr: float = Field(ge=0, le=1, description="the fraction of training images at or above the threshold")
    test_fraction_flagged: float | None = Field(ge=0, le=1, description="the fraction of test images flagged")
    data: str = Field(examples=["CIFAR-10 (JPEG q75 copy)"])
    train_images: int = Field(description="training images the threshold was chosen on (for knn, those outside "
                                          "the bank)")
    test_images: int | None
    k: int | None = Field(default=None, ge=1, description="knn: the score is the distance to the k-th nearest")
    bank: str | None = Field(default=None, description="knn: the file of training features, beside the weights")
    bank_sha256: str | None = Field(default=None, description="knn: the bank file's sha256")
    bank_images: int | None = Field(default=None, description="knn: training images in the bank")
    views: list[str] | None = Field(default=None, examples=[["head", "stage1.module1:std"]],
                                    description="knn: the features compared, each with its own bank: 'head' (the "
                                                "pooled features the classifier reads), '<module>:mean' or "
                                                "'<module>:std' (over positions of the module's output); a picture "
                                                "is flagged when it is unlike the training images in any. null: the "
                                                "head alone, scored by its distance (calibrations made before views)")


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
    ood: OODCalibration | None = Field(description="null: these weights have no out-of-distribution calibration, "
                                                   "so predictions carry no verdict (run ranlens calibrate-ood)")
    traced: bool = Field(description="inference runs through a checked TorchScript trace (made just after the "
                                     "start unless RANLENS_TRACE=false); false: the Python forward, the same answers")


class ModelList(BaseModel):
    default: str = Field(description="the weights name of the model that answers requests naming none",
                         examples=["attention92_cifar.v8"])
    models: list[ModelInfo]


RGB = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
LookupTable = Annotated[list[RGB], Field(min_length=256, max_length=256)]

# one required property per colormap the page can pick, so the schema names them all
Colormaps = create_model(
    "Colormaps",
    __doc__="Each colormap as a 256-entry lookup table of [r, g, b], 0..255.",
    **{name: (LookupTable, ...) for name in render.COLORMAPS},
)


# ---- Open Inference Protocol (KServe v2), as its REST specification names things

class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class InferInput(BaseModel):
    name: Literal["image", "input"] = Field(description="image: encoded pictures (BYTES, shape [N]); "
                                                        "input: preprocessed tensors (FP32, shape [N, 3, H, W])")
    shape: list[Annotated[int, Field(ge=0, le=1_000_000)]] = Field(min_length=1, max_length=4)
    datatype: Literal["BYTES", "FP32"]
    data: list[Any] | None = Field(None, description="JSON data; BYTES elements as base64 strings. Absent "
                                                     "when the tensor follows the JSON header in binary")
    parameters: dict[str, Any] | None = None


class InferOutputRequest(BaseModel):
    name: str = Field(description="logits, probabilities, ood_score, out_of_distribution (calibrated weights), "
                                  "or mask:<module> (e.g. mask:stage2.module1)")
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the answer")
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    # max_length: a model has a dozen outputs; a million entries once made a 171 MB list of errors
    outputs: list[InferOutputRequest] | None = Field(
        None, max_length=64, description="the outputs to return; default logits, probabilities, ood_score and, for "
                                         "calibrated weights, out_of_distribution")

    @field_validator("id")
    @classmethod
    def _id_is_text(cls, value: str | None) -> str | None:
        # JSON's \ud800 escapes decode to a lone surrogate, which the answer that echoes the id could not
        # encode: refused before the model runs, not a 500 after
        try:
            if value is not None:
                value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be Unicode text, without lone surrogates such as \\ud800") from None
        return value


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32", "BOOL"] = Field(description="BOOL for out_of_distribution, FP32 for the others")
    data: list[float] | list[bool] | None = Field(None, description="absent for an output sent in binary")
    parameters: dict[str, Any] | None = Field(
        None, description="ood_score's ood_threshold: scores below it are out of distribution; binary_data_size: "
                          "the bytes of an output sent in binary after the JSON")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
