"""Chat requests with images (OpenAI `image_url` content parts) for a served vision-language model.

When `lmkit serve` runs a LLaVA folder, the batching engine runs its decoder for text-only
requests as for any model, and a request whose messages carry image_url parts comes here:

    data URL (base64 PNG/JPEG) -> Pillow -> pixels -> vision tower + projector -> image embeddings
    messages -> prompt ids with n_image_tokens `<image>` ids per image (vision/vlm_chat.py)
    -> `VisionLanguageModel.generate` (lmkit.infer.generate, one request at a time, in a worker thread)

This path is deliberately simple: image requests are not batched with each other or with the
engine's rows (the embeddings enter through a thread-local hook on the decoder's token embedding,
see vision/vlm.py), one runs at a time, and they are answered whole (no streaming, n = 1, no
tools). Only data URLs are read: an http(s) URL is a 400, since the server never goes to the network.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from lmkit.errors import ConfigError, TokenizerError
from lmkit.serve import schemas
from lmkit.serve.api_errors import APIError
from lmkit.serve.openai_format import chat_max_tokens, generation_config, stop_list, token_budget, usage

_ONE_AT_A_TIME = threading.Lock()


def _refuse(req: schemas.ChatCompletionRequest) -> None:
    if req.stream:
        raise APIError(400, "streaming is not available for requests with images; send stream: false", param="stream")
    if req.n != 1:
        raise APIError(400, "requests with images take n = 1", param="n")
    if req.tools:
        raise APIError(400, "tools cannot be combined with images on this server", param="tools")
    if req.logprobs:
        raise APIError(400, "logprobs are not available for requests with images", param="logprobs")


def prepare_image_chat(req: schemas.ChatCompletionRequest, state) -> tuple[list[int], Any, list[int]]:
    """-> (prompt ids, pixels [n_images, 3, H, W], end-of-turn + EOS ids); 400 for anything invalid."""
    from lmkit.infer.stop import model_eos_ids
    from lmkit.vision.vlm_chat import decode_data_url, encode_vlm_chat, images_to_pixels

    vlm = state.vision_model
    if vlm is None:
        raise APIError(400, f"the model {state.model_name!r} does not take images (image_url content parts); "
                            "serve a vision-language (LLaVA) folder for that", param="messages")
    _refuse(req)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        ids, _, urls = encode_vlm_chat(state.tokenizer, state.template, messages, vlm.config.image_token_id,
                                       vlm.config.n_image_tokens)
        pixels = images_to_pixels([decode_data_url(u) for u in urls], vlm.config.vision.image_size)
    except (ConfigError, TokenizerError, ValueError) as exc:
        raise APIError(400, str(exc), param="messages") from None
    eot = state.tokenizer.token_to_id(state.template.end_of_turn)
    eos = ([eot] if eot is not None else []) + [e for e in model_eos_ids(state.model) if e != eot]
    return ids, pixels, eos


async def image_chat_completion(req: schemas.ChatCompletionRequest, state) -> dict:
    """The chat.completion answer to a request with images (non-streamed, one choice)."""
    ids, pixels, eos = prepare_image_chat(req, state)
    max_tokens = token_budget(len(ids), chat_max_tokens(req), state.default_max_tokens, state.context, "messages")
    cfg = generation_config(req, max_tokens, req.seed, False, 0, stop_list(req.stop), eos, model=state.model)
    vlm, tok = state.vision_model, state.tokenizer

    def run():
        with _ONE_AT_A_TIME:
            return vlm.generate([ids], pixels, cfg, tokenizer=tok)

    out = await asyncio.get_running_loop().run_in_executor(None, run)
    n_out = len(out.sequences[0])
    state.metrics.add_tokens(len(ids), n_out)
    return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": state.model_name, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.texts[0]},
                         "finish_reason": out.finish_reasons[0], "logprobs": None}],
            "usage": usage(len(ids), n_out)}
