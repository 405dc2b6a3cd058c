from __future__ import annotations

import json
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

templates = Jinja2Templates(directory=str(files("ranlens.templates")))
EXAMPLES = json.loads(files("ranlens.static").joinpath("examples", "examples.json").read_text())

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    explainer = getattr(request.app.state, "explainer", None)
    return templates.TemplateResponse(request, "index.html", {
        "examples": EXAMPLES,
        "model": explainer.metadata() if explainer else None,
        "load_error": getattr(request.app.state, "load_error", None),
    })
