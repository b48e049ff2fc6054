"""Logits processors against their transformers namesakes on random scores; OpenAI penalties
against the formula written out; GenerationConfig validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.infer import GenerationConfig, build_logits_processors
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
    choose_tokens,
)

lp = pytest.importorskip("transformers.generation.logits_process")

V = 50


def random_case(seed: int, batch: int = 4, length: int = 12, vocab: int = V, low_vocab: int | None = None):
    """Random scores and a history with many repeats (small id range) so every processor bites."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=g) * 3
    ids = torch.randint(0, low_vocab or 8, (batch, length), generator=g)
    return ids, scores


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(torch.isinf(a), torch.isinf(b)), "different tokens were removed"
    finite = torch.isfinite(a)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-6, atol=1e-6)


# ---- each processor vs transformers -------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_hf(seed, penalty):
    ids, scores = random_case(seed)
    same(RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()),
         lp.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.3, 1.0, 1.7])
def test_temperature_matches_hf(seed, t):
    ids, scores = random_case(seed)
    same(TemperatureLogitsWarper(t)(ids, scores), lp.TemperatureLogitsWarper(t)(ids, scores))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k,keep", [(1, 1), (5, 1), (5, 8), (V + 10, 1)])
def test_top_k_matches_hf(seed, k, keep):
    ids, scores = random_case(seed)
    scores[0, :6] = scores[0, 0]  # ties at the k-th value are kept by both
    same(TopKLogitsWarper(k, keep)(ids, scores), lp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, scores))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p,keep", [(0.1, 1), (0.5, 1), (0.9, 3), (0.99, 1), (1e-6, 2)])
def test_top_p_matches_hf(seed, p, keep):
    ids, scores = random_case(seed)
    same(TopPLogitsWarper(p, keep)(ids, scores), lp.TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, scores))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("m,keep", [(0.0, 1), (0.05, 1), (0.3, 2), (1.0, 1)])
def test_min_p_matches_hf(seed, m, keep):
    ids, scores = random_case(seed)
    same(MinPLogitsWarper(m, keep)(ids, scores), lp.MinPLogitsWarper(m, min_tokens_to_keep=keep)(ids, scores))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_hf(seed, n):
    ids, scores = random_case(seed, length=20, low_vocab=4)
    same(NoRepeatNGramLogitsProcessor(n)(ids, scores), lp.NoRepeatNGramLogitsProcessor(n)(ids, scores))


@pytest.mark.parametrize("seed", range(4))
def test_no_bad_words_matches_hf(seed):
    ids, scores = random_case(seed, length=10, low_vocab=4)
    bad = [[7], [3, 9], [1, 2], [0, 1, 2], [2, 2, 3, 11], [5]]  # [5] is EOS: ignored by both
    ids[0, -2:] = torch.tensor([0, 1])  # make sure some multi-token prefixes match
    ids[1, -1] = 3
    ours = NoBadWordsLogitsProcessor(bad, eos_token_id=5)(ids, scores)
    same(ours, lp.NoBadWordsLogitsProcessor(bad, eos_token_id=5)(ids, scores))
    assert torch.isinf(ours[0, 2]) and torch.isinf(ours[1, 9]) and torch.isfinite(ours[:, 5]).all()


@pytest.mark.parametrize("length", [3, 6, 9])
def test_min_new_tokens_matches_hf(length):
    ids, scores = random_case(0, length=length)
    ours = MinNewTokensLogitsProcessor(3, 6, [4, 7])(ids, scores)
    same(ours, lp.MinNewTokensLengthLogitsProcessor(3, 6, [4, 7])(ids, scores))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.2, 3.0), k=st.integers(1, 60), p=st.floats(0.05, 1.0),
       rep=st.floats(0.5, 2.0), n=st.integers(0, 3), m=st.one_of(st.none(), st.floats(0.0, 0.5)))
def test_pipeline_matches_hf_in_hf_order(seed, t, k, p, rep, n, m):
    """The whole chain build_logits_processors makes equals HF's processors applied in HF's order."""
    ids, scores = random_case(seed % 1000, low_vocab=6)
    cfg = GenerationConfig(do_sample=True, temperature=t, top_k=k, top_p=p, repetition_penalty=rep,
                           no_repeat_ngram_size=n, min_p=m, min_new_tokens=2, max_new_tokens=20, eos_token_id=3)
    ours = build_logits_processors(cfg, prompt_len=ids.shape[1] - 1)(ids, scores.clone())
    hf = [lp.RepetitionPenaltyLogitsProcessor(rep)] if rep != 1.0 else []
    hf += [lp.NoRepeatNGramLogitsProcessor(n)] if n else []
    hf += [lp.MinNewTokensLengthLogitsProcessor(ids.shape[1] - 1, 2, 3)]
    hf += [lp.TemperatureLogitsWarper(t)] if t != 1.0 else []
    hf += [lp.TopKLogitsWarper(k)]
    hf += [lp.TopPLogitsWarper(p)] if p < 1.0 else []
    hf += [lp.MinPLogitsWarper(m)] if m is not None else []
    ref = lp.LogitsProcessorList(hf)(ids, scores.clone())
    same(ours, ref)


