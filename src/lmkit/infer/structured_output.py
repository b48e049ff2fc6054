"""Structured output: JSON schemas, regular expressions and grammars as per-step token masks.

Compiling is done by llguidance (the `structured` extra), the engine behind guidance and
used by vLLM, SGLang and llama.cpp: it takes a JSON schema, a regex or a Lark grammar
(GBNF is converted), works on any vocabulary given as the bytes of each token id, and
computes a step's mask in tens of microseconds (an Earley parser over a token trie; no
per-schema precompilation of the whole vocabulary).

    g = compile_json_schema(tokenizer, {"type": "object", ...})   # or compile_regex / compile_grammar
    out = generate(model, [prompt_ids], tokenizer=tokenizer, constraint=g)

A `CompiledGrammar` is a `ConstraintFactory` (constraint.py): `g.constraint(eos_ids)` gives a
`GrammarConstraint` for one sequence. The tokenizer's description (token bytes per id,
special tokens never allowed by a grammar) is built once per tokenizer and reused; the same
grammar text compiles once and is copied per sequence.

EOS: a grammar allows its end only where the text is complete; there the row's EOS ids are
allowed (and, once the grammar can go no further, nothing else). So generation ends by the
decode core's ordinary EOS handling; `max_tokens` can still cut a reply short (finish
reason "length"), as in OpenAI's API.

JSON is generated compactly with Python's separators (", " and ": ", no other whitespace):
short, and the way most training data spells JSON.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError, require
from lmkit.infer.vocab_padding import renderable_size

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SPECIAL = b"\xff"  # llguidance's marker for special tokens: no grammar ever allows them
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
MAX_CACHED_GRAMMARS = 64


class GrammarError(ConfigError):
    """A schema, regex or grammar that cannot be compiled."""


def _llg():
    return require("llguidance", "structured")


def available() -> bool:
    """Whether llguidance (the `structured` extra) is installed."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def token_bytes_table(tokenizer) -> list[bytes]:
    """The bytes of every id the tokenizer can render; special tokens (and ids without bytes) marked special."""
    n = renderable_size(tokenizer)
    if n is None:
        raise ConfigError("structured output needs a tokenizer")
    special = set(int(i) for i in (getattr(tokenizer, "special_tokens", None) or {}).values())
    tb = getattr(tokenizer, "token_bytes", None)
    out = []
    for i in range(n):
        if i in special:
            out.append(_SPECIAL + f"<special_{i}>".encode())
            continue
        try:
            data = tb(i) if callable(tb) else tokenizer.decode([i]).encode("utf-8")
        except Exception:
            data = b""
        out.append(data if data else _SPECIAL + f"<empty_{i}>".encode())
    return out


class _VocabInfo:
    """What llguidance needs to know about a tokenizer (`TokenizerWrapper` duck type)."""

    def __init__(self, tokenizer) -> None:
        self.tokens = token_bytes_table(tokenizer)
        self.special_token_ids = [i for i, t in enumerate(self.tokens) if t.startswith(_SPECIAL)]
        # llguidance reserves one EOS id; the row's own EOS ids are allowed in its place (GrammarConstraint)
        self.eos_token_id = self.special_token_ids[0] if self.special_token_ids else len(self.tokens) - 1
        self.bos_token_id = None
        self._tokenizer = tokenizer

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return list(self._tokenizer.encode(text))


def ll_tokenizer(tokenizer):
    """The llguidance tokenizer of `tokenizer` (built once per tokenizer object)."""
    llg = _llg()
    with _LOCK:
        try:
            cached = _TOKENIZERS.get(tokenizer)
        except TypeError:  # not weak-referenceable
            cached = None
        if cached is None:
            info = _VocabInfo(tokenizer)
            cached = (llg.LLTokenizer(llg.TokenizerWrapper(info)), info.eos_token_id)
            try:
                _TOKENIZERS[tokenizer] = cached
            except TypeError:
                pass
        return cached


class CompiledGrammar:
    """A grammar compiled for one tokenizer; `constraint(eos_ids)` starts a sequence under it."""

    def __init__(self, tokenizer, grammar: str, description: str = "grammar") -> None:
        llg = _llg()
        self.lltok, self.ll_eos = ll_tokenizer(tokenizer)
        self.vocab = self.lltok.vocab_size
        self.grammar, self.description = grammar, description  # the source: other processes recompile it
        self._proto = llg.LLMatcher(self.lltok, grammar, log_level=0)
        if self._proto.is_error():
            raise GrammarError(f"invalid {description}: {self._proto.get_error()}")

    def constraint(self, eos_ids: Sequence[int]) -> "GrammarConstraint":
        c = GrammarConstraint(self._proto.deep_copy(), self.vocab, self.ll_eos, eos_ids)
        c.source = (self.grammar, self.description)
        return c


