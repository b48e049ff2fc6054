"""OpenAI request and response shaping, as plain functions (no HTTP, no engine).

Requests: which model, how many tokens may be generated, the stop list, and the
`GenerationConfig` a request asks for. Responses: logprobs in the chat and the completion
formats, usage, and Server-Sent Events framing.

Sampling follows OpenAI: temperature 0 is greedy; otherwise temperature / top_p sampling
(the default temperature is 1). With n > 1, choice i uses seed + i so the choices differ.
"""

import base64
import json
from typing import Any

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.serve.api_errors import APIError

SSE_DONE = b"data: [DONE]\n\n"
MAX_STOPS = 4


def check_model(requested: str | None, served: str) -> None:
    """404 unless the request names the served model (or none)."""
    if requested and requested != served:
        raise APIError(404, f"the model {requested!r} does not exist; this server serves {served!r}",
                       "invalid_request_error", "model", "model_not_found")


def stop_list(stop: str | list[str] | None) -> list[str] | None:
    """OpenAI's `stop` (a string or up to 4 strings) as a list; None when absent."""
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise APIError(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} non-empty strings",
                       param="stop")
    return stops


def token_budget(prompt_len: int, requested: int | None, default: int, context: int, param: str) -> int:
    """Tokens to generate: `requested` if prompt + requested fits `context`, else 400 saying by how much.

    Without `requested`: `default`, cut to the room left in the context.
    """
    room = context - prompt_len
    if requested is None:
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens, which fills the model's context of "
                                f"{context} tokens; shorten it", param=param, code="context_length_exceeded")
        return min(default, room)
    if prompt_len + requested > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens, but the request asks for "
                            f"{prompt_len + requested} ({prompt_len} in the prompt + {requested} max_tokens); "
                            f"shorten the prompt or lower max_tokens", param=param, code="context_length_exceeded")
    return requested


def chat_max_tokens(req) -> int | None:
    """A chat request's length limit: max_completion_tokens, or the older max_tokens."""
    return req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice `index` (seed + index), so n > 1 sampled choices differ."""
    return None if seed is None else seed + index


def generation_config(req, max_tokens: int, seed: int | None, logprobs: bool, top_logprobs: int,
                      stop: list[str] | None, eos_ids: list[int] | None, model=None) -> GenerationConfig:
    """The `GenerationConfig` for one choice of a completion or chat request (400 if invalid).
    Fields the request leaves out come from `model`'s generation_config.json (greedy when it says
    do_sample false), else OpenAI's defaults (temperature 1, top_p 1)."""
    from lmkit.infer.checkpoint_defaults import sampling_settings

    sampling = sampling_settings(model, temperature=req.temperature, top_p=req.top_p,
                                 fallback={"temperature": 1.0, "top_p": 1.0})
    try:
        return GenerationConfig(
            max_new_tokens=max_tokens, presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, seed=seed, stop=stop or None, logprobs=logprobs,
            top_logprobs=top_logprobs, eos_token_id=eos_ids or None, **sampling)
    except ConfigError as exc:
        raise APIError(400, str(exc)) from None


def token_text(tokenizer, token_id: int) -> tuple[str, list[int]]:
    """(text, UTF-8 bytes) of one token; the text replaces bytes that end mid-character."""
    if hasattr(tokenizer, "token_bytes"):
        b = tokenizer.token_bytes(int(token_id))
    else:
        b = tokenizer.decode([int(token_id)]).encode("utf-8")
    return b.decode("utf-8", "replace"), list(b)


def chat_logprobs(tokenizer, tokens, logprobs, tops) -> dict:
    """Chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    content = []
    for t, lp, top in zip(tokens, logprobs, tops):
        s, b = token_text(tokenizer, t)
        entry: dict[str, Any] = {"token": s, "logprob": lp, "bytes": b, "top_logprobs": []}
        for ti, tlp in (top or {}).items():
            ts, tb = token_text(tokenizer, ti)
            entry["top_logprobs"].append({"token": ts, "logprob": tlp, "bytes": tb})
        content.append(entry)
    return {"content": content}


def completion_logprobs(tokenizer, tokens, logprobs, tops, offset0: int) -> dict:
    """The legacy completions' `logprobs`: tokens, token_logprobs, top_logprobs, text_offset.

    offset0: characters of the choice's text before the first token (the echoed prompt).
    """
    strs = [token_text(tokenizer, t)[0] for t in tokens]
    offsets, pos = [], offset0
    for s in strs:
        offsets.append(pos)
        pos += len(s)
    top = [{token_text(tokenizer, i)[0]: v for i, v in (t or {}).items()} for t in tops] if any(tops) else None
    return {"tokens": strs, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def wants_usage(req) -> bool:
    """Whether a stream should end with a usage chunk (stream_options.include_usage)."""
    return bool((req.stream_options or {}).get("include_usage"))


def embedding_payload(vector, encoding_format: str) -> Any:
    """One embedding as a list of floats, or as base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(vector.float().numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def sse(obj: Any) -> bytes:
    """One Server-Sent Event holding `obj` as JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


class ChunkEvents:
    """Server-Sent Events of the chunks of one stream: `head`'s fields (id, object, created, model)
    are encoded once, each token's event encodes only its choices. The bytes equal
    `sse({**head, "choices": choices})`."""

    def __init__(self, head: dict) -> None:
        text = json.dumps({**head, "choices": None}, ensure_ascii=False)
        self.prefix = b"data: " + text[: -len("null}")].encode("utf-8")

    def __call__(self, choices: list) -> bytes:
        return self.prefix + json.dumps(choices, ensure_ascii=False).encode("utf-8") + b"}\n\n"
