"""Conversation memory: what an agent remembers of earlier turns.

A chat model is stateless; memory decides which earlier messages go back into the prompt
(the notes' LangChain Memory module):
- `BufferMemory` keeps every message (ConversationBufferMemory);
- `WindowMemory` keeps the last k exchanges (ConversationBufferWindowMemory);
- `SummaryMemory` folds older exchanges into a running summary written by a chat model
  (ConversationSummaryMemory), so long conversations fit the context.
An exchange is one user message and everything after it up to the next user message.
"""

from __future__ import annotations

from typing import Any, Protocol

from lmkit.errors import ConfigError

Message = dict[str, Any]


class Memory(Protocol):
    def messages(self) -> list[Message]: ...
    def add(self, message: Message) -> None: ...
    def clear(self) -> None: ...


def _check(message: Message) -> Message:
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
        raise ConfigError(f"a memory message needs role system|user|assistant|tool, got {message!r}")
    return dict(message)


def split_exchanges(messages: list[Message]) -> list[list[Message]]:
    """Group messages into exchanges, each starting at a user message."""
    out: list[list[Message]] = []
    for m in messages:
        if m["role"] == "user" or not out:
            out.append([m])
        else:
            out[-1].append(m)
    return out


class BufferMemory:
    """Every message, verbatim."""

    def __init__(self) -> None:
        self._messages: list[Message] = []

    def add(self, message: Message) -> None:
        self._messages.append(_check(message))

    def messages(self) -> list[Message]:
        return list(self._messages)

    def clear(self) -> None:
        self._messages.clear()


class WindowMemory(BufferMemory):
    """The last `k` exchanges, verbatim."""

    def __init__(self, k: int = 5) -> None:
        if k < 1:
            raise ConfigError(f"WindowMemory k must be >= 1, got {k}")
        super().__init__()
        self.k = k

    def messages(self) -> list[Message]:
        return [m for ex in split_exchanges(self._messages)[-self.k:] for m in ex]


SUMMARY_PROMPT = (
    "Progressively summarise the conversation, adding onto the previous summary and returning a new "
    "summary. Keep names, numbers and decisions.\n\nCurrent summary:\n{summary}\n\nNew lines of "
    "conversation:\n{lines}\n\nNew summary:"
)


class SummaryMemory(BufferMemory):
    """A running summary of old exchanges plus the last `keep_last` exchanges verbatim.

    When more than `keep_last` exchanges are held, the oldest are summarised by `chat_model`
    (any object with `chat(messages, ...) -> result.content`) and dropped.
    """

    def __init__(self, chat_model: Any, keep_last: int = 2, prompt: str = SUMMARY_PROMPT,
                 max_summary_tokens: int = 256) -> None:
        if keep_last < 0:
            raise ConfigError(f"SummaryMemory keep_last must be >= 0, got {keep_last}")
        super().__init__()
        self.chat_model = chat_model
        self.keep_last = keep_last
        self.prompt = prompt
        self.max_summary_tokens = max_summary_tokens
        self.summary = ""

    def add(self, message: Message) -> None:
        super().add(message)
        exchanges = split_exchanges(self._messages)
        # Summarise only when a new exchange starts, so an exchange is never cut in half.
        if message["role"] == "user" and len(exchanges) > self.keep_last + 1:
            old = exchanges[: len(exchanges) - self.keep_last - 1]
            lines = "\n".join(f"{m['role']}: {m.get('content') or ''}" for ex in old for m in ex)
            result = self.chat_model.chat(
                [{"role": "user", "content": self.prompt.format(summary=self.summary or "(none)", lines=lines)}],
                max_tokens=self.max_summary_tokens, temperature=0.0)
            self.summary = (result.content or "").strip()
            self._messages = [m for ex in exchanges[len(old):] for m in ex]

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": f"Summary of the earlier conversation: {self.summary}"}] \
            if self.summary else []
        return head + list(self._messages)

    def clear(self) -> None:
        super().clear()
        self.summary = ""
