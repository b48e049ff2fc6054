"""Structured output on a RANDOM-weight model, where only the constraint can make the output
parse: JSON schemas (validated by `jsonschema`), regexes and grammars through `generate`, the
serving engine, and the live server with the official `openai` client (response_format,
guided_regex / guided_grammar, tool_choice), plus streamed tool calls rebuilt by the client's
accumulator equal to the non-streamed ones.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer import generate
from lmkit.infer.constraint import TokenConstraint, allowed_rows
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from test_serve_util import build_tokenizer

llguidance = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from lmkit.infer.structured_output import (GrammarError, compile_choice, compile_grammar,  # noqa: E402
                                           compile_json_object, compile_json_schema, compile_regex)

PAD_ROWS = 8  # lm_head rows beyond the tokenizer (vocabulary padding): must never be chosen

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "score": {"type": "number", "minimum": -1.5, "maximum": 2.5}},
     "required": ["color", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 4},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 9999}, "admin": {"type": "boolean"}},
        "required": ["id", "admin"], "additionalProperties": False}},
     "required": ["user"], "additionalProperties": False},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    eos = tok.token_to_id("<|endoftext|>")
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size + PAD_ROWS, d_model=32,
                      n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=512, norm="rmsnorm",
                      activation="silu", gated_ffn=True, position="rope", initializer_range=0.5, eos_token_id=eos)
    torch.manual_seed(0)
    m = DecoderLM(cfg).eval()
    with torch.no_grad():  # make the padding rows the most likely: the mask must still keep them out
        m.lm_head.weight[tok.vocab_size:] = m.lm_head.weight[: PAD_ROWS].abs() * 50
    return m


def _prompt(tok, text="hello world"):
    return tok.encode(text)


# ---- generate ----------------------------------------------------------------------------
@pytest.mark.parametrize("schema", SCHEMAS)
def test_generate_json_schema_on_random_weights_validates(model, tok, schema):
    g = compile_json_schema(tok, schema)
    out = generate(model, [_prompt(tok), _prompt(tok, "x")], tokenizer=tok, constraint=g, max_new_tokens=80,
                   do_sample=True, seed=0)
    for text, reason, seq in zip(out.texts, out.finish_reasons, out.sequences):
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), schema)
        assert max(seq) < tok.vocab_size


def test_unconstrained_random_model_does_not_produce_json(model, tok):
    out = generate(model, [_prompt(tok)], tokenizer=tok, max_new_tokens=30)
    with pytest.raises(ValueError):
        json.loads(out.texts[0])


def test_regex_grammar_choice_and_json_object(model, tok):
    out = generate(model, [_prompt(tok)] * 3, tokenizer=tok, max_new_tokens=20, do_sample=True, seed=2,
                   constraint=compile_regex(tok, r"[0-9]{3}-[a-z]{2,4}"))
    assert all(re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t) for t in out.texts), out.texts
    gram = 'start: "yes" | "no" | "maybe " NUM\nNUM: /[0-9]{1,4}/'
    out = generate(model, [_prompt(tok)] * 3, tokenizer=tok, max_new_tokens=20, do_sample=True, seed=3,
                   constraint=compile_grammar(tok, gram))
    assert all(re.fullmatch(r"yes|no|maybe [0-9]{1,4}", t) for t in out.texts), out.texts
    out = generate(model, [_prompt(tok)], tokenizer=tok, max_new_tokens=10, constraint=compile_choice(tok, ["A", "BB"]))
    assert out.texts[0] in ("A", "BB")
    out = generate(model, [_prompt(tok)], tokenizer=tok, max_new_tokens=60, do_sample=True, seed=1,
                   constraint=compile_json_object(tok))
    if out.finish_reasons[0] == "stop":
        assert isinstance(json.loads(out.texts[0]), dict)
    else:
        assert out.texts[0].startswith("{")


def test_per_row_constraints_and_free_rows(model, tok):
    g = compile_regex(tok, "ab+")
    free = generate(model, [_prompt(tok)], tokenizer=tok, max_new_tokens=5)
    out = generate(model, [_prompt(tok), _prompt(tok)], tokenizer=tok, max_new_tokens=5,
                   constraint=[g.constraint([model.config.eos_token_id]), None])
    assert re.fullmatch("ab+", out.texts[0])
    assert out.sequences[1] == free.sequences[0]  # an unconstrained row is unchanged


def test_bad_inputs_are_clear_errors(model, tok):
    with pytest.raises(GrammarError):
        compile_regex(tok, "(unclosed")
    with pytest.raises(GrammarError):
        compile_grammar(tok, "start: undefined_rule")
    with pytest.raises(GrammarError):
        compile_json_schema(tok, "not a schema")
    g = compile_regex(tok, "a")
    with pytest.raises(ConfigError):
        g.constraint([])  # nowhere to end
    with pytest.raises(ConfigError):
        generate(model, [_prompt(tok)], tokenizer=tok, constraint=g, num_beams=2, max_new_tokens=3)


def test_constraint_protocol_and_masks(tok):
    g = compile_regex(tok, "x")
    c = g.constraint([0])
    assert isinstance(c, TokenConstraint)
    m = c.allowed_mask(tok.vocab_size + PAD_ROWS)
    assert m.dtype == torch.bool and not m[tok.vocab_size:].any() and not m[0]
    c.advance(tok.encode("x")[0])
    assert c.is_finished
    m = c.allowed_mask(tok.vocab_size + PAD_ROWS)
    assert m.nonzero().flatten().tolist() == [0]  # only the row's EOS
    rows = allowed_rows([None, g.constraint([0])], tok.vocab_size)
    assert rows.shape == (2, tok.vocab_size) and rows[0].all() and not rows[1].all()
    assert allowed_rows([None, None], 5) is None
