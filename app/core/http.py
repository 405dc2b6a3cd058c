"""Transport rules every answer follows: security headers, HEAD wherever GET is, gzip for large bodies."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Only the app's own origin, and no inline script or style: the page and the API docs load their code
# from files. data: and blob: images are the page's overlays, thumbnails and downloads.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# JSON answers of a few hundred bytes gain nothing from compression; /explain's masks and /colormaps do
GZIP_MINIMUM_BYTES = 1024


def add_security_headers(headers: MutableHeaders) -> None:
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)


class HTTPMiddleware:
    """ASGI middleware that acts on HTTP requests (``http``) and passes anything else (lifespan) through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class SecurityHeaders(HTTPMiddleware):
    """Adds SECURITY_HEADERS to every HTTP answer that does not set its own."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGet(HTTPMiddleware):
    """Answers HEAD as GET without the body, for every GET route.

    FastAPI's routes (unlike Starlette's) do not add HEAD to GET, so HEAD would be 405 everywhere.
    Headers, Content-Length included, are those GET would send (RFC 9110, 9.3.2).
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, send_without_body)
        finally:
            if "route" in inner:  # the router writes the matched route into the copy; metrics read the original
                scope["route"] = inner["route"]


log = logging.getLogger("ranlens")


def is_v2(scope: Scope) -> bool:
    """A path of the Open Inference Protocol's routes (``/v2``, ``/v2/...``), below any root path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path == "/v2" or path.startswith("/v2/")


class AnswerCancelled(HTTPMiddleware):
    """Answers a request the server cancelled with a 503 problem, logged in one line.

    uvicorn cancels the requests still open when ``RANLENS_SHUTDOWN_TIMEOUT_S`` runs out at shutdown
    (a client stalled mid-upload, say). Left to it, the cancellation comes out as "Exception in ASGI
    application", a whole traceback and a 500, for what is no fault of the app's or the client's.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # the task ends here, answered; uncancel so that what awaits it next is not cancelled too
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            # %r: the path is the client's, percent-decoded, and a %0A in it would start a forged log line
            log.warning("%s %r cancelled unfinished (the server is stopping)", scope["method"], scope["path"])
            if started:
                return  # the status is already sent; the server closes the connection
            detail = "the server stopped before this request finished; send it again"
            problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": detail,
                       "instance": scope["path"], **({"error": detail} if is_v2(scope) else {})}
            body = json.dumps(problem).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})


def install_transport(app) -> None:
    """Outermost first: HEAD becomes GET before anything else sees it; security headers go on every
    answer, compressed or not; a request cancelled at shutdown is answered inside them all."""
    app.add_middleware(AnswerCancelled)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)


class StaticAssets(StaticFiles):
    """StaticFiles whose 405 says what is allowed (RFC 9110 requires Allow on a 405)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)
