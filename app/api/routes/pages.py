from __future__ import annotations

import json
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ranlens.model import render

templates = Jinja2Templates(directory=str(files("ranlens.templates")))
EXAMPLES = json.loads(files("ranlens.static").joinpath("examples", "examples.json").read_text())

# The option values are the ones the API accepts (render.COLORMAPS, render.REDUCTIONS), so the page can
# never offer a colormap the server has no lookup table for; only the wording lives here.
COLORMAP_NOTES = {"jet": "not perceptually uniform"}
REDUCTION_LABELS = {"mean": "mean over channels", "max": "max over channels", "channel": "one channel",
                    "added": "what the mask adds (mean of M·|T|)"}

# The page opens on what the mask adds (mean of M * |T|), not on the channel mean of M: in the mean
# the object usually comes out darker than its background, which reads as "attention avoids the
# cat", while M * |T| shows where (1 + M) * T changes the features (README, docs/masks*.png).
# The API keeps "mean" as its default: clients rely on it.
PAGE_REDUCTION = "added"

router = APIRouter(include_in_schema=False)


def _options(values: tuple[str, ...], label, selected: str | None = None) -> list[dict]:
    selected = selected or values[0]
    return [{"value": v, "label": label(v), "selected": v == selected} for v in values]


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    catalog = getattr(request.app.state, "catalog", None)
    return templates.TemplateResponse(request, "index.html", {
        "examples": EXAMPLES,
        "model": catalog.default.metadata() if catalog else None,
        "models": [e.metadata() for e in catalog] if catalog else [],
        "load_error": getattr(request.app.state, "load_error", None),
        "colormaps": _options(render.COLORMAPS,
                              lambda v: f"{v} ({COLORMAP_NOTES[v]})" if v in COLORMAP_NOTES else v),
        "reductions": _options(render.REDUCTIONS, lambda v: REDUCTION_LABELS.get(v, v), PAGE_REDUCTION),
    })
