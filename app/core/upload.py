"""Reads one multipart file field into memory, enforcing the byte limit while the body streams in.

Starlette's form parser spools files over 1 MiB to disk and learns the size only at the end;
uploads here must never touch the disk and an oversized body must be cut off early.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .problems import Problem


async def body_within(request: Request, limit: int, too_large: Problem, timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks as they stream in; ``too_large`` is raised as soon as the declared length or
    the bytes received pass ``limit``, so an oversized body is never read whole, and a 408 once the
    body has taken ``timeout_s`` (a client that sends a byte now and then would hold its connection
    and what it sent for ever)."""
    declared = request.headers.get("content-length")
    # a length of thousands of digits is too large, and more than int() will read (ValueError)
    if declared and declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise too_large
    received = 0
    deadline = time.monotonic() + timeout_s
    chunks = request.stream().__aiter__()
    while True:
        try:
            # a scope around each wait, none across the yield: a cancel scope must not span one
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            # closed after the answer: kept open, uvicorn would drop what still comes and restart its
            # keep-alive timer on every byte, so the trickling client would hold it all the same (an
            # answer given early to a whole body keeps its connection: closing on unread bytes resets
            # it, and the client can lose the answer)
            raise Problem(408, "Request timeout", f"The request body did not arrive within {timeout_s:g} s; "
                                                  f"{received:,} bytes came.", headers={"Connection": "close"}) from None
        received += len(chunk)
        if received > limit:
            raise too_large
        yield chunk


MAX_PARTS = 16  # parts of one multipart upload: one is asked for


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def read_upload(request: Request, max_bytes: int, timeout_s: float, field: str = "file") -> Upload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    params = {name.lower(): value for name, value in params.items()}  # MIME parameter names ignore case
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "Unsupported media type",
                      f"Send the image as multipart/form-data with a field named {field!r}.")
    too_large = Problem(413, "Upload too large", f"The upload is over the limit of {max_bytes:,} bytes.")
    # the body also carries the multipart framing, so allow a little over the file limit
    body = body_within(request, max_bytes + 64 * 1024, too_large, timeout_s)

    parts: list[dict] = []
    current: dict = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:  # a million empty parts fit 10 MiB: each one kept cost memory and time
            raise Problem(400, "Malformed multipart body", f"more than {MAX_PARTS} parts; send the image as "
                                                           f"one part named {field!r}")
        current.clear()
        current.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        current["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if len(current["data"]) + (end - start) > max_bytes:
            raise too_large
        current["data"].extend(data[start:end])

    def on_part_end() -> None:
        parts.append(dict(current))

    ended: list[bool] = []

    def on_end() -> None:
        ended.append(True)

    try:
        # inside the try: the parser refuses some boundaries (over 256 bytes) as it is made
        parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
        })
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except ClientDisconnect as exc:
        raise Problem(400, "Incomplete upload", "The client closed the connection mid-upload.") from exc
    except Problem:
        raise
    except Exception as exc:  # python-multipart raises several error types on malformed bodies
        raise Problem(400, "Malformed multipart body", str(exc) or type(exc).__name__) from exc

    if not ended:  # python-multipart's finalize accepts a body cut off before its closing boundary
        raise Problem(400, "Incomplete upload",
                      "The multipart body ends before its closing boundary: the upload was cut off.")
    named = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name", b"").decode("utf-8", "replace") == field:
            named.append((part, disposition))
    if not named:
        raise Problem(422, "Missing file", f"The multipart body has no field named {field!r}.")
    if len(named) > 1:  # answering for one of them would look like an answer for all
        raise Problem(422, "Several files", f"The multipart body has {len(named)} fields named {field!r}; "
                                            "send one image per request.")
    part, disposition = named[0]
    part_type, _ = parse_options_header(part["headers"].get(b"content-type", b""))
    return Upload(
        filename=disposition.get(b"filename", b"").decode("utf-8", "replace"),
        content_type=part_type.decode("latin-1"),
        data=bytes(part["data"]),
    )