class GrammarConstraint:
    """One sequence under a compiled grammar (a `TokenConstraint`)."""

    def __init__(self, matcher, vocab: int, ll_eos: int, eos_ids: Sequence[int]) -> None:
        self.eos_ids = [int(e) for e in eos_ids]
        if not self.eos_ids:
            raise ConfigError("structured output needs an end-of-sequence token id to end on (set eos_token_id)")
        self.matcher, self.vocab, self.ll_eos = matcher, vocab, ll_eos
        self.source: tuple[str, str] | None = None  # (grammar, description) when made by a CompiledGrammar
        self._words = torch.empty(1, (vocab + 31) // 32, dtype=torch.int32)

    @property
    def is_finished(self) -> bool:
        return self.matcher.is_stopped()

    def allowed_mask(self, vocab_size: int) -> torch.Tensor:
        m = self.matcher
        if m.is_error():
            raise GrammarError(f"structured output failed: {m.get_error()}")
        out = torch.zeros(vocab_size, dtype=torch.bool)
        if not m.is_stopped():
            w = self._words
            m.unsafe_compute_mask_ptr(w.data_ptr(), w.numel() * 4)
            # bit i of 32-bit word j is id 32 j + i (little-endian words): unpack as bytes, low bit first
            bits = np.unpackbits(w.numpy()[0].astype("<i4", copy=False).view(np.uint8), bitorder="little")
            n = min(self.vocab, vocab_size)
            out[:n] = torch.from_numpy(bits[:n].view(np.bool_))
            out[self.ll_eos] = False
        if m.is_accepting() or m.is_stopped():
            for e in self.eos_ids:
                if 0 <= e < vocab_size:
                    out[e] = True
        if not out.any():
            raise GrammarError("structured output: no token can continue the grammar (the vocabulary cannot spell it)")
        return out

    def advance(self, token: int) -> None:
        token = int(token)
        if token in self.eos_ids:
            token = self.ll_eos
        if not self.matcher.consume_token(token):
            raise GrammarError(f"structured output: token {token} does not fit the grammar: {self.matcher.get_error()}")


_GRAMMARS: "OrderedDict[tuple, CompiledGrammar]" = OrderedDict()


def _compiled(tokenizer, kind: str, grammar: str, description: str) -> CompiledGrammar:
    """Compile once per (tokenizer, grammar); later requests copy the compiled matcher."""
    lltok, _ = ll_tokenizer(tokenizer)
    key = (id(lltok), kind, grammar)  # a cached grammar holds its lltok, so the id is not reused meanwhile
    with _LOCK:
        hit = _GRAMMARS.get(key)
        if hit is not None:
            _GRAMMARS.move_to_end(key)
            return hit
    g = CompiledGrammar(tokenizer, grammar, description)
    with _LOCK:
        _GRAMMARS[key] = g
        while len(_GRAMMARS) > MAX_CACHED_GRAMMARS:
            _GRAMMARS.popitem(last=False)
    return g


def constraint_from_source(tokenizer, source: tuple[str, str], eos_ids: Sequence[int]) -> GrammarConstraint:
    """A fresh `GrammarConstraint` from another process's `constraint.source` (llguidance's matcher
    does not pickle; the grammar text does), compiled once per grammar for `tokenizer`."""
    grammar, description = source
    return _compiled(tokenizer, "source", grammar, description).constraint(eos_ids)


def json_schema_grammar(schema: dict | bool) -> str:
    """The llguidance grammar of a JSON schema (a GrammarError if it is not one)."""
    llg = _llg()
    try:
        return llg.LLMatcher.grammar_from_json_schema(schema if isinstance(schema, str) else json.dumps(schema),
                                                      overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from None


def compile_json_schema(tokenizer, schema: dict | bool) -> CompiledGrammar:
    """Output that is one JSON value valid under `schema`."""
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return _compiled(tokenizer, "json", json_schema_grammar(schema), "JSON schema")


def compile_json_object(tokenizer) -> CompiledGrammar:
    """Output that is any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
    return compile_json_schema(tokenizer, {"type": "object"})


def compile_regex(tokenizer, pattern: str) -> CompiledGrammar:
    """Output that matches `pattern` in full (Rust `regex` syntax, no look-around or backreferences)."""
    if not isinstance(pattern, str) or not pattern:
        raise GrammarError("a regex must be a non-empty string")
    return _compiled(tokenizer, "regex", _llg().LLMatcher.grammar_from_regex(pattern), "regex")


def compile_grammar(tokenizer, grammar: str) -> CompiledGrammar:
    """Output in the language of a Lark grammar (llguidance's dialect, `start` rule; `%json {...}`
    embeds a JSON schema) or a GBNF grammar (llama.cpp's, `root` rule)."""
    if not isinstance(grammar, str) or not grammar.strip():
        raise GrammarError("a grammar must be a non-empty string")
    _llg()
    from llguidance import grammar_from

    try:
        text = grammar_from("grammar", grammar)
    except ValueError as exc:
        raise GrammarError(f"invalid grammar: {exc}") from None
    return _compiled(tokenizer, "grammar", text, "grammar")


def compile_choice(tokenizer, choices: Sequence[str]) -> CompiledGrammar:
    """Output that is exactly one of `choices`."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise GrammarError("choices must be a non-empty list of non-empty strings")
    lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return compile_grammar(tokenizer, lark)
