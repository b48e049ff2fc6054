"""Alignment losses against independent computations of the papers' formulas and TRL."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.align.dpo import dpo_loss
from lmkit.align.gae import compute_gae, whiten
from lmkit.align.grpo import group_advantages, grpo_loss, k3_kl
from lmkit.align.kl_controller import AdaptiveKLController
from lmkit.align.ppo import kl_penalised_rewards, ppo_policy_loss, ppo_value_loss
from lmkit.align.reward_model import pairwise_accuracy, pairwise_loss
from lmkit.errors import ConfigError

# fixed log-probs: (policy chosen, policy rejected, ref chosen, ref rejected, len chosen, len rejected)
ROWS = [(-12.3, -15.1, -13.0, -14.2, 5, 7), (-8.0, -7.5, -8.4, -7.0, 3, 2), (-20.0, -19.0, -21.5, -18.0, 9, 6),
        (-3.1, -9.9, -3.3, -9.0, 1, 4)]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def paper_dpo(pc, pr, rc, rr, beta):  # Rafailov et al. eq. 7
    return -_log_sigmoid(beta * ((pc - rc) - (pr - rr)))


def paper_cdpo(pc, pr, rc, rr, beta, eps):  # Mitchell 2023 "conservative DPO"
    z = beta * ((pc - rc) - (pr - rr))
    return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)


def paper_ipo(pc, pr, rc, rr, tau, lc=1, lr=1):  # Azar et al. eq. 17, h on per-token means as TRL
    h = (pc - rc) / lc - (pr - rr) / lr
    return (h - 1 / (2 * tau)) ** 2


def _tensors():
    cols = list(zip(*ROWS))
    return [torch.tensor(c, dtype=torch.float64) for c in cols]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_cdpo_ipo_match_paper_formulas(beta):
    pc, pr, rc, rr, lc, lr = _tensors()
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta)
    want = [paper_dpo(*row[:4], beta) for row in ROWS]
    assert losses.tolist() == pytest.approx(want, rel=1e-12)
    assert chosen_r.tolist() == pytest.approx([beta * (r[0] - r[2]) for r in ROWS])
    assert rejected_r.tolist() == pytest.approx([beta * (r[1] - r[3]) for r in ROWS])
    for eps in (0.1, 0.3):
        losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
        assert losses.tolist() == pytest.approx([paper_cdpo(*r[:4], beta, eps) for r in ROWS], rel=1e-12)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert losses.tolist() == pytest.approx([paper_ipo(*r[:4], beta) for r in ROWS], rel=1e-12)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    assert losses.tolist() == pytest.approx([paper_ipo(*r[:4], beta, r[4], r[5]) for r in ROWS], rel=1e-12)


def test_dpo_bad_settings():
    z = torch.zeros(1)
    with pytest.raises(ConfigError, match="loss_type"):
        dpo_loss(z, z, z, z, loss_type="hinge2")
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo_loss(z, z, z, z, label_smoothing=0.5)


# ---- TRL as a second oracle ---------------------------------------------------------------------
def _trl_loss(loss_type: str, beta: float, label_smoothing: float, rows):
    """TRL's DPOTrainer._compute_loss on precomputed log-probs, with a stand-in model that
    returns per-token log-probs summing to the given totals (no trainer construction needed)."""
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    b = len(rows)
    t = 1 + max(max(r[4], r[5]) for r in rows)
    comp = torch.zeros(2 * b, t, dtype=torch.long)
    logps = torch.zeros(2 * b, t - 1, dtype=torch.float64)
    for i, (pc, pr, _, _, lc, lr) in enumerate(rows):
        for row, total, n in ((i, pc, lc), (b + i, pr, lr)):
            comp[row, t - n:] = 1
            logps[row, t - 1 - n:] = total / n
    out = types.SimpleNamespace(log_probs=logps, entropy=torch.zeros_like(logps), mean_logits=torch.zeros_like(logps),
                                is_top1=torch.zeros_like(logps, dtype=torch.bool))

    class FakeModel:
        training = True

        def __call__(self, **kw):
            return out

    acc = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x,
                                unwrap_model=lambda m: m)
    fake = types.SimpleNamespace(model=FakeModel(), accelerator=acc, aux_loss_enabled=False, precompute_ref_logps=True,
                                 ld_alpha=None, f_divergence_type="reverse_kl", beta=beta, loss_types=[loss_type],
                                 loss_weights=[1.0], label_smoothing=label_smoothing, use_weighting=False,
                                 _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                                 _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * b, t, dtype=torch.long), "attention_mask": torch.ones(2 * b, t, dtype=torch.long),
              "completion_mask": comp, "ref_chosen_logps": torch.tensor([r[2] for r in rows], dtype=torch.float64),
              "ref_rejected_logps": torch.tensor([r[3] for r in rows], dtype=torch.float64)}
    loss = trl_dpo.DPOTrainer._compute_loss(fake, fake.model, inputs, False)
    return float(loss), fake._metrics["train"]


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_dpo_and_ipo_match_trl(beta):
    pc, pr, rc, rr, lc, lr = _tensors()
    trl_loss, metrics = _trl_loss("sigmoid", beta, 0.0, ROWS)
    ours, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert float(ours.mean()) == pytest.approx(trl_loss, rel=1e-9)
    assert metrics["rewards/margins"][0] == pytest.approx(float((cr - rj).mean()), rel=1e-9)
    assert metrics["rewards/accuracies"][0] == pytest.approx(float((cr > rj).double().mean()))
    trl_loss, _ = _trl_loss("ipo", beta, 0.0, ROWS)  # TRL's IPO averages the log-ratios per token
    ours, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    assert float(ours.mean()) == pytest.approx(trl_loss, rel=1e-9)


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_cdpo_matches_trl(eps):
    # TRL 1.x dropped label smoothing from "sigmoid"; its "aot_unpaired" loss is the cDPO
    # expression on sorted log-ratios, which for a single pair is exactly cDPO.
    for row in ROWS:
        pc, pr, rc, rr, _, _ = (torch.tensor([v], dtype=torch.float64) for v in row)
        trl_loss, _ = _trl_loss("aot_unpaired", 0.5, eps, [row])
        ours, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps)
        assert float(ours) == pytest.approx(trl_loss, rel=1e-9)


# ---- reward model ------------------------------------------------------------------------------
def test_pairwise_loss_and_accuracy():
    rc = torch.tensor([1.0, 0.2, -0.5, 3.0])
    rr = torch.tensor([0.0, 0.7, -0.5, 1.0])
    want = sum(-_log_sigmoid(a - b) for a, b in zip(rc.tolist(), rr.tolist())) / 4
    assert float(pairwise_loss(rc, rr)) == pytest.approx(want, rel=1e-6)
    want_m = sum(-_log_sigmoid(a - b - 0.5) for a, b in zip(rc.tolist(), rr.tolist())) / 4
    assert float(pairwise_loss(rc, rr, margin=0.5)) == pytest.approx(want_m, rel=1e-6)
    assert pairwise_accuracy(rc, rr) == 0.5  # the tie counts as wrong


# ---- GAE, whitening, PPO pieces ---------------------------------------------------------------
def reference_gae(rewards, values, gamma, lam):
    """Textbook loop over one episode (lists of floats)."""
    n = len(rewards)
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), min_size=1, max_size=4),
       st.floats(0.5, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_gae_matches_reference_loop(layout, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    t = max(a + b for a, b in layout) + 2
    b = len(layout)
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, t, dtype=torch.float64)
    for i, (start, n) in enumerate(layout):
        mask[i, start:start + n] = 1
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    for i, (start, n) in enumerate(layout):
        want_a, want_r = reference_gae(rewards[i, start:start + n].tolist(), values[i, start:start + n].tolist(), gamma, lam)
        assert adv[i, start:start + n].tolist() == pytest.approx(want_a, rel=1e-9, abs=1e-9)
        assert ret[i, start:start + n].tolist() == pytest.approx(want_r, rel=1e-9, abs=1e-9)
        assert adv[i, :start].abs().sum() == 0 and adv[i, start + n:].abs().sum() == 0


def test_whiten_over_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.float64)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 9.0], dtype=torch.float64)
    want = (vals - vals.mean()) / vals.std()  # unbiased, as TRL's masked_whiten
    w = whiten(x, m)
    assert w[m.bool()].tolist() == pytest.approx(want.tolist(), rel=1e-6)
    assert w[~m.bool()].abs().sum() == 0


def test_kl_penalty_rewards_and_losses():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5, 0.0], [0.0, 0.0, -0.3, -0.2, -1.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5, 0.0], [0.0, 0.0, -0.1, -0.9, -1.0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, 0.1)
    assert rewards[0].tolist() == pytest.approx([0, -0.05, 0.1, 2.0, 0])
    assert rewards[1].tolist() == pytest.approx([0, 0, 0.02, -0.07, -1.0])
    assert kl.sum(-1).tolist() == pytest.approx([-0.5, 0.5])
    # clipped surrogate, token by token
    old = logp - torch.tensor([[0, 0.5, -0.5, 0.05, 0], [0, 0, 0.1, -0.3, 0.0]])
    adv = torch.tensor([[0, 1.0, 1.0, -1.0, 0], [0, 0, -2.0, 0.5, 1.0]])
    loss, clipfrac = ppo_policy_loss(logp, old, adv, mask, 0.2)
    terms, clipped = [], []
    for i in range(2):
        for j in range(5):
            if mask[i, j]:
                r = math.exp(logp[i, j] - old[i, j])
                a = adv[i, j].item()
                u, c = -a * r, -a * min(max(r, 0.8), 1.2)
                terms.append(max(u, c))
                clipped.append(c > u)
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert float(clipfrac) == pytest.approx(sum(clipped) / len(clipped))
    v, v_old, ret = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    vl, _ = ppo_value_loss(v, v_old, ret, mask, 0.2)
    want = []
    for i in range(2):
        for j in range(5):
            if mask[i, j]:
                vc = v_old[i, j] + max(min(v[i, j] - v_old[i, j], 0.2), -0.2)
                want.append(0.5 * max((v[i, j] - ret[i, j]) ** 2, (vc - ret[i, j]) ** 2))
    assert float(vl) == pytest.approx(float(sum(want) / len(want)), rel=1e-5)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c.update(12.0, 256)  # error clipped to +0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    c2 = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c2.update(5.4, 100)
    assert c2.value == pytest.approx(0.2 * (1 + (5.4 / 6 - 1) * 100 / 10000))


# ---- GRPO pieces -----------------------------------------------------------------------------
def test_group_advantages_and_k3():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 0.0])
    adv = group_advantages(r, 4)
    for g in range(3):
        grp = r[4 * g: 4 * g + 4].tolist()
        mean = sum(grp) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 3)
        assert adv[4 * g: 4 * g + 4].tolist() == pytest.approx([(x - mean) / (std + 1e-4) for x in grp], rel=1e-5)
    assert group_advantages(r, 4, scale=False)[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    with pytest.raises(ConfigError, match="groups"):
        group_advantages(r, 5)
    # k3 is >= 0 and its expectation under pi is KL(pi || ref) (checked on a small categorical)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    k3 = k3_kl(p.log(), q.log())
    assert (k3 >= 0).all()
    assert float((p * k3).sum()) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-12)


def test_grpo_loss_matches_manual():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.1, -0.3]])
    old = torch.tensor([[-1.3, -1.9, 0.0], [-0.5, -0.4, -0.2]])
    ref = torch.tensor([[-1.1, -2.5, 0.0], [-0.7, -0.1, -0.6]])
    adv = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = grpo_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=0.04)
    per_seq = []
    for i in range(2):
        terms = []
        for j in range(3):
            if mask[i, j]:
                ratio = math.exp(logp[i, j] - old[i, j])
                a = adv[i].item()
                d = ref[i, j].item() - logp[i, j].item()
                terms.append(-min(ratio * a, min(max(ratio, 0.8), 1.2) * a) + 0.04 * (math.exp(d) - d - 1))
        per_seq.append(sum(terms) / len(terms))
    assert float(loss) == pytest.approx(sum(per_seq) / 2, rel=1e-5)
    loss_tok, _ = grpo_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=0.0, loss_type="token")
    tokens = [(i, j) for i in range(2) for j in range(3) if mask[i, j]]
    want = [-min(math.exp(logp[i, j] - old[i, j]) * adv[i].item(),
                 min(max(math.exp(logp[i, j] - old[i, j]), 0.8), 1.2) * adv[i].item()) for i, j in tokens]
    assert float(loss_tok) == pytest.approx(sum(want) / len(want), rel=1e-5)
