"""What Schemathesis needs to know about this API beyond its OpenAPI document; schemathesis.toml
loads it, so `schemathesis run URL/openapi.json` from the repository root uses it too.

1. An upload is valid only if it is a real image. OpenAPI can say `format: binary` and the part's
   media types, not "a decodable PNG", so each image media type gets a strategy of real images.
2. reduction=channel needs channel: a dependency between two query parameters that OpenAPI cannot
   state (the server answers 422, documented). Positive cases must not break it.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP",
           "image/bmp": "BMP", "image/tiff": "TIFF"}


def images(fmt: str) -> st.SearchStrategy[bytes]:
    @st.composite
    def encoded(draw) -> bytes:
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        pixels = draw(st.binary(min_size=3 * width * height, max_size=3 * width * height))
        image = Image.frombytes("RGB", (width, height), pixels)
        if draw(st.booleans()):
            image = image.convert(draw(st.sampled_from(["L", "RGBA", "P"])))
            if fmt == "JPEG" and image.mode in ("RGBA", "P"):
                image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return buffer.getvalue()

    return encoded()


for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media_type, images(fmt))


@schemathesis.hook
def filter_query(ctx, query) -> bool:
    return not (query and query.get("reduction") == "channel" and "channel" not in query)


# 3. An Open Inference Protocol request is valid only if its tensors are: shape[0] equal to the number of
#    elements, BYTES elements that are encoded pictures, FP32 tensors of the model's input shape, outputs
#    the model has. A schema cannot tie one field to another, so a body the schema accepts is made into
#    such a request; a body the schema rejects (a negative case) is left for the server to refuse.
INFER_PATHS = {"/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}


def _picture_base64() -> str:
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@schemathesis.hook
def map_body(ctx, body):
    from pydantic import ValidationError

    from ranlens.app.api.schemas import InferRequest

    if getattr(ctx.operation, "path", None) not in INFER_PATHS or not isinstance(body, dict):
        return body
    try:
        InferRequest.model_validate(body)
    except ValidationError:
        return body
    tensor = body["inputs"][0]
    n = min(max(1, tensor["shape"][0]), 4)
    if tensor["name"] == "image":
        tensor.update(datatype="BYTES", shape=[n], data=[_picture_base64()] * n)
    else:
        tensor.update(datatype="FP32", shape=[n, 3, 32, 32], data=[0.0] * (n * 3 * 32 * 32))
    tensor["parameters"] = None  # no binary_data_size: the data is in the JSON
    if body.get("outputs") is not None:
        body["outputs"] = [o for o in body["outputs"] if o.get("name") in ("logits", "probabilities")] or None
    return body
