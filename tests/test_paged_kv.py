"""Paged KV cache and automatic prefix caching (infer/paged_kv.py, the serving engine's paged mode).

Oracle: `lmkit.infer.generate` (checked against transformers elsewhere). Every request served
from the block pool must give exactly the greedy tokens it gives alone, with and without prefix
caching, when cached blocks are evicted and running requests are preempted mid-decode (a tiny
pool), through the fused step and through model.forward. Plus: the pool's bookkeeping (reference
counts, LRU eviction), a prefix hit skips prefilling the cached blocks, chunked prefill lets a
small request overtake a huge prompt, the paged engine runs >= 2x the concurrent requests of
the contiguous cache at the same KV budget, and /metrics shows it all.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer import GenerationConfig, generate
from lmkit.infer.paged_kv import BlockPool, BlockTable, PagedKVView, PoolExhausted
from lmkit.models.decoder import DecoderLM
from lmkit.serve.engine import Engine
from lmkit.serve.metrics import Metrics
from test_serve_util import tiny_decoder

V = 300


def _model(kind: str = "llama", seed: int = 0) -> DecoderLM:
    return tiny_decoder(kind, seed, 256, V)


@pytest.fixture(scope="module")
def llama():
    return _model("llama")


@pytest.fixture(scope="module")
def gpt2():
    return _model("gpt2", seed=1)


def _submit_all(engine: Engine, prompts, configs):
    """Queue every request before the engine thread looks at the queue; wait for all (token ids)."""
    tokens = [[] for _ in prompts]
    left = threading.Semaphore(0)

    def cb(i):
        def f(ev):
            assert ev.error is None, ev.error
            tokens[i].append(ev.token)
            if ev.finish_reason:
                left.release()
        return f

    with engine._lock:
        for i, (p, c) in enumerate(zip(prompts, configs)):
            engine.submit(p, c, cb(i))
    for _ in prompts:
        assert left.acquire(timeout=120)
    return tokens


_REFS: dict = {}


def _reference(model, prompt, n):
    key = (id(model), tuple(prompt), n)
    if key not in _REFS:
        _REFS[key] = generate(model, [prompt], max_new_tokens=n).sequences[0]
    return _REFS[key]


def _shared_prefix_workload(seed: int = 0, n: int = 8):
    rng = random.Random(seed)
    system = [rng.randrange(3, V) for _ in range(37)]
    prompts = [system + [rng.randrange(3, V) for _ in range(rng.randrange(1, 12))] for _ in range(n)]
    prompts += [rng.choice(prompts)[: rng.randrange(20, 45)] for _ in range(2)]  # prefixes of earlier prompts
    return prompts, [8 + 3 * (i % 5) for i in range(len(prompts))]


# ---- the pool ---------------------------------------------------------------------------
def test_pool_refcounts_lru_eviction_and_exhaustion():
    pool = BlockPool(1, 1, 2, n_blocks=3, block_size=2)
    a = BlockTable()
    hashes = a.hashes_for([5, 6, 7, 8, 9], 2, 2)
    assert len(hashes) == 2 and BlockTable().hashes_for([5, 6, 7, 9], 2, 2)[0] == hashes[0]
    assert BlockTable().hashes_for([5, 6, 7, 9], 2, 2)[1] != hashes[1]  # the hash names the whole prefix
    assert BlockTable().hashes_for([6, 6, 7, 8], 2, 2)[1] != hashes[1]
    a.blocks = [pool.allocate(), pool.allocate()]
    for blk, h in zip(a.blocks, hashes):
        pool.register(blk, h)
    assert pool.lookup(hashes) == a.blocks and pool.in_use == 2
    pool.acquire(pool.lookup(hashes[:1]))  # a second sequence shares the first block
    pool.release(a.blocks)
    assert pool.in_use == 1 and pool.available == 2  # block 1 is cached (evictable), block 0 still shared
    c = pool.allocate()  # the free block first: nothing evicted
    assert c not in a.blocks and pool.evictions == 0 and pool.lookup(hashes) == a.blocks
    d = pool.allocate()  # now the cached block goes (LRU), and with it its prefix entry
    assert d == a.blocks[1] and pool.evictions == 1 and pool.lookup(hashes) == a.blocks[:1]
    with pytest.raises(PoolExhausted):
        pool.allocate()
    pool.release([a.blocks[0], c, d])
    assert pool.available == 3 and pool.lookup(hashes) == a.blocks[:1]
    pool.prefix_caching = False
    assert pool.lookup(hashes) == []


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_model_forward_on_the_paged_view_equals_one_full_forward(kind, llama, gpt2):
    model = llama if kind == "llama" else gpt2
    ids = torch.randint(3, V, (1, 23), generator=torch.Generator().manual_seed(0))
    full = model(ids).logits
    pool = BlockPool.for_model(model, n_blocks=8, block_size=4)
    table = BlockTable()
    table.blocks = [6, 2, 7, 0, 5, 1]  # scattered on purpose
    out = []
    with torch.inference_mode():
        for start, end in ((0, 9), (9, 10), (10, 23)):
            slots = torch.tensor(table.slots(0, end, 4))
            view = PagedKVView(pool, slots[None, start:], slots[None])
            out.append(model(ids[:, start:end], kv_cache=view).logits)
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=1e-4, atol=1e-5)


# ---- the engine -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,fused", [("llama", True), ("llama", False), ("gpt2", True)])
def test_prefix_caching_eviction_and_preemption_keep_greedy_outputs(kind, fused, llama, gpt2):
    """A pool of 20 blocks of 4 tokens (80 tokens) for 10 requests of up to ~65: cached blocks
    are evicted and running requests preempted and recomputed, yet every output equals generate."""
    model = llama if kind == "llama" else gpt2
    prompts, lengths = _shared_prefix_workload()
    configs = [GenerationConfig(max_new_tokens=m, eos_token_id=[]) for m in lengths]
    results = {}
    for caching in (True, False):
        engine = Engine(model, None, max_batch_size=6, fused=fused, kv_blocks=20, block_size=4,
                        prefix_caching=caching)
        try:
            results[caching] = _submit_all(engine, prompts, configs)
        finally:
            engine.stop()
        assert engine.stats.preemptions > 0 and engine.pool.in_use == 0
        if caching:
            assert engine.pool.hits > 0 and engine.pool.evictions > 0
    assert results[True] == results[False]
    assert results[True] == [_reference(model, p, m) for p, m in zip(prompts, lengths)]


def test_a_prefix_hit_skips_prefilling_the_cached_blocks(llama):
    rng = random.Random(1)
    system = [rng.randrange(3, V) for _ in range(64)]
    engine = Engine(llama, None, block_size=16).start()
    try:
        first = engine.generate(system + [7, 8, 9], GenerationConfig(max_new_tokens=5))
        computed = engine.stats.prefill_tokens
        second = engine.generate(system + [10, 11], GenerationConfig(max_new_tokens=5))
        again = engine.generate(system + [7, 8, 9], GenerationConfig(max_new_tokens=5))
    finally:
        engine.stop()
    assert computed == 67
    assert engine.stats.prefill_tokens - computed == 2 + 3  # the 4 full system blocks came from the cache
    assert (engine.pool.hits, engine.pool.misses) == (8, 4)
    assert first.token_ids == again.token_ids == _reference(llama, system + [7, 8, 9], 5)
    assert second.token_ids == _reference(llama, system + [10, 11], 5)


def test_chunked_prefill_interleaves_a_huge_prompt_with_decode_steps(llama):
    """A 200-token prompt prefilled 8 tokens per step: a small request admitted with it gets its
    first token at once and keeps decoding while the huge one is prefilled."""
    order, tokens = [], {"huge": [], "small": []}
    done = threading.Event()
    engine = Engine(llama, None, prefill_chunk=8)

    def cb(name):
        def f(ev):
            order.append(name)
            tokens[name].append(ev.token)
            if ev.finish_reason and name == "huge":
                done.set()
        return f

    with engine._lock:  # the huge one arrives first; both wait when the engine thread first looks
        engine.submit(list(range(3, 203)), GenerationConfig(max_new_tokens=2), cb("huge"))
        engine.submit([5, 6, 7], GenerationConfig(max_new_tokens=40, eos_token_id=[]), cb("small"))
    assert done.wait(60)
    engine.stop()
    assert order.index("huge") >= 20  # 25 prefill chunks, a decode step of the small one after each
    assert tokens["huge"] == _reference(llama, list(range(3, 203)), 2)


def test_paged_runs_twice_the_requests_of_the_contiguous_cache_at_the_same_budget(llama):
    """Mixed lengths: a contiguous cache reserves the longest row's capacity for every row;
    the paged cache holds what each row uses."""
    rng = random.Random(2)
    prompts, lengths = [], []
    for i in range(24):  # 3 long requests (100 + 60 tokens) among 21 short ones (4-11 + 6-13)
        long = i % 8 == 0
        prompts.append([rng.randrange(3, V) for _ in range(100 if long else rng.randrange(4, 12))])
        lengths.append(60 if long else rng.randrange(6, 14))
    configs = [GenerationConfig(max_new_tokens=m, eos_token_id=[]) for m in lengths]
    stats = {}
    for layout in ("contiguous", "paged"):
        engine = Engine(llama, None, max_batch_size=32, kv_cache=layout, kv_blocks=32, block_size=16)  # 512 tokens
        results = _submit_all(engine, prompts, configs)
        engine.stop()
        stats[layout] = engine.stats
        assert results == [_reference(llama, p, m) for p, m in zip(prompts, lengths)]
    sustained = {k: s.queued_rows / s.queued_steps for k, s in stats.items()}  # rows per step while some waited
    mean = {k: s.batch_rows / s.decode_steps for k, s in stats.items()}
    assert stats["paged"].max_running >= 2 * stats["contiguous"].max_running
    assert sustained["paged"] >= 2 * sustained["contiguous"]
    assert mean["paged"] >= 2 * mean["contiguous"]  # measured 5.5 vs 2.3 rows per decode step


def test_metrics_and_validation(llama):
    engine = Engine(llama, None, kv_blocks=8, block_size=4)
    with pytest.raises(ConfigError, match="KV cache"):  # 30 + 10 tokens > 8 blocks of 4
        engine.submit(list(range(3, 33)), GenerationConfig(max_new_tokens=10), print)
    with pytest.raises(ConfigError, match="kv_cache"):
        Engine(llama, None, kv_cache="ring")
    with pytest.raises(ConfigError, match="memory"):
        Engine(llama, None, kv_cache_mb=1e-6)
    engine.start()
    try:
        engine.generate(list(range(3, 12)), GenerationConfig(max_new_tokens=4))
        engine.generate(list(range(3, 14)), GenerationConfig(max_new_tokens=4))
    finally:
        engine.stop()
    text = Metrics().render(engine)
    for line in ("lmkit_prefix_cache_hits_total 2", "lmkit_prefix_cache_misses_total 2", "lmkit_kv_blocks_total 8",
                 "lmkit_kv_blocks_in_use 0", "lmkit_prefix_cache_hit_rate 0.5", "lmkit_queue_depth 0",
                 'lmkit_time_to_first_token_seconds_bucket{le="+Inf"} 2', "lmkit_inter_token_latency_seconds_count 6",
                 "lmkit_preemptions_total 0", "lmkit_prefix_cache_evictions_total"):
        assert line in text, line


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_contiguous_decode_batch_equals_gathering_every_step(dtype, llama, monkeypatch):
    """The decode steps keep the running rows' keys/values contiguous (DecodeBatch: built when
    the rows change, grown past its room, fp32 for a bf16 model's fused step): the tokens equal
    those of gathering the blocks at every step, with rows of different lengths joining and leaving."""
    import copy

    import lmkit.serve.engine as engine_module

    model = copy.deepcopy(llama).to(dtype)
    rng = random.Random(3)
    prompts = [[rng.randrange(3, V) for _ in range(n)] for n in (5, 19, 33, 8)]
    configs = [GenerationConfig(max_new_tokens=m, eos_token_id=[]) for m in (90, 12, 20, 3)]
    results = []
    for limit in (engine_module.DECODE_BATCH_LIMIT_BYTES, 0):
        monkeypatch.setattr(engine_module, "DECODE_BATCH_LIMIT_BYTES", limit)
        engine = Engine(model, None, max_batch_size=4, kv_blocks=64, block_size=4)
        built, grown = [], []
        real, real_grow = engine_module.DecodeBatch.__init__, engine_module.DecodeBatch._grow

        def spy(self, *a, **k):
            built.append(self)
            real(self, *a, **k)

        def spy_grow(self):
            grown.append(self.cap)
            real_grow(self)

        monkeypatch.setattr(engine_module.DecodeBatch, "__init__", spy)
        monkeypatch.setattr(engine_module.DecodeBatch, "_grow", spy_grow)
        try:
            results.append(_submit_all(engine, prompts, configs))
        finally:
            engine.stop()
        monkeypatch.setattr(engine_module.DecodeBatch, "__init__", real)
        monkeypatch.setattr(engine_module.DecodeBatch, "_grow", real_grow)
        if limit:
            assert 0 < len(built) < 10 and grown  # reused across steps, and grown past its room
            assert all(b.keys[0].dtype == torch.float32 for b in built)
        else:
            assert not built
        assert engine._batch is None and engine.pool.in_use == 0
    assert results[0] == results[1]
