"""GET /: the web chat page (static HTML with the model's name filled in)."""

import html
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from lmkit.serve.api_errors import APIError
from lmkit.serve.server_state import ServerState, server_state

WEB_DIR = Path(__file__).parent / "web"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(state: ServerState = Depends(server_state)):
    page = WEB_DIR / "index.html"
    if not page.is_file():
        raise APIError(404, f"the web page {page} is not installed (package data missing); the API at /v1 "
                            "works without it", "not_found_error")
    text = page.read_text(encoding="utf-8").replace("{{MODEL_NAME}}", html.escape(state.model_name))
    return HTMLResponse(text)
