"""A checkpoint's own chat template: the Jinja text in tokenizer_config.json, rendered as
`transformers.apply_chat_template` renders it.

Real checkpoints (Llama 3.1, Qwen2.5/3, Mistral, Gemma, Phi-3, DeepSeek ...) ship their
conversation format as a Jinja program, not as the turn strings `ChatTemplate` describes: it
decides where the system prompt goes, how tools and tool calls are written, what happens to
`<think>` blocks. So lmkit runs that program the way transformers does, and the text is the
same character for character (tests/test_chat_templates_jinja.py checks 9 published
templates against `apply_chat_template`):

- a sandboxed environment (`ImmutableSandboxedEnvironment`: templates from the internet are
  untrusted code) with ``trim_blocks``, ``lstrip_blocks`` and the ``loopcontrols`` extension;
- ``raise_exception(message)``, ``strftime_now(format)``, a ``tojson`` filter that does not
  HTML-escape (``json.dumps`` with ``ensure_ascii=False``, ``indent``, ``separators``,
  ``sort_keys``), ``dict`` and a ``namespace`` that refuses underscore names;
- the variables ``messages``, ``add_generation_prompt``, ``tools``, ``documents`` and the
  tokenizer's special tokens (``bos_token``, ``eos_token`` ...), plus any extra keywords
  (``enable_thinking`` ...). Message keys whose value is None are dropped and a message's
  reasoning (``reasoning_content``, ``thinking`` or ``reasoning``) is offered under the first two
  names, as transformers does.

A template that calls ``raise_exception`` (e.g. "Conversation roles must alternate
user/assistant/user/assistant/...") or fails otherwise gives a `ChatTemplateError` naming
the template and its message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from lmkit.errors import TokenizerError

# Private-use characters around control tokens found in user strings, so that they are encoded as
# plain text (a user cannot forge a turn); the same idea as transformers' sanitize_control_tokens.
_MARK_START, _MARK_END = "\ue000", "\ue001"
# End-of-turn tokens of the published templates, tried in this order when the template text holds one.
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<｜end▁of▁sentence｜>",
                          "<|endoftext|>", "</s>")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # a message's reasoning, by its names
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(TokenizerError):
    """A chat template failed to compile or to render (including its own raise_exception)."""


@lru_cache(maxsize=32)
def compile_template(source: str):
    """The compiled Jinja template, in transformers' environment (cached per source text)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:  # dict(...) without attribute access to the real type
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 — Jinja's own signature trick (namespace(self=...))
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_generation_tag_extension(), jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


@lru_cache(maxsize=1)
def _generation_tag_extension():
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker) renders its body."""
    import jinja2.ext
    import jinja2.nodes

    class GenerationTag(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag


def _plain(value: Any) -> Any:
    """What the template may see: plain JSON-like data (rich objects become a placeholder)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _mark(obj: Any, pattern: re.Pattern | None) -> Any:
    """Wrap control tokens inside user strings with the private markers (recursively)."""
    if pattern is None:
        return obj
    if isinstance(obj, str):
        obj = obj.replace(_MARK_START, "").replace(_MARK_END, "")
        return pattern.sub(lambda m: _MARK_START + m.group(0) + _MARK_END, obj)
    if isinstance(obj, dict):
        return {k: _mark(v, pattern) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark(v, pattern) for v in obj]
    return obj


_MARKED = re.compile(f"{_MARK_START}(.*?){_MARK_END}|[{_MARK_START}{_MARK_END}]", re.S)


