"""The API docs at /docs: Swagger UI, served without any CDN.

Swagger UI's script and style come from the fastapi-offline package; the code that starts it is
static/js/api-docs.js, so the page needs no inline script under the app's Content-Security-Policy.
URLs are relative, so the page works under a proxy's path prefix as the main page does.

There is no /redoc: ReDoc styles itself through injected <style> elements (styled-components), which
`style-src 'self'` blocks, and even with a nonce it still needs a blob: worker for search and loads
its logo from a CDN.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse

from ranlens.app.core.http import StaticAssets

ASSETS = files("fastapi_offline").joinpath("static")
ASSETS_PATH = "/docs/assets"

router = APIRouter(include_in_schema=False)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ranlens API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" href="docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi="openapi.json"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="static/js/api-docs.js"></script>
</body>
</html>
"""


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(PAGE)


def install_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticAssets(directory=str(ASSETS)), name="docs-assets")
