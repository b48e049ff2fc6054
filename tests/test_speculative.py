"""Speculative decoding: greedy output identical to the target's greedy; sampled output
distributed as the target's (chi-square against the exact target distribution, computed by
enumerating every continuation with the target model and transformers' logits processors)."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer import generate, speculative_generate
from lmkit.infer.speculative import speculative_accept
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

lp = pytest.importorskip("transformers.generation.logits_process")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed: int, vocab: int, init: float, position: str = "rope", layers: int = 1) -> DecoderLM:
    torch.manual_seed(seed)
    extra = dict(norm="layernorm", activation="gelu_tanh", gated_ffn=False) if position == "learned" else {}
    cfg = ModelConfig(vocab_size=vocab, d_model=16, n_layers=layers, n_heads=2, d_ff=32, max_seq_len=64,
                      initializer_range=init, position=position, **extra)
    return DecoderLM(cfg).eval()


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; cells expected < 5 are pooled into one."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= 5
    c = torch.cat([counts.double()[big], counts.double()[~big].sum()[None]])
    e = torch.cat([expected[big], expected[~big].sum()[None]])
    if e[-1] == 0:
        c, e = c[:-1], e[:-1]
    stat = ((c - e) ** 2 / e).sum()
    df = len(c) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.double), stat / 2))


# ---- greedy: identical to the target ------------------------------------------------------------
@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_is_identical_to_target_greedy(position, k):
    target = tiny(0, 40, 0.5, position, layers=2)
    draft = tiny(1, 40, 0.5, position)
    prompts = [[5, 6, 7, 8, 9], [3], [11, 12, 13]]  # batched, left-padded
    for eos in ([], [4, 9]):
        ref = generate(target, prompts, max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
        out = speculative_generate(target, draft, prompts, max_new_tokens=16, eos_token_id=eos, pad_token_id=0,
                                   num_draft_tokens=k)
        assert out.token_ids == ref.token_ids
        assert out.finish_reasons == ref.finish_reasons
        assert torch.equal(out.sequences, ref.sequences)
        one = speculative_generate(target, draft, [prompts[0]], max_new_tokens=16, eos_token_id=eos,
                                   num_draft_tokens=k)
        assert one.token_ids == ref.token_ids[:1]


def test_draft_equal_to_target_accepts_everything():
    target = tiny(0, 40, 0.5)
    out = speculative_generate(target, target, [[5, 6, 7]], max_new_tokens=16, eos_token_id=[], num_draft_tokens=4)
    assert out.acceptance_rate == 1.0
    assert out.num_target_forwards == 1 + 4  # prefill + 16 tokens / (4 drafts + 1 bonus)
    assert out.token_ids == generate(target, [[5, 6, 7]], max_new_tokens=16, eos_token_id=[]).token_ids


def test_greedy_with_processors_is_identical():
    target, draft = tiny(0, 40, 0.5, layers=2), tiny(2, 40, 0.5)
    kw = dict(max_new_tokens=20, eos_token_id=[], repetition_penalty=1.4, no_repeat_ngram_size=2,
              presence_penalty=0.3, frequency_penalty=0.2)
    prompts = [[5, 6, 7, 5, 6], [8, 8]]
    ref = generate(target, prompts, **kw)
    assert speculative_generate(target, draft, prompts, num_draft_tokens=3, **kw).token_ids == ref.token_ids


# ---- sampling: the target's distribution -------------------------------------------------------
V, N, PROMPT = 8, 3, [1, 2, 3]


def exact_joint(model: DecoderLM, processors=None) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) for all 8^3 continuations, from full forwards (no cache)."""
    seqs = torch.cartesian_prod(*[torch.arange(V)] * N)
    full = torch.cat([torch.tensor(PROMPT).expand(len(seqs), len(PROMPT)), seqs], 1)
    with torch.no_grad():
        logits = model(full).logits
    logp = torch.zeros(len(seqs), dtype=torch.double)
    p = len(PROMPT)
    for j in range(N):
        scores = logits[:, p - 1 + j]
        if processors is not None:
            scores = processors(full[:, : p + j], scores)
        logp += scores.log_softmax(-1).double()[torch.arange(len(seqs)), seqs[:, j]]
    return logp.exp()


