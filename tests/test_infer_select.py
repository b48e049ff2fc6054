"""`select_tokens`: processors, the allowed-token mask, greedy/sampled choice and logprobs."""

import pytest
import torch

from lmkit.infer import GenerationConfig
from lmkit.infer.sampling import NO_TOKEN, build_logits_processors
from lmkit.infer.select import make_generator, select_tokens, token_logprobs

LOGITS = torch.tensor([[0.1, 2.0, 1.5, -1.0, 0.3], [3.0, -2.0, 0.0, 2.9, 1.0]])


def test_greedy_is_argmax_and_logprobs_are_of_the_scores():
    before = LOGITS.clone()
    sel = select_tokens(LOGITS, logprobs=True, top_logprobs=2)
    assert sel.tokens.tolist() == [1, 0]
    lsm = torch.log_softmax(LOGITS, -1)
    torch.testing.assert_close(sel.logprobs, lsm[[0, 1], [1, 0]])
    values, ids = sel.top_logprobs
    assert ids.tolist() == [[1, 2], [0, 3]]
    torch.testing.assert_close(values, torch.topk(lsm, 2).values)
    assert sel.probs is None
    assert torch.equal(LOGITS, before)  # the input is never modified


def test_nothing_extra_unless_asked():
    sel = select_tokens(LOGITS)
    assert sel.logprobs is None and sel.top_logprobs is None
    lp, top = token_logprobs(LOGITS, torch.tensor([2, 4]))
    assert top is None and lp.shape == (2,)


def test_top_logprobs_never_asks_for_more_than_the_vocabulary():
    _, (values, ids) = token_logprobs(LOGITS, torch.tensor([0, 0]), top=20)
    assert values.shape == ids.shape == (2, 5)


def test_allowed_mask_restricts_the_choice():
    allowed = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    sel = select_tokens(LOGITS, allowed=allowed, logprobs=True)
    assert sel.tokens.tolist() == [2, 3]
    # the logprobs are those of the masked distribution: the allowed tokens share all the mass
    masked = torch.log_softmax(LOGITS.masked_fill(~allowed, float("-inf")), -1)
    torch.testing.assert_close(sel.logprobs, masked[[0, 1], [2, 3]])


def test_allowed_mask_comes_before_the_warpers():
    """top_k=1 keeps the best *allowed* token, so sampling still has something to draw."""
    cfg = GenerationConfig(do_sample=True, top_k=1)
    procs = build_logits_processors(cfg, 0)
    allowed = torch.ones(2, 5, dtype=torch.bool)
    allowed[0, 1] = allowed[1, 0] = False  # forbid each row's argmax
    history = torch.empty(2, 0, dtype=torch.long)
    for seed in range(5):
        sel = select_tokens(LOGITS, history=history, processors=procs, do_sample=True, allowed=allowed,
                            generator=make_generator(cfg.replace(seed=seed), torch.device("cpu")))
        assert sel.tokens.tolist() == [2, 3]


def test_sampling_never_draws_a_forbidden_token_and_is_seeded():
    allowed = torch.tensor([[True, False, False, True, True]] * 2)
    cfg = GenerationConfig(do_sample=True, seed=7)
    draws = []
    for _ in range(2):
        gen = make_generator(cfg, torch.device("cpu"))
        draws.append([select_tokens(LOGITS, do_sample=True, generator=gen, allowed=allowed).tokens.tolist()
                      for _ in range(30)])
    assert draws[0] == draws[1]
    assert {t for row in draws[0] for t in row} <= {0, 3, 4}


def test_sampling_returns_the_distribution_it_drew_from():
    sel = select_tokens(LOGITS, do_sample=True, generator=make_generator(GenerationConfig(seed=0), "cpu"))
    torch.testing.assert_close(sel.probs, torch.softmax(LOGITS, -1))
    torch.testing.assert_close(sel.probs.sum(-1), torch.ones(2))


def test_processors_see_the_history():
    procs = build_logits_processors(GenerationConfig(repetition_penalty=10.0), 1)
    history = torch.tensor([[NO_TOKEN, 1], [0, 0]])
    sel = select_tokens(LOGITS, history=history, processors=procs)
    assert sel.tokens.tolist() == [2, 3]  # each row's argmax was already used: penalised away
    torch.testing.assert_close(sel.scores[0, 1], torch.tensor(0.2))


def test_no_seed_means_no_private_generator():
    assert make_generator(GenerationConfig(), "cpu") is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_are_chosen_in_float32(dtype):
    sel = select_tokens(LOGITS.to(dtype), logprobs=True)
    assert sel.scores.dtype == torch.float32 and sel.logprobs.dtype == torch.float32
    assert sel.tokens.tolist() == [1, 0]
