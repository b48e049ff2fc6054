"""Mixture of Experts: routing, auxiliary losses and capacity, against hand computation and
transformers' Mixtral `load_balancing_loss_func`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.moe import MoE, capacity_keep, load_balancing_loss

D = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP overhead (large on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(**kw) -> MoE:
    base = dict(vocab_size=10, d_model=D, n_heads=2, d_ff=24, n_experts=4, n_experts_per_tok=2)
    base.update(kw)
    torch.manual_seed(0)
    moe = MoE(ModelConfig(**base))
    with torch.no_grad():
        moe.gate.weight.normal_(0, 1.0)
    return moe


def hand_moe(moe: MoE, x: torch.Tensor, k: int, renormalise: bool) -> torch.Tensor:
    """Token by token: softmax over experts, top-k, weighted sum of the chosen experts' FFNs."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        logits = moe.gate.weight @ x[n]
        p = torch.softmax(logits, -1)
        order = sorted(range(len(p)), key=lambda e: -float(p[e]))[:k]
        total = sum(float(p[e]) for e in order) if renormalise else 1.0
        for e in order:
            out[n] += float(p[e]) / total * moe.experts[e](x[n][None])[0]
    return out


@pytest.mark.parametrize("norm_topk", [True, False])
def test_topk_routing_is_weighted_sum_of_chosen_experts(norm_topk):
    moe = make(norm_topk_prob=norm_topk)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        y = moe(x)
        ref = hand_moe(moe, x.reshape(-1, D), 2, norm_topk)
    torch.testing.assert_close(y.reshape(-1, D), ref, atol=1e-5, rtol=1e-5)
    probs = torch.softmax(moe.router_logits, -1)
    top = probs.topk(2, -1).indices
    assert torch.equal(moe.expert_indices.sort(-1).values, top.sort(-1).values)


def test_switch_routing_scales_by_router_probability():
    moe = make(router="switch")
    x = torch.randn(7, D)
    with torch.no_grad():
        y = moe(x)
        ref = hand_moe(moe, x, 1, renormalise=False)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert moe.expert_indices.shape == (7, 1)


def independent_lb(logits: np.ndarray, k: int, mask: np.ndarray | None = None) -> float:
    """Switch eq. 4-6 with top-k counting, written out with loops."""
    n, e = logits.shape
    mask = np.ones(n) if mask is None else mask.astype(float)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    f = np.zeros(e)
    P = np.zeros(e)
    for t in range(n):
        for i in np.argsort(-p[t])[:k]:
            f[i] += mask[t]
        P += mask[t] * p[t]
    f /= mask.sum()
    P /= mask.sum()
    return float(e * (f * P).sum())


@pytest.mark.parametrize("router,k", [("topk", 2), ("topk", 1), ("switch", 1)])
def test_load_balancing_loss(router, k):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    moe = make(router=router, n_experts_per_tok=k, router_aux_loss_coef=0.3)
    x = torch.randn(3, 6, D)
    moe(x)
    logits = moe.router_logits.detach()
    ours = moe.load_balancing_loss
    assert abs(float(ours.detach()) - independent_lb(logits.double().numpy(), k)) < 1e-5
    hf = load_balancing_loss_func((logits,), 4, top_k=k)
    torch.testing.assert_close(ours, hf.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(moe.aux_loss, 0.3 * ours)
    # padding is left out of the statistics, as HF does with attention_mask
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :2] = 0
    mask[2, :5] = 0
    moe(x, token_mask=mask.bool())
    hf_masked = load_balancing_loss_func((moe.router_logits.detach(),), 4, top_k=k, attention_mask=mask)
    torch.testing.assert_close(moe.load_balancing_loss, hf_masked.float(), atol=1e-6, rtol=1e-5)
    assert abs(float(moe.load_balancing_loss.detach()) - independent_lb(logits.double().numpy(), k, mask.reshape(-1).numpy())) < 1e-5


def test_balanced_routing_minimises_loss():
    # uniform probabilities and perfectly spread assignments: N * sum (k/N)(1/N) = k
    probs = torch.full((8, 4), 0.25)
    idx = torch.tensor([[0, 1], [2, 3]] * 4)
    assert float(load_balancing_loss(probs, idx, 4)) == pytest.approx(2.0)


def test_router_z_loss():
    moe = make(router_aux_loss_coef=0.0, router_z_loss_coef=0.5)
    x = torch.randn(9, D)
    moe(x)
    logits = moe.router_logits.detach().double().numpy()
    lse = np.log(np.exp(logits).sum(-1))
    ref = float((lse**2).mean())
    assert float(moe.z_loss.detach()) == pytest.approx(ref, rel=1e-5)
    assert float(moe.aux_loss.detach()) == pytest.approx(0.5 * ref, rel=1e-5)
    moe.aux_loss.backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_capacity_drops_overflow_tokens():
    """Switch, all 8 tokens prefer expert 0; capacity = ceil(1.0 * 8 * 1 / 4) = 2."""
    moe = make(router="switch", capacity_factor=1.0)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 5.0
    x = torch.randn(8, D)
    x[:, 0] = 1.0
    assert moe.capacity(8) == 2
    with torch.no_grad():
        y = moe(x)
        p0 = torch.softmax(moe.router_logits, -1)[:, 0]
    assert moe.kept.flatten().tolist() == [True, True] + [False] * 6
    torch.testing.assert_close(y[:2], p0[:2, None] * moe.experts[0](x[:2]), atol=1e-6, rtol=1e-5)
    assert y[2:].abs().max() == 0  # dropped: zero expert output, the residual carries them
    # a larger capacity factor keeps everyone
    moe.capacity_factor = 4.0
    with torch.no_grad():
        assert moe(x).abs().min(dim=-1).values.gt(0).all()


def test_capacity_priority_first_choices_before_second():
    # token 0: e0 then e1; token 1: e1 then e0; capacity 1 each
    idx = torch.tensor([[0, 1], [1, 0]])
    keep = capacity_keep(idx, 4, capacity=1)
    assert keep.tolist() == [[True, False], [True, False]]  # each token keeps its first choice
    # within one choice rank, earlier tokens win; padding takes no capacity
    idx = torch.tensor([[2, 0], [2, 1], [2, 3]])
    assert capacity_keep(idx, 4, 1)[:, 0].tolist() == [True, False, False]
    mask = torch.tensor([False, True, True])
    assert capacity_keep(idx, 4, 1, mask)[:, 0].tolist() == [False, True, False]


def test_capacity_formula():
    moe = make(capacity_factor=1.25, n_experts_per_tok=2)
    assert moe.capacity(10) == math.ceil(1.25 * 10 * 2 / 4)
    assert make().capacity(10) is None
