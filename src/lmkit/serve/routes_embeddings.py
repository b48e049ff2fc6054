"""POST /v1/embeddings: sentence embeddings of texts or token ids, as floats or base64; with a CLIP
model also image embeddings (data URLs) in the texts' space."""

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from lmkit.errors import ConfigError, TokenizerError
from lmkit.serve import schemas
from lmkit.serve.api_errors import APIError
from lmkit.serve.openai_format import check_model, embedding_payload
from lmkit.serve.server_state import ServerState, server_state

MAX_INPUTS = 2048

router = APIRouter()


def embedder_of(state: ServerState):
    """The server's embedder; the engine's model, pooled, unless one was given."""
    if state.embedder is None:
        from lmkit.serve.embeddings import ModelEmbedder
        from lmkit.serve.tensor_parallel_engine import refuse_outside_engine

        refuse_outside_engine(state.engine, "/v1/embeddings of a generation model")

        try:
            state.embedder = ModelEmbedder(state.model, state.tokenizer)
        except ConfigError as exc:
            raise APIError(400, str(exc)) from None
    return state.embedder


@router.post("/v1/embeddings")
async def embeddings(req: schemas.EmbeddingRequest, state: ServerState = Depends(server_state)):
    check_model(req.model, state.model_name)
    emb = embedder_of(state)
    if req.encoding_format not in ("float", "base64"):
        raise APIError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    items = req.mixed_items() if getattr(emb, "accepts_images", False) else None
    try:
        inputs = items if items is not None else req.token_lists(emb)
    except (ConfigError, TokenizerError) as exc:
        raise APIError(400, str(exc), param="input") from None
    if not inputs or len(inputs) > MAX_INPUTS:
        raise APIError(400, f"input must hold between 1 and {MAX_INPUTS} items", param="input")
    try:
        if items is not None:  # a CLIP model: texts and images into one space
            vecs, n_tok = await run_in_threadpool(emb.embed_inputs, items)
        else:
            vecs = await run_in_threadpool(emb.embed, inputs)
            n_tok = sum(len(x) for x in inputs)
    except (ConfigError, TokenizerError) as exc:
        raise APIError(400, str(exc), param="input") from None
    if req.dimensions is not None:
        if not 1 <= req.dimensions <= vecs.shape[1]:
            raise APIError(400, f"dimensions must be in [1, {vecs.shape[1]}]", param="dimensions")
        import torch.nn.functional as F

        vecs = F.normalize(vecs[:, : req.dimensions], dim=-1)
    data = [{"object": "embedding", "index": i, "embedding": embedding_payload(v, req.encoding_format)}
            for i, v in enumerate(vecs)]
    state.metrics.add_tokens(n_tok, 0)
    return {"object": "list", "data": data, "model": state.model_name,
            "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}
