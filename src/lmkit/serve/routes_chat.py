"""POST /v1/chat/completions: chat (stream, n, stop, logprobs/top_logprobs, tools/tool_choice,
response_format and guided_* structured output)."""

import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request

from lmkit.errors import ConfigError, TokenizerError
from lmkit.infer.structured_output import JSON_OPTIONS
from lmkit.serve import schemas
from lmkit.serve.api_errors import APIError
from lmkit.serve.chat_model import PreparedChat, finish_chat, prepare_chat
from lmkit.serve.chat_stream import ChatStream
from lmkit.serve.engine_bridge import cancel_all, collect_choices, start_choices
from lmkit.serve.event_stream import event_stream_response, failure_event
from lmkit.serve.lora_adapters import select_adapter
from lmkit.serve.moderation_gate import CONTENT_FILTER, message_texts
from lmkit.serve.rate_limit import charge_tokens
from lmkit.serve.openai_format import (SSE_DONE, chat_logprobs, chat_max_tokens, choice_seed,
                                       generation_config, sse, stop_list, token_budget, usage, wants_usage)
from lmkit.serve.response_format import request_constraint
from lmkit.serve.server_state import ServerState, server_state
from lmkit.serve.tool_calls import tool_call_grammar
from lmkit.vision.vlm_chat import has_images

router = APIRouter()


def prepare(req: schemas.ChatCompletionRequest, state: ServerState) -> PreparedChat:
    """The request's messages and tools as prompt ids, stop strings and EOS ids (400 if invalid)."""
    if req.n > state.max_n:
        raise APIError(400, f"n must be <= {state.max_n}", param="n")
    if state.tokenizer is None:
        raise APIError(400, "this server has no tokenizer: chat needs one")
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        return prepare_chat(state.model, state.tokenizer, state.template, messages, tools=req.tools,
                            tool_choice=req.tool_choice or "auto", stop=stop_list(req.stop))
    except (ConfigError, TokenizerError) as exc:
        raise APIError(400, str(exc), param="messages") from None


def reply_message(prep: PreparedChat, text: str, finish_reason: str) -> tuple[dict, str]:
    """(assistant message, finish_reason) of a finished choice: content, or tool calls."""
    content, calls, finish = finish_chat(prep, text, finish_reason)
    message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None}
    if calls:
        message["tool_calls"] = calls
    return message, finish


@router.post("/v1/chat/completions")
async def chat_completions(req: schemas.ChatCompletionRequest, request: Request,
                           state: ServerState = Depends(server_state)):
    adapter = select_adapter(req, state.model_name, getattr(state.engine, "lora", None))  # multi-LoRA
    gate = state.moderation  # content safety (moderation_gate.py), None when off
    if gate is not None:
        gate.check_input(message_texts(req.messages))
    if has_images([{"content": m.content} for m in req.messages]):
        from lmkit.serve.image_chat import image_chat_completion  # images: the vision-language path

        result = await image_chat_completion(req, state)
        charge_tokens(request, result["usage"]["total_tokens"])
        return result
    prep = prepare(req, state)
    n_prompt = len(prep.prompt_ids)
    max_tokens = token_budget(n_prompt, chat_max_tokens(req), state.default_max_tokens, state.context, "messages")
    want_lp = bool(req.logprobs)
    top = int(req.top_logprobs or 0)
    if top and not want_lp:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    # structured output: a forced tool call's grammar, else response_format / guided_* (None: free text)
    grammar = request_constraint(req, state.tokenizer,
                                 tool_call_grammar(req.tool_choice, prep.tools, JSON_OPTIONS) if prep.tools else None)
    jobs = [(prep.prompt_ids, generation_config(req, max_tokens, choice_seed(req.seed, i), want_lp, top, prep.stop,
                                                prep.eos_ids, model=state.model)) + ((grammar,) if grammar else ())
            for i in range(req.n)]
    base = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": state.model_name,
            "system_fingerprint": None}

    if not req.stream:
        results = await collect_choices(state.engine, jobs, adapter)
        choices, used = [], 0
        for idx, r in enumerate(results):
            used += len(r["tokens"])
            message, finish = reply_message(prep, r["text"], r["finish_reason"])
            lp = chat_logprobs(state.tokenizer, r["tokens"], r["logprobs"], r["top"]) if want_lp else None
            if gate is not None and gate.output_flagged(r["text"]):
                message, finish, lp = {"role": "assistant", "content": ""}, CONTENT_FILTER, None
                state.metrics.safety.inc("lmkit_content_filter_finishes_total", "/v1/chat/completions")
            choices.append({"index": idx, "message": message, "finish_reason": finish, "logprobs": lp})
        state.metrics.add_tokens(n_prompt, used)
        charge_tokens(request, n_prompt + used)
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage(n_prompt, used)}

    queue, handles = start_choices(state.engine, jobs, adapter=adapter)
    stream = ChatStream(prep, len(jobs), base, state.tokenizer, logprobs=want_lp)
    guard = gate.stream_guard(len(jobs), "/v1/chat/completions") if gate is not None else None

    async def events():
        try:
            for c in stream.opening():
                yield sse(c)
            while not stream.done:
                idx, (ev,) = await queue.get()
                if ev.error:
                    yield failure_event(request, ev.error, ev.exception)
                    break
                if guard is not None and guard.cut[idx]:
                    continue  # events already queued for a choice that was cut
                chunks = stream.feed(idx, ev)
                if guard is not None and guard.screen(idx, stream.full[idx]):
                    handles[idx].cancel()  # stop generating it; the flagged text is never sent
                    if ev.finish_reason is None:
                        stream.left -= 1
                    chunks = [stream.chunk(idx, {}, CONTENT_FILTER)]
                for c in chunks:
                    yield sse(c)
            if wants_usage(req):
                yield sse(stream.usage_chunk(n_prompt))
            yield SSE_DONE
            state.metrics.add_tokens(n_prompt, stream.completion_tokens)
            charge_tokens(request, n_prompt + stream.completion_tokens)
        finally:
            cancel_all(handles)

    return event_stream_response(events())
