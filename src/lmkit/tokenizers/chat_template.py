"""Chat templates: turning a list of messages into the exact text a chat model was trained on.

A template is data, not code: the text that opens and closes each turn. From it we get
the prompt text (`render`) and, for supervised fine-tuning, the token ids together with a
mask that is 1 exactly on what the assistant must learn to produce — its reply and the
end-of-turn token that lets it stop — and 0 on everything it is only shown (system and
user turns, turn headers, the line break after the end-of-turn token): `render_with_mask`.

Built in: ChatML (Qwen2, with its default system prompt) and Llama-3. Both reproduce the
text of the models' published Jinja templates exactly (tested against `transformers`).
Define another format with ``ChatTemplate(name=..., turn_start=..., ...)``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

from lmkit.errors import TokenizerError


class Piece(NamedTuple):
    """A run of rendered text. `control`: written by the template, so control strings in it
    are special tokens; otherwise it is message content, where they are plain text.
    `trained`: part of the assistant's target."""

    text: str
    trained: bool
    control: bool


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    turn_start: str  # text before a message's content; "{role}" is replaced by the role
    turn_end: str  # text after the content; starts with end_of_turn
    end_of_turn: str  # the token the assistant emits to finish its turn (trained)
    bos: str = ""  # written once, before the first turn
    default_system: str | None = None  # inserted when a conversation starts without a system turn
    strip_content: bool = False  # strip whitespace around each content (Llama-3's `| trim`)
    roles: tuple[str, ...] = field(default=("system", "user", "assistant", "tool"))

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChatTemplate.name must not be empty")
        if "{role}" not in self.turn_start:
            raise ValueError(f"ChatTemplate.turn_start must contain '{{role}}', got {self.turn_start!r}")
        if not self.end_of_turn:
            raise ValueError("ChatTemplate.end_of_turn must not be empty: the model needs a token to stop on")
        if not self.turn_end.startswith(self.end_of_turn):
            raise ValueError(f"ChatTemplate.turn_end must start with end_of_turn {self.end_of_turn!r}, got {self.turn_end!r}")
        object.__setattr__(self, "roles", tuple(self.roles))
        if "assistant" not in self.roles:
            raise ValueError(f"ChatTemplate.roles must include 'assistant', got {list(self.roles)}")

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChatTemplate":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"ChatTemplate: unknown fields {sorted(unknown)}")
        return cls(**data)

    @property
    def special_tokens(self) -> list[str]:
        """Control strings of the form <|...|> that must be single tokens in the tokenizer."""
        found = re.findall(r"<\|[^|]+\|>", self.bos + self.turn_start + self.turn_end)
        return list(dict.fromkeys(found))

    @property
    def generation_prompt(self) -> str:
        return self.turn_start.replace("{role}", "assistant")

    def to_jinja(self) -> str:
        """The template as the Jinja string transformers, vLLM and llama.cpp read from
        tokenizer_config.json / GGUF (`chat_template`); renders exactly what `render` does."""
        head, tail = self.turn_start.split("{role}", 1)
        content = "message['content'] | trim" if self.strip_content else "message['content']"
        first = f"{{{{ {_jinja_str(self.bos)} }}}}" if self.bos else ""
        if self.default_system is not None:
            system = _jinja_str(head + "system" + tail + self.default_system + self.turn_end)
            first += f"{{% if messages[0]['role'] != 'system' %}}{{{{ {system} }}}}{{% endif %}}"
        return (
            "{% for message in messages %}"
            + (f"{{% if loop.first %}}{first}{{% endif %}}" if first else "")
            + f"{{{{ {_jinja_str(head)} + message['role'] + {_jinja_str(tail)} + ({content})"
            f" + {_jinja_str(self.turn_end)} }}}}"
            "{% endfor %}"
            f"{{% if add_generation_prompt %}}{{{{ {_jinja_str(self.generation_prompt)} }}}}{{% endif %}}"
        )

    # ---- rendering --------------------------------------------------------------------
    def pieces(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> list[Piece]:
        """Pieces whose concatenation is the rendered conversation."""
        validate_messages(messages, self.roles)
        msgs = list(messages)
        if self.default_system is not None and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system})
        out: list[Piece] = [Piece(self.bos, False, True)]
        rest = self.turn_end[len(self.end_of_turn):]
        for m in msgs:
            content = m["content"].strip() if self.strip_content else m["content"]
            mine = m["role"] == "assistant"
            out.append(Piece(self.turn_start.replace("{role}", m["role"]), False, True))
            out.append(Piece(content, mine, False))
            out.append(Piece(self.end_of_turn, mine, True))
            out.append(Piece(rest, False, True))
        if add_generation_prompt:
            out.append(Piece(self.generation_prompt, False, True))
        return [p for p in out if p.text]

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as text (with `add_generation_prompt`, ready for the reply)."""
        return "".join(p.text for p in self.pieces(messages, add_generation_prompt))

    def render_with_mask(
        self, messages: Sequence[dict[str, Any]], tokenizer: Any, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """Token ids of the rendered conversation and a 0/1 mask over them (1 = assistant target).

        `tokenizer`: an lmkit Tokenizer or a `transformers` tokenizer. Each piece is encoded on
        its own — the template's text with its control tokens, message content with control
        strings taken as plain text (a user cannot forge a turn) — so a reply is tokenized
        exactly as the model produces it after the generation prompt. Pieces meet at special
        tokens or at the line break that ends a turn header, where the usual pre-tokenizers
        split anyway, so the ids equal those of encoding the whole text (tested against
        `apply_chat_template`); they can differ only for content that begins with a line break
        under a pre-tokenizer that joins consecutive line breaks.
        """
        require_template_tokens(self, tokenizer)
        encode, _ = _adapter(tokenizer)
        ids: list[int] = []
        mask: list[int] = []
        for piece in self.pieces(messages, add_generation_prompt):
            piece_ids = encode(piece.text, piece.control)
            ids.extend(piece_ids)
            mask.extend([int(piece.trained)] * len(piece_ids))
        return ids, mask


def _adapter(tokenizer: Any) -> tuple[Callable[[str, bool], list[int]], Callable[[str], bool]]:
    """encode(text, control) and has_token(text) for lmkit and transformers tokenizers."""
    from lmkit.tokenizers.base import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        def encode(text: str, control: bool) -> list[int]:
            return tokenizer.encode(text, allowed_special="all" if control else "none")

        return encode, lambda t: tokenizer.token_to_id(t) is not None
    if callable(getattr(tokenizer, "get_vocab", None)) and callable(getattr(tokenizer, "encode", None)):
        vocab = tokenizer.get_vocab()

        def encode_hf(text: str, control: bool) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not control)

        return encode_hf, lambda t: t in vocab
    raise TokenizerError(
        f"render_with_mask needs an lmkit Tokenizer or a transformers tokenizer, got {type(tokenizer).__name__}"
    )


def _jinja_str(text: str) -> str:
    """`text` as a Jinja string literal (in {{ }}): 'single-quoted', with \\ and ' escaped."""
    if not text:
        return "''"
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def missing_template_tokens(template: ChatTemplate, tokenizer: Any) -> list[str]:
    """The template's control tokens (``<|im_start|>`` ...) that are not single tokens of
    `tokenizer` (an lmkit Tokenizer or a transformers tokenizer)."""
    _, has_token = _adapter(tokenizer)
    return [t for t in template.special_tokens if not has_token(t)]


def require_template_tokens(template: ChatTemplate, tokenizer: Any, model: str | None = None) -> None:
    """The one chat-template policy (chat, serve, sft, dpo, grpo, rag): a tokenizer must have
    a single token for each of the template's control tokens, or the model would be shown
    (and trained on) a spelling of them it can never produce as one step. Otherwise raise a
    TokenizerError that gives the command adding them (`model`: the checkpoint's path)."""
    missing = missing_template_tokens(template, tokenizer)
    if missing:
        option = f"--chat {template.name}" if template.name in TEMPLATES else "--tokens " + " ".join(
            f"'{t}'" for t in missing)
        raise TokenizerError(
            f"the tokenizer has no single token for {missing}, which the {template.name} chat template needs; "
            f"add them (and grow the model's embeddings) with: lmkit tokenizer add-tokens {model or 'MODEL'} "
            f"{option}"
        )


def validate_messages(messages: Sequence[dict[str, Any]], roles: Sequence[str]) -> None:
    """Raise a TokenizerError naming the first malformed message."""
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise TokenizerError("cannot render an empty conversation: give at least one message")
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
