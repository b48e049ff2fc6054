"""The OpenAI-compatible server, live: uvicorn on 127.0.0.1, driven by the official `openai` client.

Oracles: `lmkit.infer.generate` and `transformers.generate` (greedy) on the same weights and
prompt ids; transformers' Llama hidden states for the embeddings; the OpenAI API reference for
response and error shapes (the client parses them into its typed objects).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
import torch

from lmkit.hub import load_pretrained
from lmkit.infer import generate
from lmkit.serve.app import create_app
from lmkit.serve.chat_model import prepare_chat
from lmkit.serve.engine import Engine
from lmkit.tokenizers.chat_template import CHATML
from lmkit.tokenizers.loading import load_tokenizer
from test_serve_util import (FINAL_REPLY, GREETING, GREETING_REPLY, TOOL_QUESTION, WEATHER_TOOL, LiveServer,
                             cached_chat_dir, tool_followup)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "sk-test-123"
NAME = "tiny-chat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_chat_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def local(model_dir):
    return load_pretrained(model_dir), load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    model, tok = load_pretrained(model_dir), load_tokenizer(model_dir)
    engine = Engine(model, tok, max_batch_size=4)  # fewer slots than concurrent requests: the queue is used
    app = create_app(engine, model_name=NAME, api_keys=[KEY], max_body_bytes=64 * 1024, default_max_tokens=64)
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def expected(local, prompt_ids, max_tokens, **kw):
    model, tok = local
    out = generate(model, [prompt_ids], max_new_tokens=max_tokens, tokenizer=tok, **kw)
    return out.texts[0], out.finish_reasons[0], out.sequences[0]


def expected_chat(local, messages, max_tokens, stop=None, tools=None):
    model, tok = local
    prep = prepare_chat(model, tok, CHATML, messages, tools=tools, stop=stop)
    return expected(local, prep.prompt_ids, max_tokens, stop=prep.stop, eos_token_id=prep.eos_ids)


# ---- models, completions -------------------------------------------------------------------
def test_models_list(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


PROMPTS = ["Once upon a time", "What is the weather", "你好 🌍", "Current weather of a city"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_greedy_equals_generate_and_transformers(client, local, model_dir, prompt):
    model, tok = local
    ids = tok.encode(prompt)
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    text, finish, seq = expected(local, ids, 12)
    assert r.choices[0].text == text and r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(seq)
    # independent oracle: transformers' own greedy decoding of the same checkpoint
    transformers = pytest.importorskip("transformers")
    hf = _hf_model(model_dir, transformers)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=[],
                          pad_token_id=0)[0, len(ids):].tolist()
    eos = model.config.eos_token_id
    if eos in out:
        out = out[: out.index(eos) + 1]
    assert out == seq


_HF = {}


def _hf_model(model_dir, transformers):
    if "m" not in _HF:
        _HF["m"] = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    return _HF["m"]


def test_completion_stream_token_ids_prompt_n_and_logprobs(client, local):
    model, tok = local
    ids = tok.encode("Say hello.")
    text, finish, seq = expected(local, ids, 10, logprobs=True, top_logprobs=2)
    chunks = list(client.completions.create(model=NAME, prompt=ids, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish
    r = client.completions.create(model=NAME, prompt=[ids, tok.encode("Once")], max_tokens=10, temperature=0,
                                  logprobs=2, echo=True, n=2)
    assert len(r.choices) == 4 and r.choices[0].text == tok.decode(ids) + text
    ref = generate(model, [ids], max_new_tokens=10, logprobs=True, top_logprobs=2, tokenizer=tok)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(ref.logprobs[0], abs=1e-5)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert r.usage.prompt_tokens == len(ids) + len(tok.encode("Once"))


def test_completion_sampling_is_seeded_and_matches_generate(client, local):
    model, tok = local
    ids = tok.encode("Once upon a time")
    kw = dict(temperature=0.9, top_p=0.8, presence_penalty=0.5, frequency_penalty=0.4)
    a = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=15, seed=7, **kw)
    b = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=15, seed=7, **kw)
    assert a.choices[0].text == b.choices[0].text
    text, _, _ = expected(local, ids, 15, do_sample=True, seed=7, **kw)
    assert a.choices[0].text == text


# ---- chat --------------------------------------------------------------------------------------
def test_chat_non_stream_and_stream(client, local):
    r = client.chat.completions.create(model=NAME, messages=GREETING, temperature=0, max_tokens=30)
    text, finish, seq = expected_chat(local, GREETING, 30)
    assert text == GREETING_REPLY  # the model learned its line
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text and r.choices[0].finish_reason == finish == "stop"
    assert r.usage.completion_tokens == len(seq) and r.usage.total_tokens == r.usage.prompt_tokens + len(seq)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")

    stream = client.chat.completions.create(model=NAME, messages=GREETING, temperature=0, max_tokens=30,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == len(seq)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_raw_sse_ends_with_done(server):
    body = {"model": NAME, "messages": GREETING, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        json.loads(e[6:])


def test_chat_n_stop_and_logprobs(client, local):
    msgs = GREETING
    r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=30, n=3, stop=["你"])
    text, finish, _ = expected_chat(local, msgs, 30, stop=["你"])
    assert text == "Hello! " and finish == "stop"
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == text and c.finish_reason == "stop" for c in r.choices)
    # sampled choices differ (seed + i), and the same seed reproduces them
    kw = dict(model=NAME, messages=msgs, temperature=1.5, max_tokens=8, n=3, seed=11)
    a = [c.message.content for c in client.chat.completions.create(**kw).choices]
    b = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert a == b and len(set(a)) > 1
    lp = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=5, logprobs=True,
                                        top_logprobs=3).choices[0].logprobs.content
    assert len(lp) == 5 and all(len(t.top_logprobs) == 3 for t in lp)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in lp)  # greedy picks the top token
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in lp) == GREETING_REPLY[: len("".join(
        bytes(t.bytes).decode("utf-8", "replace") for t in lp))]


def test_sixteen_concurrent_streaming_chats(server, local):
    questions = [[{"role": "user", "content": q}] for q in (
        "Say hello.", "What is the weather in Paris?", "你好", "Once upon a time", "weather", "Hello!",
        "How can I help?", "city", "a", "bb", "Current weather", "sunny", "degrees 21", "tool", "🌍", "name")]
    lengths = [8 + 3 * i for i in range(16)]  # different lengths: rows join and leave the batch at different steps
    want = [expected_chat(local, q, n) for q, n in zip(questions, lengths)]

    async def one(client, q, n):
        stream = await client.chat.completions.create(model=NAME, messages=q, temperature=0, max_tokens=n,
                                                      stream=True)
        parts, finish = [], None
        async for c in stream:
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
                finish = c.choices[0].finish_reason or finish
        return "".join(parts), finish

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(one(c, q, n) for q, n in zip(questions, lengths)))

    got = asyncio.run(main())
    assert got == [(t, f) for t, f, _ in want]


# ---- tools -------------------------------------------------------------------------------------
def test_tool_call_round_trip(client, local):
    r = client.chat.completions.create(model=NAME, messages=TOOL_QUESTION, tools=[WEATHER_TOOL], temperature=0,
                                       max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # the call and the tool's answer are rendered back; the model then answers in words
    r2 = client.chat.completions.create(model=NAME, messages=tool_followup(), tools=[WEATHER_TOOL], temperature=0,
                                        max_tokens=60)
    assert r2.choices[0].message.content == FINAL_REPLY and r2.choices[0].finish_reason == "stop"
    # streamed: the call arrives as tool_calls deltas (name first, then pieces of the arguments),
    # accumulated by index as the OpenAI SDK docs show, equal to the non-streamed call
    chunks = list(client.chat.completions.create(model=NAME, messages=TOOL_QUESTION, tools=[WEATHER_TOOL],
                                                 temperature=0, max_tokens=60, stream=True))
    calls: dict[int, list[str]] = {}
    for tc in (tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])):
        name, args = calls.setdefault(tc.index, ["", ""])
        calls[tc.index] = [name + (tc.function.name or ""), args + (tc.function.arguments or "")]
    assert [(n, json.loads(a)) for n, a in calls.values()] == [("get_weather", {"city": "Paris"})]
    assert calls[0][1] == call.function.arguments
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # tool_choice="none" hides the tools: no tool block in the prompt, nothing parsed
    r3 = client.chat.completions.create(model=NAME, messages=TOOL_QUESTION, tools=[WEATHER_TOOL], tool_choice="none",
                                        temperature=0, max_tokens=20)
    assert r3.choices[0].message.tool_calls is None
    assert r3.usage.prompt_tokens < r.usage.prompt_tokens


def test_named_tool_choice_forces_the_call(client):
    r = client.chat.completions.create(
        model=NAME, messages=GREETING, tools=[WEATHER_TOOL], temperature=0, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    # the reply starts inside a get_weather call whatever the model prefers; if its arguments are
    # not valid JSON the text comes back as content instead (nothing invented)
    if choice.message.tool_calls:
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.message.content.startswith('<tool_call>\n{"name": "get_weather", "arguments": ')
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=GREETING, tools=[WEATHER_TOOL], max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


# ---- embeddings --------------------------------------------------------------------------------
def test_embeddings_match_transformers_last_token(client, local, model_dir):
    transformers = pytest.importorskip("transformers")
    model, tok = local
    texts = ["Hello!", "What is the weather in Paris?", "你好 🌍"]
    r = client.embeddings.create(model=NAME, input=texts)  # the client asks for base64 by default
    f = client.embeddings.create(model=NAME, input=texts, encoding_format="float")
    hf = _hf_model(model_dir, transformers)
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        with torch.no_grad():
            h = hf.model(torch.tensor([ids])).last_hidden_state[0, -1]
        ref = torch.nn.functional.normalize(h, dim=0)
        assert torch.allclose(torch.tensor(r.data[i].embedding), ref, atol=1e-4)
        assert torch.allclose(torch.tensor(f.data[i].embedding), ref, atol=1e-4)
    assert r.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)
    one = client.embeddings.create(model=NAME, input=tok.encode("Hello!"), encoding_format="float")
    assert torch.allclose(torch.tensor(one.data[0].embedding), torch.tensor(f.data[0].embedding), atol=1e-5)


# ---- errors ------------------------------------------------------------------------------------
def _post(server, body: bytes | str, key: str | None = KEY, path="/v1/chat/completions"):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(server.url + path, content=body, headers=headers, timeout=60)


def _openai_error(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_api_keys(server):
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
    resp = httpx.get(server.url + "/v1/models")
    assert resp.status_code == 401 and "missing API key" in _openai_error(resp)["message"]
    ok = {"model": NAME, "messages": GREETING, "max_tokens": 2}
    resp = _post(server, json.dumps(ok), key="sk-other")
    assert resp.status_code == 401 and _openai_error(resp)["type"] == "authentication_error"
    assert httpx.get(server.url + "/health").status_code == 200  # outside /v1: open


BAD = [
    (b'{"model": "tiny-chat", "messages": [', 400, "invalid_json"),
    (json.dumps({"model": NAME, "messages": "hello"}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": GREETING, "max_tokens": "many"}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": GREETING, "temperature": 7}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": GREETING, "n": 0}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": []}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": [{"content": "no role"}]}), 400, "invalid_value"),
    (json.dumps({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}), 400, None),
    (json.dumps({"model": NAME, "messages": GREETING, "max_tokens": 5000}), 400, "context_length_exceeded"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "weather " * 2000}]}), 400,
     "context_length_exceeded"),
    (json.dumps({"model": "gpt-9", "messages": GREETING}), 404, "model_not_found"),
    (json.dumps({"model": NAME, "messages": GREETING, "stop": ["a", "b", "c", "d", "e"]}), 400, None),
    (b"x" * (100 * 1024), 413, "request_too_large"),
]


@pytest.mark.parametrize("body,status,code", BAD, ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD)])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, status, code):
    resp = _post(server, body)
    assert resp.status_code == status, resp.text
    error = _openai_error(resp)
    if code:
        assert error["code"] == code
    if code == "context_length_exceeded":
        assert "1024" in error["message"]  # says what the limit is
    r = client.chat.completions.create(model=NAME, messages=GREETING, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chunked_oversized_body_and_unknown_routes(server):
    def gen():
        for _ in range(100):
            yield b" " * 1024

    resp = httpx.post(server.url + "/v1/chat/completions", content=gen(),
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert resp.status_code == 413 and _openai_error(resp)
    resp = httpx.get(server.url + "/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 404 and _openai_error(resp)["type"] == "not_found_error"
    resp = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 405 and _openai_error(resp)
    resp = _post(server, json.dumps({"model": NAME, "input": ""}), path="/v1/embeddings")
    assert resp.status_code == 400 and _openai_error(resp)


def test_health_metrics_and_page(server, client):
    client.chat.completions.create(model=NAME, messages=GREETING, temperature=0, max_tokens=3)
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == NAME
    text = httpx.get(server.url + "/metrics").text
    # Prometheus text format: HELP/TYPE lines, then `name{labels} value` samples
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? [-+0-9.eEInf]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    ok = re.search(r'lmkit_requests_total\{path="/v1/chat/completions",status="200"\} (\d+)', text)
    assert ok and int(ok.group(1)) >= 1
    assert re.search(r"lmkit_generation_tokens_total (\d+)", text).group(1) != "0"
    buckets = [int(v) for v in re.findall(
        r'lmkit_request_duration_seconds_bucket\{path="/v1/chat/completions",le="[^"]+"\} (\d+)', text)]
    assert buckets == sorted(buckets) and buckets[-1] == int(re.search(
        r'lmkit_request_duration_seconds_count\{path="/v1/chat/completions"\} (\d+)', text).group(1))
    assert "lmkit_waiting_requests" in text and "lmkit_decode_batch_rows_total" in text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and NAME in page.text


def test_client_disconnect_cancels_the_request(server):
    import time

    engine = server.app.state.engine
    body = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0, "stream": True}
    before = engine.stats.generated_tokens
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
    # the connection is closed: the engine drops the row instead of generating all 900 tokens
    deadline = time.time() + 30
    while engine.running and time.time() < deadline:
        time.sleep(0.01)
    assert engine.running == 0
    time.sleep(0.2)
    assert engine.stats.generated_tokens - before < 900


def test_engine_failure_is_a_500_in_openai_shape_and_the_engine_recovers(local):
    model, tok = local
    engine = Engine(model, tok, max_batch_size=2)
    real_step = engine._decode_step
    calls = {"n": 0}

    def broken_once():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        return real_step()

    engine._decode_step = broken_once
    with LiveServer(create_app(engine, model_name=NAME)) as live:
        resp = httpx.post(live.url + "/v1/completions", json={"model": NAME, "prompt": "Once", "max_tokens": 20,
                                                              "temperature": 0}, timeout=60)
        assert resp.status_code == 500
        error = _openai_error(resp)
        assert error["type"] == "server_error" and "simulated out of memory" in error["message"]
        ok = httpx.post(live.url + "/v1/completions", json={"model": NAME, "prompt": "Once", "max_tokens": 5,
                                                            "temperature": 0}, timeout=60)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == expected(local, tok.encode("Once"), 5)[0]


def test_failures_carry_a_request_id_are_logged_and_counted_by_cause(local, caplog):
    import logging

    model, tok = local
    engine = Engine(model, tok, max_batch_size=2)
    real_step, real_submit = engine._decode_step, engine.submit
    fail = {"step": False, "submit": False}

    def step():
        if fail["step"]:
            fail["step"] = False
            raise RuntimeError("simulated out of memory")
        return real_step()

    def submit(*args, **kw):
        if fail["submit"]:
            fail["submit"] = False
            raise RuntimeError("simulated bug")
        return real_submit(*args, **kw)

    engine._decode_step, engine.submit = step, submit
    body = {"model": NAME, "prompt": "Once", "max_tokens": 20, "temperature": 0}
    caplog.set_level(logging.ERROR, logger="lmkit.serve.failures")
    with LiveServer(create_app(engine, model_name=NAME)) as live:
        ok = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
        assert ok.status_code == 200 and ok.headers["x-request-id"]  # every response has an id
        fail["step"] = True
        resp = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
        rid = resp.headers["x-request-id"]
        assert resp.status_code == 500 and rid in _openai_error(resp)["message"]
        fail["step"] = True
        with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
            stream_rid = s.headers["x-request-id"]
            events = [line for line in s.iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        errors = [json.loads(e[6:])["error"] for e in events[:-1] if "error" in json.loads(e[6:])]
        assert len(errors) == 1 and "simulated out of memory" in errors[0]["message"]
        assert stream_rid in errors[0]["message"]
        fail["submit"] = True
        resp = httpx.post(live.url + "/v1/completions", json=body, headers={"x-request-id": "trace-7"}, timeout=60)
        assert resp.status_code == 500 and resp.headers["x-request-id"] == "trace-7"
        error = _openai_error(resp)
        assert error["type"] == "server_error" and "RuntimeError: simulated bug" in error["message"]
        assert "trace-7" in error["message"]
        metrics = httpx.get(live.url + "/metrics").text
    logged = {r.getMessage().split()[1]: r for r in caplog.records if r.name == "lmkit.serve.failures"}
    assert set(logged) == {rid, stream_rid, "trace-7"}
    assert "generation_failed" in logged[rid].getMessage() and logged[rid].exc_info
    assert logged["trace-7"].exc_info[0] is RuntimeError  # the traceback of the bug itself
    assert 'lmkit_request_failures_total{path="/v1/completions",cause="generation_failed"} 2' in metrics
    assert 'lmkit_request_failures_total{path="/v1/completions",cause="internal_error"} 1' in metrics


# ---- graceful shutdown -------------------------------------------------------------------------
def test_graceful_shutdown_finishes_in_flight_streams(model_dir, local):
    model, tok = local
    engine = Engine(model, tok, max_batch_size=2)
    app = create_app(engine, model_name=NAME)
    prompt = "Once upon a time"
    text, finish, _ = expected(local, tok.encode(prompt), 900)
    live = LiveServer(app).__enter__()
    got, first = [], threading.Event()

    def reader():
        body = {"model": NAME, "prompt": prompt, "max_tokens": 900, "temperature": 0, "stream": True}
        with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=120) as resp:
            for line in resp.iter_lines():
                if line:
                    got.append(line)
                    first.set()

    t = threading.Thread(target=reader)
    t.start()
    assert first.wait(60)
    at_stop = len(got)
    live.stop()  # like SIGTERM: stop accepting, let the stream finish, then stop the engine
    t.join(120)
    assert got[-1] == "data: [DONE]"
    assert at_stop < len(got) // 2  # the stream was far from done when the shutdown began
    chunks = [json.loads(line[6:]) for line in got[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    assert engine._closed  # the engine thread drained and ended
    with pytest.raises(httpx.ConnectError):
        httpx.get(live.url + "/health", timeout=5)


def test_image_parts_to_a_text_only_model_are_a_400(client):
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "text", "text": "what is this?"}]
    with pytest.raises(openai.BadRequestError, match="does not take images"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=3)
