"""Logits processors and warpers against their Hugging Face counterparts, on random scores.

Oracle: transformers.generation.logits_process (same inputs, same outputs, -inf included).
Presence/frequency penalties (not in transformers) are checked against the OpenAI formula
written out directly. Plus GenerationConfig validation.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.infer import GenerationConfig
from lmkit.infer.sampling import (
    MinNewTokensLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    PresenceFrequencyPenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    build_logits_processors,
)

lp = pytest.importorskip("transformers.generation.logits_process")

B, V, T = 4, 50, 12


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_case(seed: int, vocab: int = V, length: int = T):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, vocab, generator=g) * 3
    ids = torch.randint(0, min(vocab, 12), (B, length), generator=g)  # small id range: many repeats
    return ids, scores


def same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("t", [0.3, 0.7, 1.5])
def test_temperature(seed, t):
    ids, s = random_case(seed)
    same(TemperatureLogitsWarper(t)(ids, s), lp.TemperatureLogitsWarper(t)(ids, s.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k,keep", [(1, 1), (5, 1), (3, 4), (V + 10, 1)])
def test_top_k(seed, k, keep):
    ids, s = random_case(seed)
    s[0, :6] = s[0, 0]  # ties at the boundary are kept by both
    same(TopKLogitsWarper(k, keep)(ids, s), lp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, s.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p,keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.95, 3), (0.0, 1), (1.0, 1)])
def test_top_p(seed, p, keep):
    ids, s = random_case(seed)
    ref = lp.TopPLogitsWarper(p, min_tokens_to_keep=keep) if p > 0 else None
    if ref is None:  # HF rejects 0; ours keeps min_tokens_to_keep
        out = TopPLogitsWarper(p, keep)(ids, s)
        assert (~torch.isinf(out)).sum(-1).eq(keep).all()
        return
    same(TopPLogitsWarper(p, keep)(ids, s), ref(ids, s.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m,keep", [(0.0, 1), (0.05, 1), (0.2, 1), (0.5, 2), (1.0, 1)])
def test_min_p(seed, m, keep):
    ids, s = random_case(seed)
    same(MinPLogitsWarper(m, keep)(ids, s), lp.MinPLogitsWarper(m, min_tokens_to_keep=keep)(ids, s.clone()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty(seed, penalty):
    ids, s = random_case(seed)
    same(RepetitionPenaltyLogitsProcessor(penalty)(ids, s),
         lp.RepetitionPenaltyLogitsProcessor(penalty)(ids, s.clone()))


def test_repetition_penalty_ignores_padding():
    ids, s = random_case(0)
    padded = ids.clone()
    padded[0, :4] = -1  # left padding of row 0
    ours = RepetitionPenaltyLogitsProcessor(1.5)(padded, s)
    ref = torch.stack([lp.RepetitionPenaltyLogitsProcessor(1.5)(r[r >= 0][None], x[None].clone())[0]
                       for r, x in zip(padded, s)])
    same(ours, ref)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram(seed, n):
    ids, s = random_case(seed, length=20)
    for length in (n - 1, n, 20):
        if length < 1:
            continue
        x = ids[:, :length]
        same(NoRepeatNGramLogitsProcessor(n)(x, s), lp.NoRepeatNGramLogitsProcessor(n)(x, s.clone()))


def test_no_repeat_ngram_bans_a_repeat():
    ids = torch.tensor([[3, 4, 5, 3, 4]])
    out = NoRepeatNGramLogitsProcessor(3)(ids, torch.zeros(1, 8))
    assert torch.isinf(out[0, 5]) and torch.isinf(out).sum() == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_bad_words(seed):
    ids, s = random_case(seed)
    bad = [[3], [ids[0, -1].item(), 7], [ids[1, -2].item(), ids[1, -1].item(), 9], [2], [40, 41, 42, 43]]
    for eos in (None, 2, [2, 5]):
        same(NoBadWordsLogitsProcessor(bad, eos)(ids, s), lp.NoBadWordsLogitsProcessor(bad, eos)(ids, s.clone()))


def test_bad_words_longer_than_context():
    ids = torch.tensor([[1, 2]])
    out = NoBadWordsLogitsProcessor([[1, 2, 3, 4]])(ids, torch.zeros(1, 6))
    assert not torch.isinf(out).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_min_new_tokens(seed):
    ids, s = random_case(seed)
    for prompt_len, min_new in [(T, 3), (T - 3, 3), (T - 5, 3)]:
        ours = MinNewTokensLogitsProcessor(prompt_len, min_new, [2, 7])(ids, s)
        ref = lp.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, [2, 7])(ids, s.clone())
        same(ours, ref)


@settings(max_examples=40, deadline=None)
@given(presence=st.floats(-2, 2), frequency=st.floats(-2, 2), prompt_len=st.integers(0, T), seed=st.integers(0, 99))
def test_presence_frequency_formula(presence, frequency, prompt_len, seed):
    ids, s = random_case(seed)
    ours = PresenceFrequencyPenaltyLogitsProcessor(presence, frequency, prompt_len)(ids, s)
    expected = s.clone()
    for b in range(B):
        generated = ids[b, prompt_len:].tolist()
        for tok in set(generated):
            count = generated.count(tok)
            expected[b, tok] -= presence * (count > 0) + frequency * count
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), temperature=st.floats(0.2, 3), k=st.integers(0, 60), p=st.floats(0.05, 1.0),
       m=st.one_of(st.none(), st.floats(0.0, 1.0)), rep=st.floats(0.5, 2.0), n=st.integers(0, 3))
def test_processor_chain_matches_transformers_order(seed, temperature, k, p, m, rep, n):
    """The whole list, as built from a config, equals HF's list built from the same options."""
    ids, s = random_case(seed)
    cfg = GenerationConfig(do_sample=True, temperature=temperature, top_k=k or None, top_p=p, min_p=m,
                           repetition_penalty=rep, no_repeat_ngram_size=n)
    ours = build_logits_processors(cfg, prompt_len=4)(ids, s)
    ref_list = lp.LogitsProcessorList()
    if rep != 1.0:
        ref_list.append(lp.RepetitionPenaltyLogitsProcessor(rep))
    if n:
        ref_list.append(lp.NoRepeatNGramLogitsProcessor(n))
    if temperature != 1.0:
        ref_list.append(lp.TemperatureLogitsWarper(temperature))
    if k:
        ref_list.append(lp.TopKLogitsWarper(k))
    if p < 1.0:
        ref_list.append(lp.TopPLogitsWarper(p))
    if m is not None:
        ref_list.append(lp.MinPLogitsWarper(m))
    same(ours, ref_list(ids, s.clone()))


