"""Errors as ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ranlens.app.core.gate import Busy
from ranlens.app.core.http import add_security_headers, is_v2
from ranlens.model.imaging import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answer: ``extra`` goes in the body, ``headers`` on the response."""

    def __init__(self, status: int, title: str, detail: str, headers: Mapping[str, str] | None = None,
                 **extra) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers, self.extra = status, title, detail, headers, extra


def problem_response(request: Request, status: int, title: str, detail: str,
                     headers: Mapping[str, str] | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": request.url.path, **extra}
    if is_v2(request.scope):  # Triton's and KServe's clients read the message from `error`, and fail without it
        body.setdefault("error", detail)
    response = JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
    # a 500 is rendered outside the middleware stack (Starlette's ServerErrorMiddleware), so it would
    # miss the headers every other answer gets there
    add_security_headers(response.headers)
    return response


def _allow_head(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """HEAD is answered wherever GET is (app.core.http.HeadAsGet), so a 405's Allow lists it too."""
    allow = (headers or {}).get("Allow")
    if allow is None:
        return headers
    methods = {m.strip() for m in allow.split(",")}
    if "GET" in methods:
        methods.add("HEAD")
    return {**headers, "Allow": ", ".join(sorted(methods))}


# the validation errors an answer lists: a request of a million bad items is told of the first few
MAX_ERRORS = 20


def invalid_parameters(errors: Sequence[Mapping]) -> Problem:
    """The 422 for a request that failed validation (pydantic's or FastAPI's error list), listing the
    first ``MAX_ERRORS`` errors and saying them in ``detail``."""
    listed = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors[:MAX_ERRORS]]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in listed)
    return Problem(422, "Invalid parameters", detail, errors=listed)


# each kind of unusable image is the client's fault, with its own status
IMAGE_STATUS: dict[type[ImageError], int] = {
    EmptyImageError: 400,
    CorruptImageError: 400,
    UnsupportedImageError: 415,
    ImageTooLargeError: 413,
}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError) -> JSONResponse:
        return problem_response(request, IMAGE_STATUS.get(type(exc), 400), exc.title, exc.detail)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return problem_response(request, 503, "Server busy", exc.detail, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _problem(request, invalid_parameters(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        return problem_response(request, exc.status_code, title, str(exc.detail), headers=_allow_head(exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, 500, "Internal Server Error", "The server failed to handle this request.")
