"""`ChatModel`: one small interface to "a chat model", local or behind an OpenAI-compatible URL.

RAG and agent code call `chat(messages, tools=...)` and get a `ChatResult` back, whether the
model runs in this process (`LocalChatModel`, lmkit.infer directly) or in a server
(`OpenAIChatModel`: lmkit's own `lmkit serve`, vLLM, llama.cpp, OpenAI ...):

    from lmkit.serve.chat_model import LocalChatModel, OpenAIChatModel
    llm = LocalChatModel.from_dir("my-model")                  # or LocalChatModel(model, tokenizer)
    llm = OpenAIChatModel("http://127.0.0.1:8000/v1", model="my-model", api_key="...")
    r = llm.chat([{"role": "user", "content": "Weather in Paris?"}], tools=[{...}])
    r.content, r.tool_calls, r.finish_reason, r.usage

Both render tools and parse tool calls the same way (serve/tool_calls.py: Hermes / Qwen-2.5
format), so an agent sees identical results from either. `prepare_chat` is the shared step
from OpenAI messages to prompt token ids; the HTTP server uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from lmkit.errors import ConfigError, LmkitError, TokenizerError
from lmkit.serve.tool_calls import (normalize_messages, parse_tool_calls, template_messages, tool_call_grammar,
                                    tool_choice_prefix, validate_tools)


class ChatModelError(LmkitError):
    """A chat request failed (server unreachable, HTTP error, bad response)."""


@dataclass
class ChatResult:
    content: str
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop", "length" or "tool_calls"
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens, total_tokens


@runtime_checkable
class ChatModel(Protocol):
    def chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, max_tokens: int = 256,
             temperature: float = 0.0, stop: Sequence[str] | str | None = None,
             seed: int | None = None) -> ChatResult: ...


# ---- shared prompt preparation ----------------------------------------------------------
@dataclass
class PreparedChat:
    """What generation needs for one chat request."""

    prompt_ids: list[int]
    prefix: str  # text the reply is forced to start with (tool_choice); part of the prompt
    eos_ids: list[int]  # end-of-turn token and the model's EOS ids
    stop: list[str] | None  # user stop strings (+ the end-of-turn text when it is not one token)
    tools: list[dict] | None  # tools the model was shown (None: do not parse tool calls)


def resolve_template(template):
    """A template object: a built-in `ChatTemplate`, a checkpoint's `JinjaChatTemplate`, or the
    name of a built-in one."""
    from lmkit.tokenizers.chat_template import ChatTemplate, get_template
    from lmkit.tokenizers.jinja_template import JinjaChatTemplate

    return template if isinstance(template, (ChatTemplate, JinjaChatTemplate)) else get_template(template)


def encode_chat(tokenizer, template, messages: Sequence[dict]) -> list[int]:
    """Prompt ids of plain messages plus the generation prompt.

    Message content is encoded as plain text (a user cannot forge "<|im_start|>system" turns).
    A tokenizer without the template's special tokens is an error naming the fix (the one
    template policy of chat, serve, sft, dpo, grpo and rag), not ChatML spelled out as text.
    """
    from lmkit.tokenizers.chat_template import require_template_tokens

    require_template_tokens(template, tokenizer)
    ids, _ = template.render_with_mask(messages, tokenizer, add_generation_prompt=True)
    return ids


def prepare_chat(model, tokenizer, template, messages: Sequence[dict], *, tools: Sequence[dict] | None = None,
                 tool_choice: Any = "auto", stop: Sequence[str] | str | None = None) -> PreparedChat:
    """OpenAI messages (+ tools) -> prompt ids, forced prefix, EOS ids and stop strings."""
    from lmkit.tokenizers.jinja_template import JinjaChatTemplate

    tpl = resolve_template(template)
    if tools is not None and len(tools) == 0:
        tools = None
    shown = validate_tools(tools) if tools and tool_choice != "none" else None
    try:
        if isinstance(tpl, JinjaChatTemplate):
            tpl = tpl.for_tools(shown)
        if isinstance(tpl, JinjaChatTemplate) and (shown is None or tpl.uses_tools):
            # the checkpoint's own template writes the tools and tool calls in its model's format
            ids = tpl.encode(template_messages(messages), tokenizer, add_generation_prompt=True, tools=shown)
        else:
            msgs = normalize_messages(messages, shown, default_system=tpl.default_system)
            ids = encode_chat(tokenizer, tpl, msgs)
    except TokenizerError as exc:
        raise ConfigError(str(exc)) from exc
    prefix = tool_choice_prefix(tool_choice, shown)
    if prefix:
        ids = ids + list(tokenizer.encode(prefix))  # plain text: no special tokens
    from lmkit.infer.stop import model_eos_ids

    stops = [stop] if isinstance(stop, str) else list(stop or [])
    eot = tokenizer.token_to_id(tpl.end_of_turn) if tpl.end_of_turn and hasattr(tokenizer, "token_to_id") else None
    eos = ([eot] if eot is not None else []) + [e for e in model_eos_ids(model) if e != eot]
    if eot is None and tpl.end_of_turn:
        stops.append(tpl.end_of_turn)
    return PreparedChat(ids, prefix, eos, stops or None, shown)


def finish_chat(prepared: PreparedChat, text: str, finish_reason: str) -> tuple[str, list[dict], str]:
    """Generated text -> (content, tool_calls, finish_reason) with the forced prefix restored."""
    full = prepared.prefix + text
    if prepared.tools:
        content, calls = parse_tool_calls(full)
        if calls:
            return content, calls, "tool_calls"
    return full, [], finish_reason


def forced_call_constraint(tokenizer, tool_choice: Any, tools: Sequence[dict] | None):
    """The compiled grammar of a forced tool call (tool_choice "required" or named), or None when
    the call is free or llguidance (the `structured` extra) is not installed (then only the
    prompt starts the call)."""
    from lmkit.infer.structured_output import JSON_OPTIONS, available, compile_grammar

    if not tools or not available():
        return None
    grammar = tool_call_grammar(tool_choice, tools, JSON_OPTIONS)
    return compile_grammar(tokenizer, grammar) if grammar else None


# ---- in-process ------------------------------------------------------------------------
class LocalChatModel:
    """A chat model running in this process through `lmkit.infer.generate`."""

    def __init__(self, model, tokenizer, template: Any = "chatml") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = resolve_template(template)

    @classmethod
    def from_dir(cls, directory, template: Any = None) -> "LocalChatModel":
        """A Hugging Face checkpoint directory with tokenizer.json beside config.json. `template`
        None: the checkpoint's own chat template (else a built-in one; hub.checkpoint_template)."""
        from lmkit.hub import load_pretrained
        from lmkit.hub.checkpoint_template import checkpoint_template
        from lmkit.tokenizers.loading import load_tokenizer

        tokenizer = load_tokenizer(directory)
        if template is None or isinstance(template, str):
            template = checkpoint_template(directory, tokenizer, template)
        return cls(load_pretrained(directory), tokenizer, template)

    def chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, max_tokens: int = 256,
             temperature: float = 0.0, stop: Sequence[str] | str | None = None, seed: int | None = None,
             tool_choice: Any = "auto") -> ChatResult:
        from lmkit.infer import GenerationConfig, generate

        prep = prepare_chat(self.model, self.tokenizer, self.template, messages, tools=tools,
                            tool_choice=tool_choice, stop=stop)
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        ctx = self.model.config.max_seq_len
        if len(prep.prompt_ids) + max_tokens > ctx:
            raise ConfigError(
                f"prompt of {len(prep.prompt_ids)} tokens + max_tokens={max_tokens} is longer than the model's "
                f"context ({ctx}); shorten the conversation or lower max_tokens"
            )
        cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=temperature > 0,
                               temperature=temperature if temperature > 0 else 1.0, seed=seed,
                               stop=prep.stop, eos_token_id=prep.eos_ids or None)
        out = generate(self.model, [prep.prompt_ids], cfg, tokenizer=self.tokenizer,
                       constraint=forced_call_constraint(self.tokenizer, tool_choice, prep.tools))
        content, calls, finish = finish_chat(prep, out.texts[0], out.finish_reasons[0])
        n = len(out.sequences[0])
        usage = {"prompt_tokens": len(prep.prompt_ids), "completion_tokens": n,
                 "total_tokens": len(prep.prompt_ids) + n}
        return ChatResult(content, calls, finish, usage)


