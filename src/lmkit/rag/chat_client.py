"""The chat model a command generates with: a local checkpoint or an OpenAI-compatible endpoint.

Two things make the command lines work on any model without tuning flags:
- the endpoint's model name defaults to the one model it serves (GET /v1/models);
- each reply's max_tokens is sized to what the model's context leaves after the prompt,
  so a 512-token model is never asked for 512 new tokens on top of its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmkit.errors import ConfigError

DEFAULT_MAX_TOKENS = 512  # a local reply's length when neither the caller nor the user sets one


def served_model(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The id of the one model an OpenAI-compatible server lists at GET {base_url}/models."""
    from lmkit.errors import require
    from lmkit.serve.chat_model import ChatModelError

    httpx = require("httpx", "serve")
    url = f"{base_url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ChatModelError(f"cannot list the models at {url} ({exc}); is the server running? "
                             "(start one with: lmkit serve MODEL_DIR)") from None
    if resp.status_code >= 400:
        raise ChatModelError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        ids = [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ChatModelError(f"{url} returned an unexpected body: {resp.text[:300]}") from None
    if len(ids) != 1:
        listed = ", ".join(map(repr, ids)) or "none"
        raise ConfigError(f"{base_url} serves {len(ids)} models ({listed}); choose one with --model")
    return ids[0]


class ContextSizedChatModel:
    """Wraps a chat model so that `chat(max_tokens=None)` asks for a reply that fits the context.

    A local model gets min(max_tokens or DEFAULT_MAX_TOKENS, room left after the prompt). An
    endpoint gets max_tokens as given; None lets the server size the reply to its context.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def chat(self, messages: Sequence[dict], *, max_tokens: int | None = None, **kwargs: Any):
        return self.inner.chat(messages, max_tokens=self.reply_budget(messages, max_tokens, kwargs), **kwargs)

    def reply_budget(self, messages: Sequence[dict], max_tokens: int | None, kwargs: dict) -> int | None:
        from lmkit.serve.chat_model import LocalChatModel, prepare_chat

        if not isinstance(self.inner, LocalChatModel):
            return max_tokens
        want = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        prep = prepare_chat(self.inner.model, self.inner.tokenizer, self.inner.template, messages,
                            tools=kwargs.get("tools"), tool_choice=kwargs.get("tool_choice", "auto"),
                            stop=kwargs.get("stop"))
        room = self.inner.model.config.max_seq_len - len(prep.prompt_ids)
        return min(want, room) if room >= 1 else want  # no room: the model's own error says so


def open_chat_model(base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                    local: str | None = None, template: Any = None) -> ContextSizedChatModel | None:
    """A local checkpoint directory, else an endpoint (its one model unless `model` is given), else None."""
    if local:
        from lmkit.serve.chat_model import LocalChatModel

        return ContextSizedChatModel(LocalChatModel.from_dir(local, template=template))
    if base_url:
        from lmkit.serve.chat_model import OpenAIChatModel

        name = model or served_model(base_url, api_key)
        return ContextSizedChatModel(OpenAIChatModel(base_url, name, api_key))
    return None