def test_processors_do_not_modify_their_input():
    ids, s = random_case(3)
    before = s.clone()
    cfg = GenerationConfig(do_sample=True, temperature=0.5, top_k=5, top_p=0.8, min_p=0.1, repetition_penalty=1.2,
                           presence_penalty=0.5, frequency_penalty=0.3, no_repeat_ngram_size=2, bad_words_ids=[[1]])
    build_logits_processors(cfg, prompt_len=4, eos_token_ids=[2])(ids, s)
    assert torch.equal(s, before)


# ---- GenerationConfig -------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [("max_new_tokens", 0), ("temperature", 0.0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5),
     ("top_k", -1), ("min_p", 1.5), ("repetition_penalty", 0.0), ("presence_penalty", 3.0),
     ("frequency_penalty", float("nan")), ("num_beams", 0), ("early_stopping", "sometimes"),
     ("bad_words_ids", [[]]), ("bad_words_ids", [1, 2]), ("stop", [""]), ("top_logprobs", 50),
     ("eos_token_id", -3), ("seed", 1.5), ("do_sample", "yes"), ("no_repeat_ngram_size", -1)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


def test_config_round_trip_and_overrides():
    cfg = GenerationConfig(max_new_tokens=7, do_sample=True, top_p=0.9, stop="\n\n", eos_token_id=[2, 3], seed=1)
    assert cfg.stop == ["\n\n"] and cfg.eos_token_ids == [2, 3]
    assert GenerationConfig.from_json(cfg.to_json()) == cfg
    assert cfg.replace(top_p=0.5).top_p == 0.5
    with pytest.raises(ConfigError, match="unknown generation option"):
        cfg.replace(top_q=0.5)
    with pytest.raises(ConfigError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=2, min_new_tokens=3)
    assert GenerationConfig(top_logprobs=3).logprobs is True
    with pytest.raises(ConfigError, match="beam"):
        GenerationConfig(num_beams=2, stop=["x"])