def joint_counts(token_ids: list[list[int]]) -> torch.Tensor:
    t = torch.tensor(token_ids)
    return torch.bincount(t[:, 0] * V * V + t[:, 1] * V + t[:, 2], minlength=V ** N)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sampled_joint_distribution_is_the_targets(k):
    target, draft = tiny(0, V, 0.5), tiny(1, V, 0.5)  # deliberately different models
    exact, draft_exact = exact_joint(target), exact_joint(draft)
    assert (exact - draft_exact).abs().sum() / 2 > 0.5  # total variation: the draft is far off
    runs = 12000
    out = speculative_generate(target, draft, [PROMPT] * runs, max_new_tokens=N, do_sample=True, seed=k,
                               eos_token_id=[], num_draft_tokens=k)
    assert 0.0 < out.acceptance_rate < 0.9
    assert chi_square_pvalue(joint_counts(out.token_ids), exact) > 1e-3
    # the test has power: samples from the draft itself are rejected at once
    wrong = generate(draft, [PROMPT] * runs, max_new_tokens=N, do_sample=True, seed=k, eos_token_id=[])
    assert chi_square_pvalue(joint_counts(wrong.token_ids), exact) < 1e-12


def test_sampled_distribution_with_processors_is_the_processed_targets():
    target, draft = tiny(3, V, 0.5), tiny(4, V, 0.5)
    procs = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.5), lp.TemperatureLogitsWarper(0.7),
                                    lp.TopKLogitsWarper(5), lp.TopPLogitsWarper(0.9)])
    exact = exact_joint(target, procs)
    out = speculative_generate(target, draft, [PROMPT] * 12000, max_new_tokens=N, do_sample=True, seed=0,
                               eos_token_id=[], num_draft_tokens=2, repetition_penalty=1.5, temperature=0.7,
                               top_k=5, top_p=0.9)
    counts = joint_counts(out.token_ids)
    assert counts[exact == 0].sum() == 0  # nothing outside top-k/top-p ever comes out
    assert chi_square_pvalue(counts, exact) > 1e-3


def test_accept_rule_alone_preserves_the_distribution():
    """The verification step on its own, vectorised over many independent trials."""
    g = torch.Generator().manual_seed(0)
    trials, k, vocab = 200_000, 3, 6
    p = torch.softmax(torch.randn(k + 1, vocab, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 2, -1)
    drafts = torch.multinomial(q.repeat(trials, 1), 1, generator=g).view(trials, k)
    n, nxt = speculative_accept(p.expand(trials, k + 1, vocab), q.expand(trials, k, vocab), drafts, True, g)
    first = torch.where(n > 0, drafts[:, 0], nxt)  # the first emitted token must follow p[0]
    assert chi_square_pvalue(torch.bincount(first, minlength=vocab), p[0]) > 1e-3
    rejected_first = n == 0  # given a rejection at 0 the replacement follows norm(max(0, p0 - q0))
    residual = (p[0] - q[0]).clamp(min=0)
    residual /= residual.sum()
    assert chi_square_pvalue(torch.bincount(nxt[rejected_first], minlength=vocab), residual) > 1e-3
    # acceptance probability of the first draft is sum(min(p, q))
    assert (n > 0).double().mean().item() == pytest.approx(torch.minimum(p[0], q[0]).sum().item(), abs=5e-3)


# ---- errors --------------------------------------------------------------------------------------
def test_errors():
    target, other = tiny(0, 40, 0.5), tiny(1, 41, 0.5)
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_generate(target, other, [[1, 2]])
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        speculative_generate(target, target, [[1, 2]], num_draft_tokens=0)
    with pytest.raises(ConfigError, match="beams"):
        speculative_generate(target, target, [[1, 2]], num_beams=2)
