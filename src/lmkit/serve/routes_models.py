"""GET /v1/models and /v1/models/{name}: the model this server serves, and its LoRA adapters."""

from fastapi import APIRouter, Depends

from lmkit.serve.lora_adapters import adapter_cards
from lmkit.serve.openai_format import check_model
from lmkit.serve.server_state import ServerState, server_state

router = APIRouter()


def model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "lmkit",
            "max_model_len": state.context}


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(server_state)):
    base = model_card(state)
    return {"object": "list", "data": [base] + adapter_cards(getattr(state.engine, "lora", None), base)}


@router.get("/v1/models/{name}")
async def get_model(name: str, state: ServerState = Depends(server_state)):
    for card in adapter_cards(getattr(state.engine, "lora", None), model_card(state)):
        if name == card["id"]:
            return card
    check_model(name, state.model_name)
    return model_card(state)
