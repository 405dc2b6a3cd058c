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
