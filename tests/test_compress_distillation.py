"""Knowledge distillation: the loss against trl's GKD loss, torch's KLDivLoss and a float64
transcription of Hinton et al.'s formula; the T^2 gradient property; the frozen teacher;
the Trainer wiring (alpha=0 reproduces plain training exactly); bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.compress import DistillationModel, distill, distillation_loss, hidden_state_loss, soft_target_loss
from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

VOCAB = 48


def lm(seed: int, d: int = 32, layers: int = 2, vocab: int = VOCAB, dropout: float = 0.0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=4, d_ff=2 * d,
                                 max_seq_len=64, dropout=dropout))


def batches(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in torch.randint(0, VOCAB, (n, 4, 12), generator=g):
        y = x.clone()
        y[0, 7:] = -100  # some ignored positions
        out.append({"input_ids": x, "labels": y})
    return out


def logits_and_labels(seed: int, b=3, t=7, v=VOCAB, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    zt = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, v, (b, t), generator=g)
    y[torch.rand(b, t, generator=g) < 0.3] = -100
    return zs, zt, y


def hinton_reference(zs, zt, y, T, alpha):
    """Float64 numpy transcription of Hinton et al. (2015) with the causal shift."""
    zs, zt, y = zs[:, :-1].numpy(), zt[:, :-1].numpy(), y[:, 1:].numpy()
    soft_sum, hard_sum, n = 0.0, 0.0, 0
    for b in range(y.shape[0]):
        for t in range(y.shape[1]):
            if y[b, t] == -100:
                continue
            p = np.exp(zt[b, t] / T - np.logaddexp.reduce(zt[b, t] / T))
            log_q = zs[b, t] / T - np.logaddexp.reduce(zs[b, t] / T)
            soft_sum += float(np.sum(p * (np.log(p) - log_q)))
            hard_sum += float(-(zs[b, t, y[b, t]] - np.logaddexp.reduce(zs[b, t])))
            n += 1
    return alpha * T * T * soft_sum / n + (1 - alpha) * hard_sum / n


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0]), st.floats(0.0, 1.0))
def test_loss_equals_hinton_formula(seed, T, alpha):
    zs, zt, y = logits_and_labels(seed)
    got = distillation_loss(zs, zt, y, temperature=T, alpha=alpha).item()
    assert got == pytest.approx(hinton_reference(zs, zt, y, T, alpha), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_term_equals_trl_gkd_forward_kl_times_t_squared(T):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer").GKDTrainer
    zs, zt, y = logits_and_labels(1)
    zs, zt = zs.float(), zt.float()
    ours = soft_target_loss(zs, zt, y, temperature=T)
    # trl's beta=0 is KL(teacher || student) at temperature T, averaged over label != -100
    theirs = gkd.generalized_jsd_loss(zs[:, :-1], zt[:, :-1], labels=y[:, 1:], beta=0.0, temperature=T)
    torch.testing.assert_close(ours, T * T * theirs, rtol=1e-5, atol=1e-6)


def test_soft_term_equals_torch_kldivloss_and_hard_term_equals_cross_entropy():
    zs, zt, y = logits_and_labels(2)
    zs, zt = zs.float(), zt.float()
    T, alpha = 3.0, 0.3
    keep = y[:, 1:].reshape(-1) != -100
    s = zs[:, :-1].reshape(-1, VOCAB)[keep]
    t = zt[:, :-1].reshape(-1, VOCAB)[keep]
    kd = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, -1), F.softmax(t / T, -1)) * T * T
    ce = F.cross_entropy(zs[:, :-1].reshape(-1, VOCAB), y[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(distillation_loss(zs, zt, y, temperature=T, alpha=alpha), alpha * kd + (1 - alpha) * ce)
    torch.testing.assert_close(distillation_loss(zs, zt, y, temperature=T, alpha=0.0), ce)
    torch.testing.assert_close(distillation_loss(zs, zt, y, temperature=T, alpha=1.0), kd)
    torch.testing.assert_close(distillation_loss(zs, zt, None, temperature=T, alpha=1.0, shift=False),
                               torch.nn.KLDivLoss(reduction="batchmean")(
                                   F.log_softmax(zs.reshape(-1, VOCAB) / T, -1),
                                   F.softmax(zt.reshape(-1, VOCAB) / T, -1)) * T * T)


def test_ignored_positions_do_not_count_and_all_ignored_is_zero_not_nan():
    zs, zt, y = logits_and_labels(3)
    changed = zs.clone()
    ignored = torch.zeros_like(y, dtype=torch.bool)
    ignored[:, :-1] = y[:, 1:] == -100  # position t predicts label t+1
    changed[ignored] += 100 * torch.randn_like(changed[ignored])
    torch.testing.assert_close(distillation_loss(changed, zt, y, temperature=2.0),
                               distillation_loss(zs, zt, y, temperature=2.0))
    none = torch.full_like(y, -100)
    zs_g = zs.clone().requires_grad_(True)
    loss = distillation_loss(zs_g, zt, none, temperature=2.0, alpha=0.7)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(zs_g.grad).all()


def test_gradient_is_t_times_q_minus_p():
    zs, zt, _ = logits_and_labels(4, b=2, t=5)
    for T in (1.0, 2.0, 7.0):
        z = zs.clone().requires_grad_(True)
        soft_target_loss(z, zt, None, temperature=T, shift=False).backward()
        q, p = F.softmax(zs / T, -1), F.softmax(zt / T, -1)
        torch.testing.assert_close(z.grad, T * (q - p) / 10)  # 10 = 2 x 5 positions


def test_t_squared_keeps_the_soft_gradient_magnitude_independent_of_t():
    """Hinton et al.: for T >> |z|, dL/dz_s -> (z_s - z_t)/V (zero-mean logits) for every T,
    while the unscaled KL's gradient would fall as 1/T^2."""
    zs, zt, _ = logits_and_labels(5, b=1, t=1, scale=1.0)
    zs, zt = zs - zs.mean(-1, keepdim=True), zt - zt.mean(-1, keepdim=True)
    grads = {}
    for T in (20.0, 40.0, 80.0):
        z = zs.clone().requires_grad_(True)
        soft_target_loss(z, zt, None, temperature=T, shift=False).backward()
        grads[T] = z.grad
    limit = (zs - zt) / VOCAB
    for T, g in grads.items():
        assert (g - limit).norm() / limit.norm() < 2.0 / T  # converges to the T-free limit
    assert grads[80.0].norm() / grads[20.0].norm() == pytest.approx(1.0, abs=0.02)
    unscaled = {T: g / T**2 for T, g in grads.items()}  # what plain KL(p_T || q_T) would give
    assert unscaled[80.0].norm() / unscaled[20.0].norm() == pytest.approx(1 / 16, rel=0.02)


