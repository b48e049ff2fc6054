"""Calling a chat model from RAG code: any object with ``chat(messages, **kw)`` (lmkit's
`lmkit.serve.chat_model.ChatModel`: `LocalChatModel`, `OpenAIChatModel`, or a test double)
returning a result with ``.content`` (a plain string is accepted too)."""

from __future__ import annotations

from typing import Any


def complete(model: Any, prompt: str, system: str | None = None, max_tokens: int | None = 256,
             temperature: float = 0.0) -> str:
    """The model's reply to one user prompt; max_tokens=None leaves the length to a model that
    sizes replies to its context (`lmkit.rag.chat_client.ContextSizedChatModel`, or a server)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    out = model.chat(messages, max_tokens=max_tokens, temperature=temperature)
    text = out if isinstance(out, str) else getattr(out, "content", None)
    return (text or "").strip()


def lines_of(text: str, limit: int | None = None) -> list[str]:
    """Non-empty lines with list markers ("1.", "-", "*") removed."""
    import re

    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)、]|[（(]?\d+[）)])\s*", "", line).strip()
        if line:
            out.append(line)
    return out[:limit] if limit else out
