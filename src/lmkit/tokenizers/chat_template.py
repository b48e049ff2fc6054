"""Chat templates: turning a list of messages into the exact text a chat model was trained on.

A template is data, not code: the text that opens and closes each turn. From it we get
the prompt text (`render`) and, for supervised fine-tuning, the token ids together with a
mask that is 1 exactly on what the assistant must learn to produce — its reply and the
end-of-turn token that lets it stop — and 0 on everything it is only shown (`render_with_mask`).

Built in: ChatML (Qwen2, with its default system prompt) and Llama-3. Both reproduce the
text of the models' published Jinja templates (tested against `transformers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lmkit.errors import TokenizerError


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    turn_start: str  # "{role}" is replaced by the role
    turn_end: str  # text after the content; starts with end_of_turn
    end_of_turn: str  # the token the assistant emits to finish its turn
    bos: str = ""
    default_system: str | None = None  # inserted when the conversation has no system message
    strip_content: bool = False
    roles: tuple[str, ...] = ("system", "user", "assistant", "tool")

    def __post_init__(self) -> None:
        if not self.turn_end.startswith(self.end_of_turn):
            raise ValueError(f"ChatTemplate.turn_end must start with end_of_turn {self.end_of_turn!r}")

    @property
    def special_tokens(self) -> list[str]:
        """Control strings that must be single tokens in the tokenizer."""
        import re

        found = re.findall(r"<\|[^|]+\|>", self.bos + self.turn_start + self.turn_end)
        return list(dict.fromkeys(found))

    @property
    def generation_prompt(self) -> str:
        return self.turn_start.replace("{role}", "assistant")

    # ---- rendering --------------------------------------------------------------------
    def segments(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """(text, trained) pieces whose concatenation is the rendered conversation."""
        validate_messages(messages, self.roles)
        msgs = list(messages)
        if self.default_system is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.default_system})
        out: list[tuple[str, bool]] = []
        if self.bos:
            out.append((self.bos, False))
        for m in msgs:
            content = m["content"].strip() if self.strip_content else m["content"]
            out.append((self.turn_start.replace("{role}", m["role"]), False))
            if m["role"] == "assistant":
                out.append((content + self.end_of_turn, True))
                rest = self.turn_end[len(self.end_of_turn):]
                if rest:
                    out.append((rest, False))
            else:
                out.append((content + self.turn_end, False))
        if add_generation_prompt:
            out.append((self.generation_prompt, False))
        return [(t, trained) for t, trained in out if t]

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return "".join(t for t, _ in self.segments(messages, add_generation_prompt))

    def render_with_mask(self, messages: Sequence[dict[str, Any]], tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Token ids of the rendered conversation and a 0/1 mask over them (1 = assistant target).

        Each piece is encoded on its own; pieces meet at special tokens or line breaks, where
        byte-level and SentencePiece tokenizers never merge across, so the ids equal those of
        encoding the whole text at once (tested).
        """
        missing = [t for t in self.special_tokens if tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(
                f"the tokenizer has no single token for {missing}; add them as special tokens "
                f"before using the {self.name} template"
            )
        ids: list[int] = []
        mask: list[int] = []
        for text, trained in self.segments(messages, add_generation_prompt):
            piece = tokenizer.encode(text, allowed_special="all")
            ids.extend(piece)
            mask.extend([int(trained)] * len(piece))
        return ids, mask


def validate_messages(messages: Sequence[dict[str, Any]], roles: Sequence[str]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TokenizerError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m or "content" not in m:
            raise TokenizerError(f"message {i} needs both 'role' and 'content' (has {sorted(m)})")
        if m["role"] not in roles:
            raise TokenizerError(f"message {i} has unknown role {m['role']!r}; expected one of {list(roles)}")
        if not isinstance(m["content"], str):
            raise TokenizerError(f"message {i}: content must be a string, got {type(m['content']).__name__}")


CHATML = ChatTemplate(
    name="chatml",
    turn_start="<|im_start|>{role}\n",
    turn_end="<|im_end|>\n",
    end_of_turn="<|im_end|>",
    default_system="You are a helpful assistant.",
)

LLAMA3 = ChatTemplate(
    name="llama3",
    bos="<|begin_of_text|>",
    turn_start="<|start_header_id|>{role}<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    end_of_turn="<|eot_id|>",
    strip_content=True,
    roles=("system", "user", "assistant", "ipython", "tool"),
)

TEMPLATES = {t.name: t for t in (CHATML, LLAMA3)}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TokenizerError(f"unknown chat template {name!r}; available: {sorted(TEMPLATES)}") from None
