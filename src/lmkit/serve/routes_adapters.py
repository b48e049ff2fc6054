"""LoRA adapters at runtime: GET/POST /v1/adapters, DELETE /v1/adapters/{name}.

    POST   /v1/adapters          {"name": "sql", "path": "/srv/adapters/sql"}   load (a folder on the server)
    DELETE /v1/adapters/{name}                                                  unload (409 while in use)
    GET    /v1/adapters                                                         the loaded ones

vLLM's field names (lora_name, lora_path) are accepted too. The server must have been started
with --lora or --enable-lora (the layers then decode through model.forward; see
serve/lora_adapters.py). Loading reads the folder in a worker thread: requests keep running.
"""

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from lmkit.errors import CheckpointError, ConfigError
from lmkit.serve.api_errors import APIError
from lmkit.serve.server_state import ServerState, server_state

router = APIRouter()


def registry_of(state: ServerState):
    lora = getattr(state.engine, "lora", None)
    if lora is None:
        raise APIError(400, "this server serves no LoRA adapters: start it with --lora NAME=PATH or --enable-lora")
    return lora


def adapter_card(state: ServerState, name: str) -> dict:
    lora = registry_of(state)
    return {"id": name, "object": "adapter", "parent": state.model_name, "path": lora.path(name),
            "in_use": lora.in_use(name)}


@router.get("/v1/adapters")
async def list_adapters(state: ServerState = Depends(server_state)):
    lora = registry_of(state)
    return {"object": "list", "data": [adapter_card(state, n) for n in lora.names]}


@router.post("/v1/adapters")
async def load_adapter(body: dict, state: ServerState = Depends(server_state)):
    lora = registry_of(state)
    body = {("name" if k == "lora_name" else "path" if k == "lora_path" else k): v for k, v in body.items()}
    unknown = sorted(set(body) - {"name", "path"})
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}: give name and path", param=unknown[0])
    name, path = body.get("name"), body.get("path")
    if not isinstance(name, str) or not name:
        raise APIError(400, "name must be a non-empty string (the adapter's name in requests)", param="name")
    if not isinstance(path, str) or not path:
        raise APIError(400, "path must be the adapter folder on the server (a string)", param="path")
    if name in lora:
        raise APIError(409, f"an adapter named {name!r} is already loaded; DELETE /v1/adapters/{name} first",
                       param="name", code="adapter_exists")
    try:
        await run_in_threadpool(lora.load, name, path)
    except ConfigError as exc:
        if name in lora:  # a concurrent POST loaded the same name first
            raise APIError(409, str(exc), param="name", code="adapter_exists") from None
        raise APIError(400, str(exc), param="name") from None
    except CheckpointError as exc:
        raise APIError(400, str(exc), param="path", code="invalid_adapter") from None
    return {**adapter_card(state, name), "loaded": True}


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, state: ServerState = Depends(server_state)):
    registry_of(state).remove(name)
    return {"id": name, "object": "adapter", "deleted": True}
