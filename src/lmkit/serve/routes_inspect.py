"""POST /v1/inspect/attention: the served model's attention maps for a prompt, as JSON, for
the web page's attention panel (lmkit/inspect/attention_maps.py computes them).

Body: {"prompt": str, "layer": int | null}. Reply: tokens, layers, heads, the chosen layer's
per-head maps (default: the last layer), their head average, and the attention rollout.
Prompts are capped at MAX_TOKENS: the reply grows with the square of the length.
"""

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from lmkit.serve.api_errors import APIError
from lmkit.serve.server_state import ServerState, server_state

MAX_TOKENS = 128

router = APIRouter()


class AttentionRequest(BaseModel):
    prompt: str
    layer: int | None = None


def attention_report(model, tokenizer, prompt: str, layer: int | None) -> dict:
    import torch

    from lmkit.inspect.attention_maps import attention_maps
    from lmkit.inspect.rollout import attention_rollout

    ids = tokenizer.encode(prompt)
    if not ids:
        raise APIError(400, "the prompt encodes to no tokens", param="prompt")
    if len(ids) > min(MAX_TOKENS, model.config.max_seq_len):
        raise APIError(400, f"the prompt is {len(ids)} tokens; at most {min(MAX_TOKENS, model.config.max_seq_len)}",
                       param="prompt")
    maps = attention_maps(model, torch.tensor([ids]))
    chosen = len(maps) - 1 if layer is None else layer
    if not 0 <= chosen < len(maps):
        raise APIError(400, f"layer {layer} is out of range: the model has {len(maps)} layers", param="layer")
    heads = maps[chosen][0]
    rnd = lambda t: [[round(float(x), 5) for x in row] for row in t]  # noqa: E731
    tokens = [tokenizer.decode([i]) or tokenizer.id_to_token(i) or str(i) for i in ids]  # text, not byte marks
    return {"tokens": tokens, "layers": len(maps), "heads": heads.shape[0], "layer": chosen,
            "attention": [rnd(h) for h in heads], "mean": rnd(heads.mean(0)),
            "rollout": rnd(attention_rollout(maps)[0])}


@router.post("/v1/inspect/attention")
async def inspect_attention(req: AttentionRequest, state: ServerState = Depends(server_state)):
    from lmkit.serve.tensor_parallel_engine import refuse_outside_engine

    refuse_outside_engine(state.engine, "/v1/inspect/attention")
    return await run_in_threadpool(attention_report, state.model, state.tokenizer, req.prompt, req.layer)