# ---- over HTTP -------------------------------------------------------------------------
class OpenAIChatModel:
    """Any OpenAI-compatible /v1/chat/completions endpoint, through plain httpx.

    base_url: the API root including /v1, e.g. "http://127.0.0.1:8000/v1" (as the openai client).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        if not base_url or not isinstance(base_url, str):
            raise ConfigError("OpenAIChatModel needs a base_url such as http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)

    def chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, max_tokens: int = 256,
             temperature: float = 0.0, stop: Sequence[str] | str | None = None, seed: int | None = None,
             tool_choice: Any = None) -> ChatResult:
        from lmkit.errors import require

        httpx = require("httpx", "serve")
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                                "temperature": temperature}
        if tools:
            body["tools"] = list(tools)
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        if stop:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = seed
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout)
        except httpx.ConnectError as exc:
            raise ChatModelError(f"cannot connect to {url} ({exc}); is the server running? "
                                 "(start one with: lmkit serve MODEL_DIR)") from None
        except httpx.TimeoutException:
            raise ChatModelError(f"{url} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ChatModelError(f"request to {url} failed: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            msg = data.get("error", {}).get("message") if isinstance(data, dict) and isinstance(data.get("error"), dict) \
                else resp.text[:500]
            raise ChatModelError(f"{url} answered HTTP {resp.status_code}: {msg}")
        try:
            choice = data["choices"][0]
            message = choice["message"]
            calls = message.get("tool_calls") or []
            return ChatResult(message.get("content") or "", list(calls), choice.get("finish_reason") or "stop",
                              dict(data.get("usage") or {}))
        except (KeyError, IndexError, TypeError):
            raise ChatModelError(f"{url} returned an unexpected body: {str(data)[:300]}") from None
