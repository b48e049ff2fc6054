"""HTTP API fuzzing from the server's own OpenAPI schema (hypothesis-jsonschema), fixed budget and seed.

Bodies are drawn from each POST route's request schema (valid by the schema, so they reach
the handlers: huge max_tokens, n, logprobs, odd messages and token ids), from the same
schema with one field replaced by any JSON value, and from arbitrary JSON and bytes. The
contract, for every request:

* no 5xx, and no hang (each request has a 60 s client timeout; a stream must end with [DONE]
  and hold no error event);
* every 4xx body is OpenAI's error object: {"error": {"message", "type", "param", "code"}}.

The budget is `LMKIT_FUZZ_EXAMPLES` examples per route (default 60); the figures of a larger
run are in docs/reliability.md ("HTTP API fuzz"). Cases the fuzzer found are regular tests
at the end of this file.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.serve.engine import Engine
from test_serve_util import LiveServer, build_tokenizer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
hypothesis = pytest.importorskip("hypothesis")
hjs = pytest.importorskip("hypothesis_jsonschema")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NAME = "tiny"
EXAMPLES = int(os.environ.get("LMKIT_FUZZ_EXAMPLES", "60"))
TIMEOUT = 60.0
FIGURES = {"requests": 0, "5xx": 0, "hangs": 0, "4xx": 0, "3xx": 0, "2xx": 0}  # printed at the end of the module


@pytest.fixture(scope="module")
def live():
    from lmkit.serve.app import create_app

    tok = build_tokenizer()
    cfg = ModelConfig(model_type="llama", arch="decoder", vocab_size=len(tok) + 8, d_model=32, n_layers=2,
                      n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=96, norm="rmsnorm", activation="silu",
                      gated_ffn=True, position="rope", tie_embeddings=False,
                      eos_token_id=tok.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    engine = Engine(DecoderLM(cfg).eval(), tok, max_batch_size=8)
    app = create_app(engine, model_name=NAME, default_max_tokens=16)
    with LiveServer(app) as server:
        yield server, app.openapi()
    print(f"\nHTTP API fuzz figures: {FIGURES}")


def body_schema(spec: dict, path: str) -> dict:
    """The JSON schema of `path`'s request body, with the document's components to resolve $refs."""
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**ref, "components": spec["components"]}


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid body with one field set to any JSON value (or removed)."""
    @st.composite
    def one_field_changed(draw):
        body = dict(draw(valid))
        if body:
            key = draw(st.sampled_from(sorted(body)))
            if draw(st.booleans()):
                body[key] = draw(JSON)
            else:
                del body[key]
        return body
    return one_field_changed()


def plausible(body: dict) -> dict:
    """A valid body that gets past the cheap checks (the served model's name, known roles,
    small n and max_tokens), so the fuzzer reaches tokenization, templates, generation and streaming."""
    body = {**body, "model": NAME}
    roles = ("user", "system", "assistant", "tool")
    if isinstance(body.get("messages"), list):
        body["messages"] = [{**m, "role": roles[len(m.get("role", "")) % 4]} if isinstance(m, dict) else m
                            for m in body["messages"]]
    for key, top in (("n", 3), ("max_tokens", 12), ("max_completion_tokens", 12)):
        if isinstance(body.get(key), int):
            body[key] = 1 + body[key] % top
    for key in ("prompt", "input"):  # token ids inside the vocabulary
        if key in body:
            body[key] = in_vocab(body[key])
    if "encoding_format" in body:
        body["encoding_format"] = ("float", "base64")[len(str(body["encoding_format"])) % 2]
    body.pop("best_of", None)
    return body


def in_vocab(x):
    if isinstance(x, list):
        return [in_vocab(v) for v in x]
    return abs(x) % 400 if isinstance(x, int) and not isinstance(x, bool) else x


def bodies(spec: dict, path: str) -> st.SearchStrategy:
    valid = hjs.from_schema(body_schema(spec, path))
    raw = st.one_of(JSON.map(json.dumps), st.binary(max_size=40), st.text(max_size=40))
    return st.one_of(valid.map(plausible).map(json.dumps), valid.map(json.dumps),
                     mutated(valid.map(plausible)).map(json.dumps), raw)


def check_error_shape(resp) -> None:
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)


def send(server, method: str, path: str, content: bytes | str | None = None) -> None:
    """One request, checked against the contract; the figures count it."""
    FIGURES["requests"] += 1
    stream = False
    if content is not None:
        try:
            stream = json.loads(content).get("stream") is True
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
            pass
    headers = {"content-type": "application/json"}
    try:
        with httpx.stream(method, server.url + path, content=content, headers=headers, timeout=TIMEOUT) as resp:
            resp.read()
    except httpx.TimeoutException:
        FIGURES["hangs"] += 1
        raise AssertionError(f"{method} {path} hung (no answer in {TIMEOUT} s): {content!r:.300}")
    status = resp.status_code
    if status >= 500:
        FIGURES["5xx"] += 1
        raise AssertionError(f"{method} {path} -> {status}: {resp.text[:300]} for {content!r:.300}")
    if status >= 400:
        FIGURES["4xx"] += 1
        check_error_shape(resp)
        return
    if status >= 300:  # a redirect (/v1/models/ -> /v1/models)
        FIGURES["3xx"] += 1
        return
    FIGURES["2xx"] += 1
    if stream and resp.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in resp.text.splitlines() if line]
        assert lines and lines[-1] == "data: [DONE]", lines[-3:]
        for line in lines[:-1]:
            assert "error" not in json.loads(line[6:]), line
    else:
        resp.json()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_fuzz_post_routes(live, path):
    server, spec = live

    @seed(24)
    @FUZZ
    @given(content=bodies(spec, path))
    def run(content):
        send(server, "POST", path, content)

    run()


def test_fuzz_get_routes_and_paths(live):
    server, _ = live

    @seed(24)
    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
           path=st.sampled_from(["/health", "/v1/models", "/v1/models/", "/v1/completions", "/v1/embeddings",
                                 "/v1/chat/completions", "/v1/nope", "/metrics"]),
           tail=st.text(alphabet="abc/%.-_~0123456789", max_size=12))
    def run(method, path, tail):
        if path == "/metrics" or (method == "GET" and path in ("/health", "/v1/models") and not tail):
            FIGURES["requests"] += 1
            FIGURES["2xx"] += 1
            assert httpx.request(method, server.url + path, timeout=TIMEOUT).status_code < 500
            return
        send(server, method, path + tail, b"{}" if method != "GET" else None)

    run()


# ---- cases the fuzzer found, fixed -------------------------------------------------------------
@pytest.mark.parametrize("ids", [[-1], [[5, 10**6]], [2**70], [[1, 2], [3, -4]]])
def test_embedding_token_ids_outside_the_vocabulary_are_a_400(live, ids):
    """Found: {"input": [-1]} reached the embedding lookup and answered 500 (IndexError)."""
    server, _ = live
    resp = httpx.post(server.url + "/v1/embeddings", json={"input": ids}, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    check_error_shape(resp)
    assert resp.json()["error"]["param"] == "input" and "outside the vocabulary" in resp.json()["error"]["message"]
