"""The Open Inference Protocol's (KServe v2) request bodies: JSON, or JSON followed by binary tensors.

Triton's and KServe's clients send tensors after the JSON header when asked (the "binary tensor data"
extension): the header's length is in ``Inference-Header-Content-Length`` and each input with binary
data says its byte count in ``parameters.binary_data_size``. BYTES tensors are sequences of elements,
each a 4-byte little-endian length and that many bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np
from pydantic import ValidationError

from ranlens.app.api.schemas import InferRequest
from ranlens.app.core.problems import Problem, invalid_parameters


def problem(status: int, title: str, detail: str) -> Problem:
    """A problem+json answer; under /v2 the handler adds ``error``, where Triton's and KServe's
    clients look for the message."""
    return Problem(status, title, detail)


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, bytes]]:
    """The validated JSON header and each binary input's raw bytes, by input name."""
    if header_length is not None:
        # isascii: str.isdigit is also true of digits int() cannot read, such as '²' (a latin-1 header byte)
        # len: a length of thousands of digits fits no body, and is more than int() will read
        if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 18 \
                or int(header_length) > len(body):
            raise problem(400, "Malformed inference request",
                          f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
        header, rest = body[: int(header_length)], body[int(header_length):]
    else:
        header, rest = body, b""
    try:
        request = InferRequest.model_validate(json.loads(header))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        if isinstance(exc, ValidationError):
            raise invalid_parameters(exc.errors()) from None
        raise problem(400, "Malformed inference request", f"the request is not JSON: {exc}") from None
    binary: dict[str, bytes] = {}
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(rest):
            raise problem(400, "Malformed inference request",
                          f"input {tensor.name!r}: binary_data_size {size!r} runs past the body")
        binary[tensor.name] = rest[offset: offset + size]
        offset += size
    if offset != len(rest):
        raise problem(400, "Malformed inference request", f"{len(rest) - offset} bytes after the last binary input")
    return request, binary


def bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """The elements of a binary BYTES tensor."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise problem(400, "Malformed inference request", f"input {name!r}: a BYTES element's length is cut off")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise problem(400, "Malformed inference request", f"input {name!r}: a BYTES element runs past its data")
        out.append(raw[offset: offset + length])
        offset += length
    return out


def json_bytes_elements(data: list, name: str) -> list[bytes]:
    """BYTES in a JSON body: each element a base64 string (an encoded image is no UTF-8 text)."""
    out = []
    for item in _flatten(data):
        if not isinstance(item, str):
            raise problem(400, "Malformed inference request", f"input {name!r}: BYTES elements must be base64 strings")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise problem(400, "Malformed inference request", f"input {name!r}: an element is not base64") from None
    return out


def fp32_tensor(data: list | None, raw: bytes | None, shape: list[int], name: str) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if raw is not None:
        if len(raw) != 4 * count:
            raise problem(400, "Malformed inference request",
                          f"input {name!r}: {len(raw)} bytes of binary data for shape {shape} (FP32 needs {4 * count})")
        array = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        values = list(_flatten(data or []))
        if len(values) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise problem(400, "Malformed inference request",
                          f"input {name!r}: shape {shape} needs {count} numbers, got {len(values)} values")
        try:
            array = np.asarray(values, dtype=np.float32).reshape(shape)
        except OverflowError:  # a JSON integer beyond any float, such as 10**400
            raise problem(400, "Malformed inference request", f"input {name!r}: values must be finite") from None
    # NaN or infinity, in JSON (1e39 overflows float32) or in binary alike: the outputs would be NaN,
    # which JSON cannot carry as the numbers InferOutput promises
    if not np.isfinite(array).all():
        raise problem(400, "Malformed inference request", f"input {name!r}: values must be finite")
    return array


def _flatten(data):
    """The leaves of nested lists, in order; iterative, since a body may nest as deep as JSON allows."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()