def test_hidden_state_loss_is_mse_over_counted_positions():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    y = torch.randint(0, 9, (2, 5), generator=g)
    y[1, 3:] = -100
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[:, :-1] = y[:, 1:] != -100
    want = F.mse_loss(hs[keep], ht[keep])
    torch.testing.assert_close(hidden_state_loss(hs, ht, y), want)


# ---- the training wrapper --------------------------------------------------------------------------
def test_teacher_is_frozen_in_eval_mode_and_not_a_parameter(tmp_path):
    teacher, student = lm(1, dropout=0.2), lm(2, d=16, layers=1)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    wrapper = DistillationModel(student, teacher)
    assert {id(p) for p in wrapper.parameters()} == {id(p) for p in student.parameters()}
    assert set(wrapper.state_dict()) == {f"student.{k}" for k in student.state_dict()}
    wrapper.train()
    assert wrapper.student.training and not teacher.training  # no dropout in the teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    wrapper.release_teacher()
    cfg = TrainConfig(max_steps=3, lr=1e-2, out_dir=str(tmp_path), progress=False, eval_steps=0)
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    r = distill(teacher, student, batches(), batches(2, seed=9), train_config=cfg, temperature=2.0, alpha=0.5)
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # flags given back
    assert not all(torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert math.isfinite(r["eval_ppl"]) and len(r["history"]) == 3


def test_wrapper_loss_is_the_distillation_loss_of_the_two_models():
    teacher, student = lm(1), lm(2, d=16, layers=1)
    b = batches(1)[0]
    w = DistillationModel(student, teacher, temperature=3.0, alpha=0.25).train()
    with torch.no_grad():
        want = distillation_loss(student(b["input_ids"]).logits, teacher(b["input_ids"]).logits, b["labels"],
                                 temperature=3.0, alpha=0.25)
    torch.testing.assert_close(w(**b).loss, want)
    w.eval()  # eval mode: only the student (Trainer.evaluate measures its own perplexity)
    torch.testing.assert_close(w(b["input_ids"]).logits, student(b["input_ids"]).logits)


def test_alpha_zero_reproduces_plain_training_exactly(tmp_path):
    """Same init, same batches: distillation with alpha=0 is cross-entropy training."""
    teacher, s1 = lm(1), lm(2, d=16, layers=1)
    s2 = copy.deepcopy(s1)
    cfg = TrainConfig(max_steps=4, lr=1e-2, out_dir=str(tmp_path / "kd"), progress=False, eval_steps=0, seed=3)
    distill(teacher, s1, batches(), train_config=cfg, alpha=0.0)
    cfg2 = TrainConfig(max_steps=4, lr=1e-2, out_dir=str(tmp_path / "ce"), progress=False, eval_steps=0, seed=3)
    Trainer(s2, cfg2, batches()).train()
    for (k, a), b in zip(s1.state_dict().items(), s2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_hidden_state_distillation_trains_a_projection(tmp_path):
    teacher, student = lm(1, d=32), lm(2, d=16, layers=1)
    w = DistillationModel(student, teacher, hidden_weight=1.0)
    assert w.hidden_proj.weight.shape == (32, 16)
    before = w.hidden_proj.weight.detach().clone()
    cfg = TrainConfig(max_steps=2, lr=1e-2, out_dir=str(tmp_path), progress=False, eval_steps=0)
    Trainer(w, cfg, batches()).train()
    assert not torch.equal(before, w.hidden_proj.weight)


# ---- bad input ---------------------------------------------------------------------------------------
def test_vocab_mismatch_and_bad_settings_are_clear_errors(tmp_path):
    zs, zt = torch.randn(1, 4, 10), torch.randn(1, 4, 12)
    with pytest.raises(ConfigError, match="vocabulary mismatch.*10.*12"):
        distillation_loss(zs, zt, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="vocabulary mismatch"):
        DistillationModel(lm(2, vocab=40), lm(1, vocab=VOCAB))
    with pytest.raises(ConfigError, match="same batch"):
        distillation_loss(torch.randn(1, 4, 10), torch.randn(1, 5, 10))
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(zs, zs, temperature=0.0, alpha=1.0)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(zs, zs, temperature=1.0, alpha=1.5)
    with pytest.raises(ConfigError, match="needs labels"):
        distillation_loss(zs, zs, None, alpha=0.5)
    cfg = TrainConfig(max_steps=1, out_dir=str(tmp_path), progress=False, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        distill(lm(1), lm(2), batches(), train_config=cfg)
