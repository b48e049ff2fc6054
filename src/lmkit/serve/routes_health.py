"""GET /health (liveness and queue) and GET /metrics (Prometheus text), for operators."""

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from lmkit.serve.server_state import ServerState, server_state

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(server_state)):
    engine = state.engine
    if engine is None:  # an embeddings-only server has no generation queue
        return {"status": "ok", "model": state.model_name, "running": 0, "waiting": 0}
    return {"status": "ok", "model": state.model_name, "running": engine.running, "waiting": engine.waiting}


@router.get("/metrics", include_in_schema=False)
async def metrics(state: ServerState = Depends(server_state)):
    return PlainTextResponse(state.metrics.render(state.engine), media_type="text/plain; version=0.0.4")