def _special_token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@dataclass(frozen=True)
class JinjaChatTemplate:
    """A Jinja chat template with the special tokens it is rendered with.

    Offers what lmkit's chat code needs of a template (`render`, `render_with_mask`, `name`,
    `end_of_turn`, `to_jinja`) next to the built-in `ChatTemplate`s.
    """

    source: str
    name: str = "checkpoint"
    special_tokens_map: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token ... (text)
    end_of_turn: str | None = None  # the token a reply ends with; None: found in the template text
    default_system: None = None  # the template writes its own default system prompt, if any
    special_tokens: tuple[str, ...] = ()  # nothing to check: the checkpoint's tokenizer ships its tokens
    tool_use: "JinjaChatTemplate | None" = None  # the checkpoint's "tool_use" template, for requests with tools

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ChatTemplateError(f"chat template {self.name!r} is empty")
        try:
            compile_template(self.source)
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            raise ChatTemplateError(
                f"chat template {self.name!r} does not compile: {type(exc).__name__}: {exc}") from exc
        specials = {k: t for k, v in dict(self.special_tokens_map).items()
                    if k in SPECIAL_TOKEN_KEYS and (t := _special_token_text(v)) is not None}
        object.__setattr__(self, "special_tokens_map", specials)
        if self.end_of_turn is None:
            object.__setattr__(self, "end_of_turn", self._find_end_of_turn())

    @classmethod
    def from_tokenizer_config(cls, config: dict, source: str, name: str = "checkpoint") -> "JinjaChatTemplate":
        """The template `source` with the special tokens of a tokenizer_config.json object."""
        return cls(source, name, {k: config[k] for k in SPECIAL_TOKEN_KEYS if k in config})

    def _find_end_of_turn(self) -> str | None:
        """The eos token when the template writes it literally, else a known end-of-turn token it
        writes (Phi-3's <|end|>, Gemma's <end_of_turn>), else the eos token it writes by name."""
        eos = self.special_tokens_map.get("eos_token")
        if eos and eos in self.source:
            return eos
        found = next((t for t in END_OF_TURN_CANDIDATES if t in self.source), None)
        return found or (eos if eos and re.search(r"\beos_token\b", self.source) else None)

    @property
    def uses_tools(self) -> bool:
        """Whether the template reads the `tools` variable (writes the tool list itself)."""
        return re.search(r"\btools\b", self.source) is not None

    def to_jinja(self) -> str:
        return self.source

    def for_tools(self, tools: Sequence[dict] | None) -> "JinjaChatTemplate":
        """The template for a request: the "tool_use" one when tools are given and the checkpoint
        has it (transformers' choice), else this one."""
        return self.tool_use if tools is not None and self.tool_use is not None else self

    # ---- rendering --------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
               tools: Sequence[dict] | None = None, documents: Sequence[dict] | None = None, **kwargs: Any) -> str:
        """The conversation as text, exactly as `apply_chat_template(..., tokenize=False)`."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise TokenizerError("cannot render an empty conversation: give at least one message")
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise TokenizerError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in REASONING_FIELDS if k in m), None)
            if reasoning is not None:  # templates read reasoning_content (gpt-oss: thinking), as transformers fills
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            msgs.append(m)
        return self._render(_plain(msgs), add_generation_prompt, tools, documents, kwargs)

    def _render(self, msgs: list, add_generation_prompt: bool, tools, documents, kwargs: dict) -> str:
        if documents is not None and any(not isinstance(d, dict) for d in documents):
            raise TokenizerError("documents must be a list of dicts with 'title' and 'text' keys")
        variables = {**self.special_tokens_map, **_plain(kwargs)}
        template = compile_template(self.source)
        try:
            return template.render(messages=msgs, tools=_plain(list(tools)) if tools is not None else None,
                                   documents=_plain(list(documents)) if documents is not None else None,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except Exception as exc:
            import jinja2

            what = "raised" if type(exc) is jinja2.exceptions.TemplateError else f"failed ({type(exc).__name__})"
            raise ChatTemplateError(f"chat template {self.name!r} {what}: {exc}") from exc

    def encode(self, messages: Sequence[dict[str, Any]], tokenizer: Any, add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None, **kwargs: Any) -> list[int]:
        """Token ids of the rendered conversation: the template's text with its control tokens, and
        control strings a user typed into messages or tools as plain text (a user cannot forge a
        turn) — unless marking them would change what the template renders (a template that
        parses content, such as Qwen3's split at ``</think>``); then the ids are those of
        `apply_chat_template(..., tokenize=True)`."""
        ids, _ = self._encode_spans(messages, tokenizer, add_generation_prompt, tools, kwargs, mask=False)
        return ids

    def render_with_mask(self, messages: Sequence[dict[str, Any]], tokenizer: Any, add_generation_prompt: bool = False,
                         tools: Sequence[dict] | None = None, **kwargs: Any) -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 mask (1 = assistant target) for supervised fine-tuning.

        An assistant turn is trained from where the conversation before it, rendered with the
        generation prompt, ends, through its end-of-turn token (or, without a known one, up to
        where the conversation that ends with it ends). A template whose earlier text changes
        when a turn is added (e.g. one that drops a system turn it cannot place) gives a
        ChatTemplateError: its mask would be guesswork.
        """
        return self._encode_spans(messages, tokenizer, add_generation_prompt, tools, kwargs, mask=True)

    def _encode_spans(self, messages, tokenizer, add_generation_prompt, tools, kwargs, mask: bool):
        from lmkit.tokenizers.chat_template import _adapter

        encode, _ = _adapter(tokenizer)
        text = self.render(messages, add_generation_prompt, tools, **kwargs)
        pattern = _control_pattern(tokenizer)
        if pattern is not None and (pattern.search(json.dumps(_plain(list(messages)), ensure_ascii=False))
                                    or (tools is not None and pattern.search(json.dumps(_plain(list(tools)))))):
            marked = _mark(messages, pattern)
            marked_tools = _mark(list(tools), pattern) if tools is not None else None
            marked_text = self.render(marked, add_generation_prompt, marked_tools, **kwargs)
            # a template that parses content (e.g. splits at </think>) may see the marks: then the
            # text transformers renders wins, and control strings in it stay control tokens
            if marked_text.replace(_MARK_START, "").replace(_MARK_END, "") == text:
                messages, tools, text = marked, marked_tools, marked_text
        spans = self._assistant_spans(messages, text, tools, kwargs) if mask else []
        ids: list[int] = []
        flags: list[int] = []
        cuts = sorted({0, len(text), *(p for s in spans for p in s)})
        for a, b in zip(cuts, cuts[1:]):
            trained = any(s <= a and b <= e for s, e in spans)
            for k, piece in enumerate(_MARKED.split(text[a:b])):
                if not piece:
                    continue
                piece_ids = encode(piece, k % 2 == 0)  # odd pieces: control strings a user wrote
                ids.extend(piece_ids)
                flags.extend([int(trained)] * len(piece_ids))
        return ids, flags

    def _assistant_spans(self, msgs, text: str, tools, kwargs) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") != "assistant":
                continue
            before = self.render(msgs[:i], True, tools, **kwargs) if i else ""
            if not text.startswith(before):
                raise ChatTemplateError(
                    f"chat template {self.name!r}: the text before assistant turn {i} changes when the turn is added, "
                    "so which tokens to train on is unclear; use a template whose earlier turns render the same")
            start = len(before)
            end = text.find(self.end_of_turn, start) if self.end_of_turn else -1
            if end >= 0:
                end += len(self.end_of_turn)
            else:
                upto = self.render(msgs[: i + 1], False, tools, **kwargs)
                end = len(upto) if text.startswith(upto) else len(text)
            spans.append((start, end))
        return spans


def _control_pattern(tokenizer: Any) -> re.Pattern | None:
    """A regex matching the tokenizer's special/added tokens (longest first), or None."""
    tokens: list[str] = []
    specials = getattr(tokenizer, "special_tokens", None)
    if isinstance(specials, dict):
        tokens = list(specials)
    elif isinstance(getattr(tokenizer, "added_tokens_encoder", None), dict):
        tokens = list(tokenizer.added_tokens_encoder)
    tokens = [t for t in tokens if t and not t.isspace()]
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
