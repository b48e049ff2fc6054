"""POST /v1/moderations: OpenAI's moderation endpoint, answered by lmkit's moderation
(rules + trained classifier, data/safety/moderation.py) with the server's configuration
(`lmkit serve --moderation-config`), or the defaults when the server moderates nothing."""

import uuid
from typing import Any, Optional, Union

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from lmkit.serve.api_errors import APIError
from lmkit.serve.server_state import ServerState, server_state

MAX_INPUTS = 256
MODEL = "lmkit-moderation"

router = APIRouter()


class ModerationRequest(BaseModel):
    input: Union[str, list[str]]
    model: Optional[str] = None


def _moderator(state: ServerState):
    if state.moderation is not None:
        return state.moderation.moderator
    if getattr(state, "_default_moderator", None) is None:
        from lmkit.data.safety.moderation import Moderator

        state._default_moderator = Moderator()
    return state._default_moderator


@router.post("/v1/moderations")
async def moderations(req: ModerationRequest, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts or len(texts) > MAX_INPUTS:
        raise APIError(400, f"input must hold between 1 and {MAX_INPUTS} texts", param="input")
    mod = _moderator(state)
    results = []
    for text in texts:
        r = mod.check(text)
        results.append({"flagged": r.flagged, "categories": r.categories, "category_scores": r.category_scores})
    return {"id": "modr-" + uuid.uuid4().hex, "model": MODEL, "results": results}
