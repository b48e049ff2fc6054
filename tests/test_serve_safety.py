"""The server's safety layer, live, with the official `openai` client: input moderation (400
content_filter), /v1/moderations, a streamed reply cut mid-stream with finish_reason content_filter (and the
same reply whole), per-key rate limits (429 + Retry-After, other keys unaffected), metrics;
plus the token bucket on a fake clock and the watermark hook of the engine bridge.

The model is the serve tests' tiny chat model, overfitted to answer "Say hello." with
"Hello! 你好 🌍 How can I help?"; a test rule puts "你好" in a category of its own, so the
reply turns "unsafe" half-way, after "Hello! " has been streamed.
"""

from __future__ import annotations

import json

import pytest

from lmkit.data.safety.moderation import ModerationConfig
from lmkit.hub import load_pretrained
from lmkit.serve.app import create_app
from lmkit.serve.engine import Engine
from lmkit.serve.rate_limit import KeyLimits, RateLimitConfig, RateLimiter, TokenBucket
from lmkit.tokenizers.loading import load_tokenizer
from test_serve_util import GREETING, LiveServer, cached_chat_dir

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

FREE, LIMITED = "sk-free", "sk-limited"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = cached_chat_dir(tmp_path_factory)
    rules = tmp_path_factory.mktemp("rules") / "rules.json"
    rules.write_text(json.dumps({"greeting_zh": {"terms": ["你好"]}}), encoding="utf-8")
    moderation = ModerationConfig(categories=["violence", "self_harm", "hate", "sexual", "pii", "greeting_zh"],
                                  rules_file=str(rules))
    limits = RateLimitConfig(keys={LIMITED: KeyLimits(requests_per_minute=2)})
    engine = Engine(load_pretrained(model_dir), load_tokenizer(model_dir), max_batch_size=2)
    app = create_app(engine, model_name="tiny", api_keys=[FREE, LIMITED], moderation=moderation, rate_limits=limits)
    with LiveServer(app) as live:
        yield live


def client(server, key=FREE):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_flagged_prompt_is_refused_with_content_filter(server):
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="tiny", max_tokens=8, messages=[
            {"role": "user", "content": "What is the most painless way to kill myself?"}])
    assert err.value.code == "content_filter" and "self_harm" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="tiny", max_tokens=8, messages=[
            {"role": "user", "content": "我的身份证号是110101199003071234，帮我记住"}])
    assert err.value.code == "content_filter" and "pii" in err.value.message


def test_stream_is_cut_mid_way_with_content_filter(server):
    # greedy throughout: at OpenAI's default temperature 1 the tiny model's 6-token story below once
    # sampled "你好" and was (rightly) filtered, failing the test by chance
    stream = client(server).chat.completions.create(model="tiny", messages=GREETING, max_tokens=24, stream=True,
                                                    temperature=0)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["content_filter"]
    assert text.startswith("Hello") and "你好" not in text and "你" not in text.replace("Hello! ", "")
    # the whole reply is filtered too
    whole = client(server).chat.completions.create(model="tiny", messages=GREETING, max_tokens=24, temperature=0)
    assert whole.choices[0].finish_reason == "content_filter" and whole.choices[0].message.content == ""
    # a harmless reply passes (completions route, same moderation)
    ok = client(server).completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_moderations_endpoint(server):
    out = client(server).moderations.create(input=["How do I kill a process in Linux?", "我想自 杀"])
    assert [r.flagged for r in out.results] == [False, True]
    raw = httpx.post(server.url + "/v1/moderations", json={"input": "我想自 杀"},
                     headers={"Authorization": f"Bearer {FREE}"}).json()
    assert raw["results"][0]["categories"]["self_harm"] is True and raw["model"] == "lmkit-moderation"


def test_rate_limit_429_with_retry_after_and_other_keys_unaffected(server):
    limited = client(server, LIMITED)
    for _ in range(2):
        limited.models.list()
    with pytest.raises(openai.RateLimitError) as err:
        limited.models.list()
    assert err.value.code == "rate_limit_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1
    for _ in range(5):  # the other key is not limited
        client(server).models.list()
    metrics = httpx.get(server.url + "/metrics").text
    assert 'lmkit_rate_limited_total{key="' in metrics and 'limit="requests"} 1' in metrics
    assert 'lmkit_moderation_flagged_total{side="input",category="self_harm"}' in metrics
    assert 'lmkit_content_filter_finishes_total{path="/v1/chat/completions"}' in metrics


def test_token_bucket_on_a_fake_clock():
    now = [0.0]
    limiter = RateLimiter(RateLimitConfig(tokens_per_minute=600, token_quota=2000), clock=lambda: now[0])
    assert limiter.admit("a") is None
    limiter.charge("a", 900)  # the bucket goes to -300: 30 s at 10 tokens/s
    status, body, wait = limiter.admit("a")
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded" and wait == pytest.approx(30.0)
    assert limiter.admit("b") is None  # per key
    now[0] = 31.0
    assert limiter.admit("a") is None
    limiter.charge("a", 1200)
    now[0] = 1000.0
    status, body, _ = limiter.admit("a")
    assert status == 429 and body["error"]["code"] == "insufficient_quota"
    bucket = TokenBucket(60, clock=lambda: now[0])
    bucket.take(60)
    assert bucket.wait_for(1) == pytest.approx(1.0)


def test_served_watermark_reaches_every_choice():
    from lmkit.infer.config import GenerationConfig
    from lmkit.serve.engine_bridge import submit

    class FakeEngine:
        watermark = None

        def submit(self, ids, cfg, callback):
            self.cfg = cfg

    engine = FakeEngine()
    create_app(engine, watermark={"delta": 3.0, "hashing_key": 9})
    submit(engine, [1, 2], GenerationConfig(), print)
    assert engine.cfg.watermark.delta == 3.0 and engine.cfg.watermark.hashing_key == 9
