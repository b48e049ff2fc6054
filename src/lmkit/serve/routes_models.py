"""GET /v1/models and /v1/models/{name}: the one model this server serves."""

from fastapi import APIRouter, Depends

from lmkit.serve.openai_format import check_model
from lmkit.serve.server_state import ServerState, server_state

router = APIRouter()


def model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "lmkit",
            "max_model_len": state.context}


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(server_state)):
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models/{name}")
async def get_model(name: str, state: ServerState = Depends(server_state)):
    check_model(name, state.model_name)
    return model_card(state)
