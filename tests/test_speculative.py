"""Speculative decoding preserves the target model's output distribution.

Oracles: (1) greedy speculative output equals the target's own greedy output; (2) sampled
outputs are statistically indistinguishable from the *exact* target distribution, computed
by enumerating a tiny vocabulary (8 tokens) with a deliberately different draft model:
chi-square goodness-of-fit at a fixed seed. The same test rejects the draft's own samples,
so it has the power to catch a wrong acceptance rule.
"""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer import generate, speculative_generate
from lmkit.infer.config import GenerationConfig
from lmkit.infer.sampling import build_logits_processors
from lmkit.infer.speculative import verify_drafts
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

V = 8
PROMPT = [1, 5, 3]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed: int, d_model: int, layers: int, vocab: int = V, init: float = 0.5) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=layers, n_heads=2, d_ff=2 * d_model,
                      max_seq_len=64, initializer_range=init)
    return DecoderLM(cfg).eval()


@pytest.fixture(scope="module")
def target():
    return tiny(0, 32, 2)


@pytest.fixture(scope="module")
def draft():
    return tiny(1, 16, 1)  # different weights and size: a genuinely different distribution


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells with small expected counts are pooled."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    n = counts.sum()
    expected = probs * n
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


# ---- the acceptance rule on its own ------------------------------------------------------
def test_verify_drafts_emits_target_distribution():
    g = torch.Generator().manual_seed(0)
    n, gamma = 200_000, 3
    p = torch.softmax(torch.randn(gamma + 1, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(gamma, V, generator=g) * 2, -1)
    q[0, 3] = 0.0  # a token the draft never proposes but the target likes
    q[0] /= q[0].sum()
    p[1, 5] = 0.0  # a token the draft proposes but the target never emits
    p[1] /= p[1].sum()
    draft = torch.stack([torch.multinomial(q[j], n, replacement=True, generator=g) for j in range(gamma)], 1)
    accepted, nxt = verify_drafts(p.expand(n, -1, -1), q.expand(n, -1, -1), draft, True, g)
    first = torch.where(accepted > 0, draft[:, 0], nxt)
    assert chi_square_pvalue(torch.bincount(first, minlength=V), p[0]) > 1e-3
    sel = accepted >= 1  # the first draft was kept: the second token is drafted or resampled
    second = torch.where(accepted[sel] > 1, draft[sel, 1], nxt[sel])
    assert chi_square_pvalue(torch.bincount(second, minlength=V), p[1]) > 1e-3
    assert not (second == 5).any()
    expected_rate = torch.minimum(p[0], q[0]).sum()  # P(first draft accepted) = sum_x min(p, q)
    assert (accepted >= 1).double().mean().item() == pytest.approx(expected_rate.item(), abs=0.005)
    # the test has power: the draft's own first tokens are rejected
    assert chi_square_pvalue(torch.bincount(draft[:, 0], minlength=V), p[0]) < 1e-6


def test_verify_drafts_greedy():
    p = torch.zeros(1, 4, V)
    p[0, torch.arange(4), torch.tensor([2, 5, 1, 7])] = 1.0
    q = torch.zeros(1, 3, V)
    acc, nxt = verify_drafts(p, q, torch.tensor([[2, 5, 4]]), False)
    assert acc.item() == 2 and nxt.item() == 1
    acc, nxt = verify_drafts(p, q, torch.tensor([[2, 5, 1]]), False)
    assert acc.item() == 3 and nxt.item() == 7


# ---- end to end ----------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_equals_target_greedy(target, draft, gamma):
    prompts = [PROMPT, [2, 2], [7, 1, 4, 4, 0, 6]]
    ref = generate(target, prompts, max_new_tokens=25, eos_token_id=None, logprobs=True)
    out = speculative_generate(target, draft, prompts, max_new_tokens=25, num_draft_tokens=gamma, logprobs=True)
    assert out.sequences == ref.sequences
    assert out.finish_reasons == ref.finish_reasons
    for a, b in zip(out.logprobs, ref.logprobs):
        assert a == pytest.approx(b, abs=1e-4)
    assert 0 < out.accepted <= out.proposed and out.target_calls < 3 * 25


def test_greedy_with_eos_and_processors(target, draft):
    free = generate(target, [PROMPT], max_new_tokens=20).sequences[0]
    eos = free[7]
    kw = dict(max_new_tokens=20, eos_token_id=eos, repetition_penalty=1.3, no_repeat_ngram_size=3)
    ref = generate(target, [PROMPT], **kw)
    out = speculative_generate(target, draft, [PROMPT], num_draft_tokens=4, **kw)
    assert out.sequences == ref.sequences and out.stop_reasons == ref.stop_reasons


def test_identical_draft_accepts_everything(target):
    out = speculative_generate(target, target, [PROMPT], max_new_tokens=12, num_draft_tokens=3, do_sample=True, seed=0)
    assert out.acceptance_rate == 1.0 and len(out.sequences[0]) == 12


def exact_distribution(model, cfg: GenerationConfig, length: int) -> torch.Tensor:
    """P(x_1..x_length | PROMPT) under `model` with cfg's processors, by enumeration: [V] * length."""
    seqs = [[]]
    table = {(): 1.0}
    for step in range(length):
        ctx = torch.tensor([PROMPT + list(s) for s in seqs])
        with torch.no_grad():
            logits = model(ctx).logits[:, -1].float()
        procs = build_logits_processors(cfg, len(PROMPT), [])
        scores = torch.stack([procs(ctx[i : i + 1], logits[i : i + 1])[0] for i in range(len(seqs))])
        p = torch.softmax(scores, -1)
        new_table = {}
        for i, s in enumerate(seqs):
            for x in range(V):
                new_table[tuple(s) + (x,)] = table[tuple(s)] * p[i, x].item()
        table = new_table
        seqs = [list(k) for k in table]
    probs = torch.zeros([V] * length, dtype=torch.float64)
    for k, v in table.items():
        probs[k] = v
    return probs


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=5)], ids=["plain", "temp-topk"])
def test_sampled_distribution_matches_target(target, draft, kw):
    n_runs, length = 1500, 3
    cfg = GenerationConfig(max_new_tokens=length, do_sample=True, **kw)
    exact = exact_distribution(target, cfg, length)
    gen_cfg = dict(max_new_tokens=length, do_sample=True, eos_token_id=None, **kw)
    out = speculative_generate(target, draft, [PROMPT] * n_runs, num_draft_tokens=2, seed=1234, **gen_cfg)
    samples = torch.tensor(out.sequences)
    assert samples.shape == (n_runs, length)
    assert 0.05 < out.acceptance_rate < 0.95  # the draft really differs, and sometimes agrees
    pairs = torch.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V)
    assert chi_square_pvalue(pairs, exact.sum(2)) > 1e-3
    third = torch.bincount(samples[:, 2], minlength=V)
    assert chi_square_pvalue(third, exact.sum((0, 1))) > 1e-3
    # power: plain sampling from the draft model fails the same test
    from_draft = torch.tensor(generate(draft, [PROMPT] * n_runs, seed=1234, **gen_cfg).sequences)
    assert chi_square_pvalue(torch.bincount(from_draft[:, 0] * V + from_draft[:, 1], minlength=V * V),
                             exact.sum(2)) < 1e-6


def test_errors(target, draft):
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_generate(target, tiny(2, 16, 1, vocab=V + 1), [PROMPT], max_new_tokens=3)
    with pytest.raises(ConfigError, match="num_beams"):
        speculative_generate(target, draft, [PROMPT], max_new_tokens=3, num_beams=2)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        speculative_generate(target, draft, [PROMPT], max_new_tokens=62)
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        speculative_generate(target, draft, [PROMPT], max_new_tokens=3, num_draft_tokens=0)