# ---- OpenAI penalties vs the formula --------------------------------------------------------
@pytest.mark.parametrize("presence,frequency", [(0.0, 0.5), (0.7, 0.0), (1.5, -0.4), (-1.0, 2.0)])
def test_presence_frequency_formula(presence, frequency):
    ids, scores = random_case(1, length=15)
    prompt = 5
    out = PresenceFrequencyPenaltyLogitsProcessor(presence, frequency, prompt)(ids, scores)
    expect = scores.clone()
    for b in range(ids.shape[0]):
        generated = ids[b, prompt:].tolist()
        for tok in set(generated):
            c = generated.count(tok)
            expect[b, tok] -= presence * (c > 0) + frequency * c
    torch.testing.assert_close(out, expect)
    # prompt tokens that were not generated are untouched
    only_prompt = set(ids[0, :prompt].tolist()) - set(ids[0, prompt:].tolist())
    for tok in only_prompt:
        assert out[0, tok] == scores[0, tok]


def test_presence_penalty_per_row_prompt_length():
    ids, scores = random_case(2, length=10)
    per_row = torch.tensor([2, 4, 6, 8])
    out = PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.25, per_row)(ids, scores)
    for b in range(4):
        one = PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.25, int(per_row[b]))(ids[b: b + 1], scores[b: b + 1])
        torch.testing.assert_close(out[b: b + 1], one)


# ---- padding (negative ids) is invisible -------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: RepetitionPenaltyLogitsProcessor(1.7),
    lambda: NoRepeatNGramLogitsProcessor(2),
    lambda: NoRepeatNGramLogitsProcessor(3),
    lambda: NoBadWordsLogitsProcessor([[1, 2], [3]]),
])
def test_left_padding_is_ignored(make):
    ids, scores = random_case(3, batch=1, length=9, low_vocab=4)
    padded = torch.cat([torch.full((1, 4), -1), ids], 1)
    torch.testing.assert_close(make()(padded, scores), make()(ids, scores))


def test_presence_penalty_ignores_padding():
    ids, scores = random_case(3, batch=1, length=9)
    padded = torch.cat([torch.full((1, 3), -1), ids], 1)
    a = PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.5, 4)(ids, scores)
    b = PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.5, 7)(padded, scores)
    torch.testing.assert_close(a, b)


# ---- choosing ---------------------------------------------------------------------------------
def test_choose_tokens_seeded_and_greedy():
    scores = torch.randn(3, V)
    assert torch.equal(choose_tokens(scores, False), scores.argmax(-1))
    a = choose_tokens(scores, True, torch.Generator().manual_seed(4))
    b = choose_tokens(scores, True, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    masked = TopKLogitsWarper(1)(None, scores)
    assert torch.equal(choose_tokens(masked, True, torch.Generator().manual_seed(0)), scores.argmax(-1))


# ---- config --------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", -1), ("temperature", -0.5), ("top_k", -3), ("top_p", 0.0), ("top_p", 1.5),
    ("min_p", 2.0), ("repetition_penalty", 0.0), ("num_beams", 0), ("early_stopping", "sometimes"),
    ("bad_words_ids", [[]]), ("stop", [""]), ("eos_token_id", -1), ("length_penalty", math.inf),
    ("no_repeat_ngram_size", 1.5),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


def test_config_cross_field_rules_and_json_round_trip():
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(do_sample=True, temperature=0.0)
    with pytest.raises(ConfigError, match="num_return_sequences"):
        GenerationConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=3, min_new_tokens=4)
    with pytest.raises(ConfigError, match="unknown"):
        GenerationConfig().replace(top_q=0.5)
    cfg = GenerationConfig(do_sample=True, top_k=5, stop="###", eos_token_id=[2, 3], top_logprobs=3)
    assert cfg.stop == ["###"] and cfg.logprobs and cfg.eos_ids == [2, 3]
    assert GenerationConfig.from_json(cfg.to_json()) == cfg
    assert GenerationConfig(eos_token_id=[]).eos_ids == []
