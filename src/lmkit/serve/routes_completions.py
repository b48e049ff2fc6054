"""POST /v1/completions: text completion (stream, n, stop, logprobs, echo, penalties, seed,
response_format and guided_* structured output)."""

import time
import uuid

from fastapi import APIRouter, Depends, Request

from lmkit.serve import schemas
from lmkit.serve.api_errors import APIError
from lmkit.serve.engine_bridge import cancel_all, collect_choices, start_choices
from lmkit.serve.event_stream import event_stream_response, failure_event
from lmkit.serve.lora_adapters import select_adapter
from lmkit.serve.moderation_gate import CONTENT_FILTER
from lmkit.serve.openai_format import (SSE_DONE, ChunkEvents, choice_seed, completion_logprobs, generation_config,
                                       sse, stop_list, token_budget, usage, wants_usage)
from lmkit.serve.rate_limit import charge_tokens
from lmkit.serve.response_format import request_constraint
from lmkit.serve.server_state import ServerState, server_state

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_TOP_LOGPROBS = 20

router = APIRouter()


def prompt_ids(req: schemas.CompletionRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    """The request's prompts as token ids (400 if one is empty or outside the vocabulary)."""
    prompts = req.prompt_token_lists(tokenizer)
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "prompt must not be empty", param="prompt")
    for p in prompts:
        if any(not 0 <= t < vocab_size for t in p):
            raise APIError(400, f"prompt has token ids outside the vocabulary [0, {vocab_size})", param="prompt")
    return prompts


def check_supported(req: schemas.CompletionRequest, max_n: int) -> None:
    if req.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (use n)", param="best_of")
    if req.n > max_n:
        raise APIError(400, f"n must be <= {max_n}", param="n")


@router.post("/v1/completions")
async def completions(req: schemas.CompletionRequest, request: Request, state: ServerState = Depends(server_state)):
    adapter = select_adapter(req, state.model_name, getattr(state.engine, "lora", None))  # multi-LoRA
    check_supported(req, state.max_n)
    tok = state.tokenizer
    prompts = prompt_ids(req, tok, state.model.config.vocab_size)
    gate = state.moderation  # content safety (moderation_gate.py), None when off
    if gate is not None:
        gate.check_input([tok.decode(p) for p in prompts])
    stops = stop_list(req.stop)
    want_lp = req.logprobs is not None
    top = min(int(req.logprobs or 0), MAX_TOP_LOGPROBS)
    grammar = request_constraint(req, tok)  # structured output (None: free text)
    extra = (grammar,) if grammar else ()
    jobs, prompt_of = [], []  # one job per (prompt, choice); prompt_of[job] = its prompt's index
    for pi, p in enumerate(prompts):
        max_tokens = token_budget(len(p), req.max_tokens, DEFAULT_MAX_TOKENS, state.context, "max_tokens")
        for i in range(req.n):
            jobs.append((p, generation_config(req, max_tokens, choice_seed(req.seed, i), want_lp, top, stops, None,
                                              model=state.model)) + extra)
            prompt_of.append(pi)
    echoes = [tok.decode(prompts[pi]) if req.echo else "" for pi in prompt_of]
    head = {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": state.model_name}
    n_prompt = sum(len(p) for p in prompts)

    if not req.stream:
        results = await collect_choices(state.engine, jobs, adapter)
        choices, used = [], 0
        for idx, r in enumerate(results):
            used += len(r["tokens"])
            lp = completion_logprobs(tok, r["tokens"], r["logprobs"], r["top"], len(echoes[idx])) if want_lp else None
            text, finish = r["text"], r["finish_reason"]
            if gate is not None and gate.output_flagged(text):
                text, finish, lp = "", CONTENT_FILTER, None
                state.metrics.safety.inc("lmkit_content_filter_finishes_total", "/v1/completions")
            choices.append({"index": idx, "text": echoes[idx] + text, "finish_reason": finish, "logprobs": lp})
        state.metrics.add_tokens(n_prompt, used)
        charge_tokens(request, n_prompt + used)
        return {**head, "choices": choices, "usage": usage(n_prompt, used), "system_fingerprint": None}

    queue, handles = start_choices(state.engine, jobs, adapter=adapter)
    framed = ChunkEvents(head)

    def chunk(idx: int, text: str, logprobs=None, finish=None) -> bytes:
        return framed([{"index": idx, "text": text, "logprobs": logprobs, "finish_reason": finish}])

    guard = gate.stream_guard(len(jobs), "/v1/completions") if gate is not None else None
    texts = [""] * len(jobs)

    async def events():
        left, used = len(jobs), 0
        offsets = [len(e) for e in echoes]
        try:
            for idx, echo in enumerate(echoes):
                if echo:
                    yield chunk(idx, echo)
            while left:
                idx, (ev,) = await queue.get()
                if ev.error:
                    yield failure_event(request, ev.error, ev.exception)
                    break
                if guard is not None and guard.cut[idx]:
                    continue  # events already queued for a choice that was cut
                used += ev.token is not None
                texts[idx] += ev.text
                if guard is not None and guard.screen(idx, texts[idx]):
                    handles[idx].cancel()  # stop generating it; the flagged text is never sent
                    yield chunk(idx, "", None, CONTENT_FILTER)
                    left -= 1
                    continue
                lp = None
                if want_lp and ev.token is not None:
                    lp = completion_logprobs(tok, [ev.token], [ev.logprob], [ev.top_logprobs], offsets[idx])
                offsets[idx] += len(ev.text)
                if ev.text or lp or ev.finish_reason:
                    yield chunk(idx, ev.text, lp, ev.finish_reason)
                if ev.finish_reason:
                    left -= 1
            if wants_usage(req):
                yield sse({**head, "choices": [], "usage": usage(n_prompt, used)})
            yield SSE_DONE
            state.metrics.add_tokens(n_prompt, used)
            charge_tokens(request, n_prompt + used)
        finally:
            cancel_all(handles)

    return event_stream_response(events())
