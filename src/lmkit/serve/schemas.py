"""Request bodies of the OpenAI API (pydantic), with OpenAI's ranges.

Unknown fields are accepted and ignored (clients send options this server does not use,
such as `user`); known fields are type- and range-checked, and a
failure becomes a 400 in OpenAI's error shape (see api_errors.py).
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from lmkit.errors import ConfigError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class _Sampling(_Open):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    stop: Optional[Union[str, list[str]]] = None
    presence_penalty: Optional[float] = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=0.0, ge=-2.0, le=2.0)
    seed: Optional[int] = None
    user: Optional[str] = None
    # structured output (response_format.py): OpenAI's response_format, vLLM's guided_* fields
    response_format: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[dict[str, Any], str]] = None
    guided_regex: Optional[str] = None
    guided_grammar: Optional[str] = None
    guided_choice: Optional[list[str]] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    def prompt_token_lists(self, tokenizer) -> list[list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [list(tokenizer.encode(p))]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        out = []
        for x in p:
            out.append(list(tokenizer.encode(x)) if isinstance(x, str) else list(x))
        return out


class EmbeddingRequest(_Open):
    """`input`: texts or token ids; for a CLIP model also images, as data URLs or {"image": URL}
    objects, mixed with texts (clip_embeddings.py)."""

    model: Optional[str] = None
    input: Union[str, list[str], list[int], list[list[int]], dict[str, Any], list[Union[str, dict[str, Any]]]]
    encoding_format: str = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None

    def mixed_items(self) -> list | None:
        """The input as a list of texts and objects, when it holds no token ids (the CLIP path); else None."""
        x = self.input
        items = [x] if isinstance(x, (str, dict)) else list(x)
        return items if all(isinstance(t, (str, dict)) for t in items) else None

    def token_lists(self, embedder) -> list[list[int]]:
        x = self.input
        if isinstance(x, dict) or (isinstance(x, list) and any(isinstance(t, dict) for t in x)):
            raise ConfigError("objects such as {\"image\": ...} need a CLIP model; this model embeds texts only")
        if isinstance(x, str):
            return embedder.encode_texts([x])
        if not x:
            raise ConfigError("input is empty")
        if all(isinstance(t, int) for t in x):
            return [list(x)]
        if all(isinstance(t, str) for t in x):
            return embedder.encode_texts(x)
        return [list(t) for t in x]
