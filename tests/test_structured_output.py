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
                      n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=1024, norm="rmsnorm",
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


# ---- the live server with the official openai client ---------------------------------------
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

NAME = "random-tiny"
FORECAST_TOOL = {"type": "function", "function": {
    "name": "get_forecast", "description": "Weather forecast",
    "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "units": {"enum": ["metric", "imperial"]}}, "required": ["city", "days", "units"],
        "additionalProperties": False}}}
CLOCK_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(model, tok):
    from lmkit.serve.app import create_app
    from lmkit.serve.engine import Engine
    from test_serve_util import LiveServer

    engine = Engine(model, tok, max_batch_size=4)
    with LiveServer(create_app(engine, model_name=NAME, default_max_tokens=64)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _chat(text):
    return [{"role": "user", "content": text}]


def test_ten_schema_requests_through_the_server_all_validate(client):
    """Chat (response_format json_schema / json_object) and completions (guided_json), sampled and greedy."""
    for i in range(10):
        schema = SCHEMAS[i % len(SCHEMAS)]
        if i % 3 == 2:
            r = client.completions.create(model=NAME, prompt=f"item {i}:", max_tokens=80, temperature=1, seed=i,
                                          extra_body={"guided_json": schema})
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        else:
            fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
            r = client.chat.completions.create(model=NAME, messages=_chat(f"give item {i}"), max_tokens=80,
                                               temperature=1, seed=i, response_format=fmt)
            text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), schema)
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[3], "strict": True}}
    r = client.chat.completions.create(model=NAME, messages=_chat("two"), max_tokens=80, temperature=1, seed=7, n=2,
                                       response_format=fmt)
    for choice in r.choices:  # every choice has its own constraint
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[3])
    chunks = list(client.chat.completions.create(model=NAME, messages=_chat("two"), max_tokens=80, temperature=1,
                                                 seed=7, response_format=fmt, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    r = client.chat.completions.create(model=NAME, messages=_chat("json please"), max_tokens=64, temperature=1,
                                       seed=5, response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_guided_regex_grammar_and_choice_streamed_and_not(client):
    r = client.completions.create(model=NAME, prompt="phone:", max_tokens=20, temperature=0,
                                  extra_body={"guided_regex": r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"})
    assert re.fullmatch(r"\+[0-9]{2} [0-9]{3}-[0-9]{4}", r.choices[0].text)
    chunks = list(client.completions.create(model=NAME, prompt="phone:", max_tokens=20, temperature=0, stream=True,
                                            extra_body={"guided_regex": r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"}))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    gbnf = 'root ::= "(" [a-c]{1,6} ")"'
    r = client.chat.completions.create(model=NAME, messages=_chat("x"), max_tokens=20, temperature=1, seed=0,
                                       extra_body={"guided_grammar": gbnf})
    assert re.fullmatch(r"\([a-c]{1,6}\)", r.choices[0].message.content), r.choices[0].message.content
    r = client.chat.completions.create(model=NAME, messages=_chat("x"), max_tokens=20, temperature=0,
                                       extra_body={"guided_choice": ["alpha", "beta"]})
    assert r.choices[0].message.content in ("alpha", "beta")


@pytest.mark.parametrize("extra", [
    {"guided_regex": "(unclosed"},
    {"guided_grammar": "start: nothing_here"},
    {"guided_regex": "a", "guided_choice": ["a"]},
    {"response_format": {"type": "xml"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}},
])
def test_bad_structured_output_requests_are_400(client, extra):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=_chat("x"), max_tokens=5, extra_body=extra)


def _calls(message):
    return [(c.type, c.function.name, c.function.arguments) for c in message.tool_calls or []]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_stream_as_deltas_the_client_accumulates(client, tool_choice):
    """tool_choice required / named on a random model: the constraint makes a valid call; the
    official client's stream accumulator rebuilds the same tool_calls as the non-streamed reply."""
    kw = dict(model=NAME, messages=_chat("forecast?"), tools=[FORECAST_TOOL, CLOCK_TOOL], tool_choice=tool_choice,
              temperature=0, max_tokens=80)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    fn = {"get_forecast": FORECAST_TOOL, "get_time": CLOCK_TOOL}[call.function.name]["function"]
    jsonschema.validate(json.loads(call.function.arguments), fn["parameters"])
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_time"

    with client.chat.completions.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert _calls(final.choices[0].message) == _calls(choice.message)
    assert final.choices[0].finish_reason == "tool_calls"
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) > 1  # the arguments arrived in pieces, not in one final chunk
    raw = list(client.chat.completions.create(**kw, stream=True))
    first = next(tc for c in raw for tc in (c.choices[0].delta.tool_calls or []))
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == call.function.name


@pytest.mark.slow
def test_the_core_imports_without_llguidance():
    import subprocess
    import sys

    code = ("import sys; sys.modules['llguidance'] = None\n"
            "import lmkit.infer, lmkit.infer.structured_output, lmkit.serve.app, lmkit.serve.routes_chat\n"
            "from lmkit.errors import MissingDependencyError\n"
            "try:\n    lmkit.infer.structured_output.compile_regex(object(), 'a')\n"
            "except MissingDependencyError as e:\n    print('missing:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "lmkit[structured]" in out.stdout


def test_without_llguidance_requests_get_a_clear_400(client, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llguidance", None)  # the live server, in this process, loses it too
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=_chat("x"), max_tokens=5,
                                       response_format={"type": "json_object"})
    assert "lmkit[structured]" in str(err.value)
    # a forced tool call still works, started by the prompt only (as before structured output)
    r = client.chat.completions.create(model=NAME, messages=_chat("x"), max_tokens=5, tools=[CLOCK_TOOL],
                                       tool_choice="required")
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")
