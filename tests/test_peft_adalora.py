"""AdaLoRA: step-by-step parity with PEFT's AdaLoRA (forward, orthogonal regulariser,
importance EMA, cubic budget, masking), the paper's regulariser, schedule and counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.peft.adalora import (
    AdaLoraAllocator,
    AdaLoraConfig,
    adalora_layers,
    adalora_param_count,
    add_orth_reg_to_loss,
    inject_adalora,
    load_adalora,
    merge_adalora,
    orthogonal_regularization,
    save_adalora,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

V = 97


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(d)
    return d


def test_training_and_rank_allocation_match_peft_step_by_step(base_dir):
    T = 10
    kw = dict(init_r=4, target_r=2, tinit=2, tfinal=3, deltaT=2, total_step=T, orth_reg_weight=0.3)
    pm = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(base_dir), peft.AdaLoraConfig(
        lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM", **kw)).train()
    cfg = AdaLoraConfig(alpha=8, target_modules=("q_proj", "v_proj", "down_proj"), orth_reg="peft", **kw)
    ours = inject_adalora(load_pretrained(base_dir), cfg).train()
    add_orth_reg_to_loss(ours, cfg.orth_reg_weight, cfg.orth_reg)
    theirs = dict(pm.named_parameters())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # same non-zero start on both sides (Λ = 0 initially in both)
        for name, layer in adalora_layers(ours):
            for pn in ("lora_A", "lora_B", "lora_E"):
                p = theirs[f"base_model.model.model.{name}.{pn}.default"]
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                getattr(layer, pn).copy_(p)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        sum(p.numel() for p in pm.parameters() if p.requires_grad)
    alloc = AdaLoraAllocator(ours, cfg)
    opt_t = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.5)
    opt_o = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    pruned_seen = False
    for step in range(T):
        x = torch.randint(0, V, (2, 9), generator=g)
        lt = pm(input_ids=x, labels=x).loss
        lo = ours(x, labels=x).loss
        assert abs(lt.item() - lo.item()) <= 1e-5
        lt.backward()
        lo.backward()
        opt_t.step()
        opt_o.step()
        pm.base_model.update_and_allocate(step)
        alloc.update_and_allocate(step)
        opt_t.zero_grad()
        opt_o.zero_grad()
        for name, layer in adalora_layers(ours):
            ref = theirs[f"base_model.model.model.{name}.lora_E.default"]
            assert (ref - layer.lora_E).abs().max() <= 1e-6, (step, name)
        pruned_seen |= min(alloc.ranks().values()) < 4
    assert pruned_seen
    ref_pattern = {k.replace("model.", "", 1).replace(".lora_E.default", ""): v
                   for k, v in pm.peft_config["default"].rank_pattern.items()}
    assert alloc.rank_pattern == ref_pattern
    assert sum(sum(v) for v in alloc.rank_pattern.values()) == cfg.target_r * 6  # the final budget


def test_paper_orthogonal_regulariser():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16))
    inject_adalora(model, AdaLoraConfig(init_r=3, target_r=1, target_modules=("q_proj",)))
    (_, layer), = adalora_layers(model)
    p, q = layer.lora_B.detach(), layer.lora_A.detach()
    expected = ((p.T @ p - torch.eye(3)) ** 2).sum() + ((q @ q.T - torch.eye(3)) ** 2).sum()
    assert torch.allclose(orthogonal_regularization(model), expected, rtol=1e-5)
    # orthonormal P and Q have no penalty
    with torch.no_grad():
        layer.lora_A.copy_(torch.linalg.qr(torch.randn(16, 3))[0].T)
        layer.lora_B.copy_(torch.linalg.qr(torch.randn(16, 3))[0])
    assert orthogonal_regularization(model) <= 1e-10


@settings(max_examples=30, deadline=None)
@given(init_r=st.integers(2, 12), n=st.integers(1, 6), tinit=st.integers(0, 20), tfinal=st.integers(0, 20),
       span=st.integers(1, 60))
def test_cubic_budget_schedule(init_r, n, tinit, tfinal, span):
    total = tinit + tfinal + span
    cfg = AdaLoraConfig(init_r=init_r, target_r=1, tinit=tinit, tfinal=tfinal, total_step=total,
                        target_modules=("q_proj",))
    alloc = AdaLoraAllocator.__new__(AdaLoraAllocator)
    alloc.config, alloc.init_bgt, alloc.target_bgt = cfg, init_r * n, n
    budgets = [alloc.budget_schedule(t)[0] for t in range(total + 1)]
    assert budgets[0] == init_r * n and budgets[-1] == n
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))  # never grows
    for t in range(tinit + 1, total - tfinal + 1):
        frac = 1 - (t - tinit) / (total - tfinal - tinit)
        assert budgets[t] == int((init_r * n - n) * frac ** 3 + n)


def test_param_count_save_load_merge(base_dir, tmp_path):
    cfg = AdaLoraConfig(init_r=5, target_r=2, target_modules=("q_proj", "up_proj"))
    model = inject_adalora(load_pretrained(base_dir), cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == adalora_param_count(model.config, cfg) == 2 * 5 * ((32 + 32 + 1) + (32 + 48 + 1))
    with torch.no_grad():
        for _, layer in adalora_layers(model):
            layer.lora_E.normal_()
    x = torch.randint(0, V, (1, 7))
    with torch.no_grad():
        out = model(x).logits
    save_adalora(model, tmp_path / "ada")
    again = load_adalora(load_pretrained(base_dir), tmp_path / "ada")
    with torch.no_grad():
        assert torch.equal(again(x).logits, out)
        merged = merge_adalora(again)
        assert not list(adalora_layers(merged))
        assert (merged(x).logits - out).abs().max() <= 1e-5


def test_bad_configs(base_dir):
    with pytest.raises(ConfigError, match="target_r"):
        AdaLoraConfig(init_r=2, target_r=4)
    with pytest.raises(ConfigError, match="tinit"):
        AdaLoraConfig(tinit=5, tfinal=5, total_step=10)
    with pytest.raises(ConfigError, match="available"):
        inject_adalora(load_pretrained(base_dir), AdaLoraConfig(target_modules=("nope",)))
    with pytest.raises(ConfigError, match="larger than"):
        inject_adalora(load_pretrained(base_dir), AdaLoraConfig(init_r=40, target_r=1))
    with pytest.raises(ConfigError, match="total_step"):
        AdaLoraAllocator(inject_adalora(load_pretrained(base_dir), AdaLoraConfig()), AdaLoraConfig())
