"""The continuous-batching engine against `lmkit.infer.generate` (itself checked against transformers).

Every request in a batch must produce exactly what it produces alone: the same token ids for
greedy decoding whatever the arrival order, prompt lengths and batch size (hypothesis), the
same seeded samples and logprobs with per-request processors, the same text with stop strings;
through the fused decode step and through model.forward (GPT-2 and Llama layouts). Plus the
scheduling itself: late arrivals join a running batch, cancellation, the queue limit, drain on stop.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.infer import GenerationConfig, generate
from lmkit.models.decoder import DecoderLM
from lmkit.serve.engine import Engine, EngineOverloaded, EngineStopped
from lmkit.tokenizers.bpe import BPETokenizer
from test_serve_util import tiny_decoder

V = 300


def _model(kind: str = "llama", seed: int = 0, ctx: int = 128) -> DecoderLM:
    return tiny_decoder(kind, seed, ctx, V)


@pytest.fixture(scope="module")
def llama():
    return _model("llama")


@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog, 你好世界 🌍 and then it rains; " * 20
    return BPETokenizer.train([text], vocab_size=V, special_tokens=["<|endoftext|>"])


def _run_all(engine: Engine, prompts, configs, delays=None):
    """Submit every request (request i after delays[i] seconds, from its own thread); wait for all."""
    results = [None] * len(prompts)
    order = []

    def one(i):
        if delays:
            time.sleep(delays[i])
        results[i] = engine.generate(prompts[i], configs[i], timeout=120)
        order.append(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, order


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_greedy_batched_equals_alone_any_arrival(llama, data):
    n = data.draw(st.integers(1, 7), label="requests")
    prompts = [data.draw(st.lists(st.integers(3, V - 1), min_size=1, max_size=20), label=f"prompt{i}") for i in range(n)]
    lengths = [data.draw(st.integers(1, 25), label=f"max_new{i}") for i in range(n)]
    delays = [data.draw(st.sampled_from([0.0, 0.0, 0.005, 0.02]), label=f"delay{i}") for i in range(n)]
    batch = data.draw(st.integers(1, 4), label="max_batch_size")
    engine = Engine(llama, None, max_batch_size=batch).start()
    try:
        got, _ = _run_all(engine, prompts, [GenerationConfig(max_new_tokens=m) for m in lengths], delays)
    finally:
        engine.stop()
    for p, m, r in zip(prompts, lengths, got):
        ref = generate(llama, [p], max_new_tokens=m)
        assert r.token_ids == ref.sequences[0]
        assert r.finish_reason == ref.finish_reasons[0]


@pytest.mark.parametrize("kind,fused", [("llama", True), ("llama", False), ("gpt2", True), ("gpt2", False)])
def test_fused_and_forward_paths(kind, fused):
    model = _model(kind, seed=3)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18], [19], [20, 21, 22, 23]]
    engine = Engine(model, None, max_batch_size=3, fused=fused).start()
    assert (engine.fused is not None) == fused
    try:
        got, _ = _run_all(engine, prompts, [GenerationConfig(max_new_tokens=6 + 4 * i) for i in range(5)],
                          [0, 0, 0.01, 0.02, 0.03])
    finally:
        engine.stop()
    for i, (p, r) in enumerate(zip(prompts, got)):
        assert r.token_ids == generate(model, [p], max_new_tokens=6 + 4 * i).sequences[0]


def test_sampling_processors_logprobs_per_request(llama, tok):
    prompts = [tok.encode(s) for s in ("the quick brown", "你好", "lazy dog", "🌍 and", "rains")]
    configs = [
        GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.8, top_k=20, seed=1, logprobs=True,
                         top_logprobs=3),
        GenerationConfig(max_new_tokens=15, do_sample=True, top_p=0.7, presence_penalty=0.8, frequency_penalty=0.5,
                         seed=2, logprobs=True),
        GenerationConfig(max_new_tokens=18, repetition_penalty=1.3, no_repeat_ngram_size=2, logprobs=True),
        GenerationConfig(max_new_tokens=12, do_sample=True, min_p=0.1, seed=3, bad_words_ids=[[5], [7, 8]]),
        GenerationConfig(max_new_tokens=25, stop=["o", "ai"]),
    ]
    engine = Engine(llama, tok, max_batch_size=8).start()
    try:
        got, _ = _run_all(engine, prompts, configs)
    finally:
        engine.stop()
    for p, c, r in zip(prompts, configs, got):
        ref = generate(llama, [p], c, tokenizer=tok)
        assert r.token_ids == ref.sequences[0]
        assert r.text == ref.texts[0] and r.finish_reason == ref.finish_reasons[0]
        if c.logprobs:
            assert r.logprobs == pytest.approx(ref.logprobs[0], abs=1e-5)
        if c.top_logprobs:
            for a, b in zip(r.top_logprobs, ref.top_logprobs[0]):
                assert a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)
    assert got[4].finish_reason == "stop" or len(got[4].token_ids) == 25


@pytest.fixture(scope="module")
def long_llama():
    return _model("llama", ctx=2048)


def test_late_request_joins_the_running_batch(long_llama):
    llama = long_llama
    engine = Engine(llama, None, max_batch_size=4).start()
    events = []
    long_done = threading.Event()
    first_token = threading.Event()

    def on_long(ev):
        events.append(("long", ev.finish_reason))
        first_token.set()
        if ev.finish_reason:
            long_done.set()

    try:
        engine.submit([5, 6, 7], GenerationConfig(max_new_tokens=2000, eos_token_id=[]), on_long)
        assert first_token.wait(30)
        short = engine.generate([9, 10], GenerationConfig(max_new_tokens=3, eos_token_id=[]), timeout=60)
        assert not long_done.is_set()  # the short request did not wait for the long one to finish
        assert len(short.token_ids) == 3
        assert long_done.wait(60)
    finally:
        engine.stop()
    assert engine.stats.batch_rows > engine.stats.decode_steps  # some steps decoded both rows together


def test_cancel_overload_and_stop(long_llama):
    llama = long_llama
    engine = Engine(llama, None, max_batch_size=1, max_waiting=1)
    seen, started = [], threading.Event()

    def on_first(ev):
        seen.append(ev)
        started.set()

    h = engine.submit([5, 6], GenerationConfig(max_new_tokens=2000, eos_token_id=[]), on_first)  # runs
    assert started.wait(30)
    queued = []
    engine.submit([5, 6], GenerationConfig(max_new_tokens=3, eos_token_id=[]), queued.append)  # waits
    with pytest.raises(EngineOverloaded):  # the one slot is busy and the queue (1) is full
        engine.submit([5, 6], GenerationConfig(max_new_tokens=3), print)
    h.cancel()  # frees the slot at the next step
    deadline = time.time() + 30
    while not (queued and queued[-1].finish_reason) and time.time() < deadline:
        time.sleep(0.01)
    assert [e.finish_reason for e in queued][-1] == "length" and len(queued) == 3
    assert not any(e.finish_reason for e in seen) and len(seen) < 2000  # cancelled: never finished
    # a callback that raises does not stop the engine
    engine.max_waiting = 10
    engine.submit([5], GenerationConfig(max_new_tokens=2), lambda ev: 1 / 0)
    assert len(engine.generate([5, 6, 7], GenerationConfig(max_new_tokens=4, eos_token_id=[])).token_ids) == 4
    # stop drains what is queued, then refuses new work
    results = []
    for i in range(3):
        threading.Thread(target=lambda: results.append(engine.generate([7, 8], GenerationConfig(max_new_tokens=5)))).start()
    time.sleep(0.05)
    engine.stop(timeout=60)
    assert len(results) == 3 and engine._closed
    with pytest.raises(EngineStopped):
        engine.submit([5], GenerationConfig(max_new_tokens=2), seen.append)


def test_request_validation(llama):
    engine = Engine(llama, None)
    with pytest.raises(ConfigError, match="context"):
        engine.submit(list(range(3, 100)), GenerationConfig(max_new_tokens=64), print)
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([], GenerationConfig(), print)
    with pytest.raises(ConfigError, match="vocabulary"):
        engine.submit([V + 5], GenerationConfig(), print)
    with pytest.raises(ConfigError, match="beam"):
        engine.submit([5], GenerationConfig(num_beams=2), print)
    with pytest.raises(ConfigError, match="max_batch_size"):
        Engine(llama, None, max_batch_size=0)


@pytest.mark.parametrize("method", ["int8", "nf4"])
def test_quantized_model_decodes_like_generate(method):
    quant = pytest.importorskip("lmkit.quant.quantize_model")
    model = _model("llama", seed=5)
    quant.quantize_model(model, method)
    engine = Engine(model, None, max_batch_size=2).start()
    assert engine.fused is not None  # quantized linears run in the fused decode step (issue 16)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    try:
        got, _ = _run_all(engine, prompts, [GenerationConfig(max_new_tokens=6 + 3 * i) for i in range(3)])
    finally:
        engine.stop()
    for i, (p, r) in enumerate(zip(prompts, got)):
        assert r.token_ids == generate(model, [p], max_new_tokens=6 + 3 * i).sequences[0]
