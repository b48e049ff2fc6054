"""Speculative decoding in the server (n-gram prompt lookup, draft model): greedy output unchanged,
counted in /metrics.

Oracle: `lmkit.infer.generate` (greedy, no speculation) on the same weights and prompt ids,
against the live server (uvicorn + the official `openai` client) running `--speculative ngram`.
"""

from __future__ import annotations

import dataclasses
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained
from lmkit.infer import GenerationConfig, generate
from lmkit.serve.app import create_app
from lmkit.serve.engine import Engine
from lmkit.infer.vocab_padding import renderable_size
from lmkit.models.decoder import DecoderLM
from lmkit.serve.speculation import DraftModelSpeculator, NgramSpeculator, make_speculator
from lmkit.tokenizers.loading import load_tokenizer
from test_serve_util import LiveServer, cached_chat_dir

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

NAME = "tiny-spec"
PROMPTS = ["the weather in Paris is sunny. the weather in Paris is", "Once upon a time, once upon a time",
           "What is the weather", "你好 🌍 你好 🌍 你好"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = cached_chat_dir(tmp_path_factory)
    return load_pretrained(d), load_tokenizer(d)


@pytest.fixture(scope="module")
def server(local):
    model, tok = local
    engine = Engine(model, tok, max_batch_size=4, speculator=make_speculator("ngram", 4))
    with LiveServer(create_app(engine, model_name=NAME, default_max_tokens=48)) as live:
        yield live, engine


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_ngram_proposals_follow_the_latest_match():
    spec = NgramSpeculator(3)
    assert spec.propose([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], limit=10) == [7, 8, 1]
    assert spec.propose([1, 2, 3, 4], limit=10) == []  # nothing repeats
    assert spec.propose([5, 6, 5], limit=1) == [6]
    assert spec.propose([5, 6, 5], limit=0) == []
    with pytest.raises(ConfigError):
        make_speculator("medusa")


def test_greedy_outputs_equal_without_speculation_and_metrics_count(server, local):
    live, engine = server
    model, tok = local
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=60)
    want = [generate(model, [tok.encode(p)], max_new_tokens=40, tokenizer=tok).texts[0] for p in PROMPTS]
    for p, w in zip(PROMPTS, want):  # one at a time: the lone request speculates
        got = client.completions.create(model=NAME, prompt=p, max_tokens=40, temperature=0)
        assert got.choices[0].text == w
    text = httpx.get(live.url + "/metrics").text
    proposed = metric(text, "lmkit_spec_proposed_tokens_total")
    accepted = metric(text, "lmkit_spec_accepted_tokens_total")
    assert proposed > 0 and 0 < accepted <= proposed
    assert metric(text, "lmkit_spec_acceptance_rate") == pytest.approx(accepted / proposed)
    # fewer target forwards than tokens: accepted drafts came for free
    assert engine.stats.decode_steps < engine.stats.generated_tokens - len(PROMPTS)
    # streamed, and several at once (the batch falls back to one token per row, then speculates alone)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda p: "".join(
            c.choices[0].text for c in client.completions.create(model=NAME, prompt=p, max_tokens=40,
                                                                 temperature=0, stream=True)), PROMPTS))
    assert outs == want


@pytest.mark.parametrize("which,kv_cache", [("self", "paged"), ("random", "paged"), ("self", "contiguous"),
                                            ("random", "contiguous")])
def test_a_draft_model_keeps_greedy_outputs(local, which, kv_cache):
    """The target as its own draft accepts every draft; a random draft almost none: both give generate's tokens."""
    model, tok = local
    if which == "self":
        draft = model
    else:
        torch.manual_seed(5)
        draft = DecoderLM(dataclasses.replace(model.config, n_layers=1)).eval()
    spec = make_speculator("draft", 3, draft, model.config.vocab_size, renderable_size(tok))
    assert isinstance(spec, DraftModelSpeculator)
    engine = Engine(model, tok, max_batch_size=2, speculator=spec, kv_cache=kv_cache, block_size=4).start()
    try:
        for p in PROMPTS[:2]:
            ids = tok.encode(p)
            want = generate(model, [ids], max_new_tokens=24, tokenizer=tok).sequences[0]
            assert engine.generate(ids, GenerationConfig(max_new_tokens=24)).token_ids == want
    finally:
        engine.stop()
    st = spec.stats
    assert st.proposed > 0
    if which == "self":
        assert st.accepted == st.proposed
    with pytest.raises(ConfigError, match="vocabulary"):
        DraftModelSpeculator(draft, model.config.vocab_size + 1)

