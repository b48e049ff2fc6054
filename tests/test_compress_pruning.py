"""Pruning: masks against torch.nn.utils.prune (layer-wise / global), 2:4 against a brute-force
search (hypothesis), masks kept through optimizer steps, schedules against Zhu & Gupta's formula,
pruned checkpoints through save/load, and bad input."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmkit.compress import (
    DEFAULT_TARGETS,
    PruneSchedule,
    apply_masks,
    find_targets,
    is_nm_sparse,
    keep_masks,
    magnitude_prune,
    masks_from_zeros,
    nm_mask,
    prune_and_finetune,
    prune_model,
    prune_nm,
    remove_pruning,
    sparsity_report,
)
from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

VOCAB = 64


def tiny(seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    cfg.update(kw)
    return DecoderLM(ModelConfig(**cfg))


def batches(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 4, 16), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def train_config(tmp_path, steps: int, **kw) -> TrainConfig:
    return TrainConfig(max_steps=steps, lr=1e-2, out_dir=str(tmp_path / "run"), progress=False, log_every=100,
                       eval_steps=0, **kw)


# ---- targets -------------------------------------------------------------------------------------
def test_default_targets_are_the_projections_only():
    m = tiny()
    names = find_targets(m)
    assert len(names) == 2 * 7  # q,k,v,o,gate,up,down in each of 2 layers
    assert all(n.rsplit(".", 1)[-1] in DEFAULT_TARGETS for n in names)
    magnitude_prune(m, 0.5)
    assert (m.embed_tokens.weight != 0).all() and (m.lm_head.weight != 0).all()
    assert all((layer.attn_norm.weight != 0).all() for layer in m.layers)


# ---- layer-wise vs global, against torch.nn.utils.prune ----------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.9])
def test_layerwise_masks_equal_torch_l1_unstructured(sparsity):
    ours, ref = tiny(), tiny()
    masks = magnitude_prune(ours, sparsity, scope="layer")
    for name, lin in find_targets(ref).items():
        tprune.l1_unstructured(lin, "weight", amount=sparsity)
        assert torch.equal(masks[name], lin.weight_mask), name
        assert torch.equal(find_targets(ours)[name].weight, lin.weight), name
    rep = sparsity_report(ours)
    for name, r in rep["layers"].items():
        assert r["zeros"] == round(sparsity * r["total"]), name  # every layer to the same sparsity


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_global_masks_equal_torch_global_unstructured(sparsity):
    ours, ref = tiny(), tiny()
    with torch.no_grad():  # make one layer's weights small: global pruning must hit it hardest
        for m in (ours, ref):
            m.layers[0].mlp.up_proj.weight.mul_(0.1)
    masks = magnitude_prune(ours, sparsity, scope="global")
    mods = find_targets(ref)
    tprune.global_unstructured([(lin, "weight") for lin in mods.values()], tprune.L1Unstructured, amount=sparsity)
    for name, lin in mods.items():
        assert torch.equal(masks[name], lin.weight_mask), name
    rep = sparsity_report(ours)
    assert rep["zeros"] == round(sparsity * rep["total"])
    per_layer = {n: r["sparsity"] for n, r in rep["layers"].items()}
    assert per_layer["layers.0.mlp.up_proj"] > sparsity + 0.1  # one threshold: layers differ
    assert max(per_layer.values()) - min(per_layer.values()) > 0.1


def test_global_uses_one_threshold_and_layerwise_one_per_layer():
    m = tiny()
    with torch.no_grad():
        m.layers[1].self_attn.q_proj.weight.mul_(10.0)
    g, lw = copy.deepcopy(m), copy.deepcopy(m)
    magnitude_prune(g, 0.5, scope="global")
    magnitude_prune(lw, 0.5, scope="layer")
    orig = find_targets(m)
    # global: every pruned |w| <= every kept |w| across all layers
    pruned_max = max(orig[n].weight.abs()[l.weight == 0].max() for n, l in find_targets(g).items()
                     if (l.weight == 0).any())
    kept_min = min(orig[n].weight.abs()[l.weight != 0].min() for n, l in find_targets(g).items())
    assert pruned_max <= kept_min
    # layer-wise: the same holds inside each layer but not across layers
    for n, l in find_targets(lw).items():
        assert orig[n].weight.abs()[l.weight == 0].max() <= orig[n].weight.abs()[l.weight != 0].min()
    assert sparsity_report(g)["layers"]["layers.1.self_attn.q_proj"]["sparsity"] < 0.1  # 10x larger: spared
    assert sparsity_report(lw)["layers"]["layers.1.self_attn.q_proj"]["sparsity"] == 0.5


# ---- N:M -------------------------------------------------------------------------------------------
def brute_force_best(w: torch.Tensor, n: int, m: int) -> list[float]:
    """For each group of m, the largest sum of |w| over all n-subsets (a search, not a sort)."""
    return [max(sum(g[i].item() for i in c) for c in itertools.combinations(range(m), n))
            for g in w.abs().reshape(-1, m)]


def check_nm(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> None:
    assert ((mask == 0) | (mask == 1)).all()
    assert (mask.reshape(-1, m).sum(-1) == n).all()  # exactly n kept per group of m
    kept = (w.abs() * mask).reshape(-1, m).sum(-1)
    assert kept.tolist() == pytest.approx(brute_force_best(w, n, m), rel=1e-6)  # ties: any best subset


@settings(max_examples=60, deadline=None)
@given(
    arrays("float32", st.tuples(st.integers(1, 6), st.sampled_from([4, 8, 12, 16])),
           elements=st.floats(-10, 10, width=32, allow_subnormal=False)),
)
def test_2_4_keeps_exactly_the_two_largest_of_every_four(w_np):
    w = torch.from_numpy(w_np)
    mask = nm_mask(w.abs(), 2, 4)
    check_nm(w, mask, 2, 4)
    assert is_nm_sparse(w * mask, 2, 4)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(1, 2), (1, 4), (2, 8), (4, 8), (3, 6)]), st.integers(0, 2**31 - 1))
def test_general_n_m_against_brute_force(nm, seed):
    n, m = nm
    w = torch.randn(3, 2 * m, generator=torch.Generator().manual_seed(seed))
    check_nm(w, nm_mask(w.abs(), n, m), n, m)


def test_prune_nm_on_a_model_gives_50_percent_and_the_pattern_in_every_layer():
    m = tiny()
    prune_nm(m, 2, 4)
    rep = sparsity_report(m)
    assert rep["sparsity"] == 0.5
    for lin in find_targets(m).values():
        assert is_nm_sparse(lin.weight, 2, 4)
        assert ((lin.weight != 0).reshape(-1, 4).sum(-1) == 2).all()


# ---- masks through training ------------------------------------------------------------------------
def test_masks_survive_optimizer_steps_and_are_needed(tmp_path):
    pruned = tiny()
    magnitude_prune(pruned, 0.5)
    zero_at = {n: (l.weight == 0).clone() for n, l in find_targets(pruned).items()}
    before = {n: l.weight.detach().clone() for n, l in find_targets(pruned).items()}
    unhooked = copy.deepcopy(pruned)

    tr = Trainer(pruned, train_config(tmp_path / "a", 5), batches())
    hook = keep_masks(tr)
    tr.train()
    hook.remove()
    for n, l in find_targets(pruned).items():
        assert (l.weight[zero_at[n]] == 0).all(), n
        assert not torch.equal(l.weight[~zero_at[n]], before[n][~zero_at[n]]), n  # the rest trained
    assert sparsity_report(pruned)["sparsity"] == 0.5

    tr2 = Trainer(unhooked, train_config(tmp_path / "b", 5), batches())  # no hook: AdamW revives them
    tr2.train()
    assert sparsity_report(unhooked)["sparsity"] < 0.01


def test_keep_masks_with_a_plain_torch_optimizer():
    m = tiny()
    prune_nm(m, 2, 4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    keep_masks(opt, m)
    for b in batches(3):
        m(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(is_nm_sparse(l.weight) for l in find_targets(m).values())


def test_apply_masks_zeroes_revived_weights():
    m = tiny()
    magnitude_prune(m, 0.5)
    with torch.no_grad():
        for lin in find_targets(m).values():
            lin.weight.add_(1.0)
    assert sparsity_report(m)["sparsity"] < 0.01
    assert apply_masks(m) == 14
    assert sparsity_report(m)["sparsity"] == 0.5


# ---- iterative pruning ----------------------------------------------------------------------------
def test_cubic_schedule_matches_zhu_and_gupta():
    s = PruneSchedule(final_sparsity=0.8, initial_sparsity=0.1, n_prunes=5, prune_every=10, finetune_steps=7)
    for i in range(1, 6):  # Zhu & Gupta eq. 1 with t - t0 = i * dt, n * dt = 5 * dt
        want = 0.8 + (0.1 - 0.8) * (1 - (i * 10) / (5 * 10)) ** 3
        assert s.sparsity(i) == pytest.approx(want)
    assert [step for step, _ in s.events()] == [0, 10, 20, 30, 40]
    assert s.total_steps == 47
    sparsities = [sp for _, sp in s.events()]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8)
    increments = [b - a for a, b in zip([0.1] + sparsities, sparsities)]
    assert increments == sorted(increments, reverse=True)  # fast first, slow near the target
    lin = PruneSchedule(final_sparsity=0.6, n_prunes=3, kind="linear")
    assert [sp for _, sp in lin.events()] == pytest.approx([0.2, 0.4, 0.6])


def test_pruning_is_cumulative():
    m = tiny()
    magnitude_prune(m, 0.3)
    first = {n: l.weight == 0 for n, l in find_targets(m).items()}
    with torch.no_grad():  # even if the live weights shrink below the pruned ones' old size
        for l in find_targets(m).values():
            l.weight.mul_(1e-3)
    magnitude_prune(m, 0.6)
    for n, l in find_targets(m).items():
        assert (l.weight[first[n]] == 0).all()
    assert sparsity_report(m)["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_prune_and_finetune_gradual_reaches_the_target_and_keeps_it(tmp_path):
    m = tiny()
    data = batches(12)
    sched = PruneSchedule(final_sparsity=0.6, n_prunes=3, prune_every=2, finetune_steps=3)
    r = prune_and_finetune(m, train_config(tmp_path, 1), data, data[:2], schedule=sched, method="global")
    assert len(r["history"]) == sched.total_steps == 7
    assert r["sparsity"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert sparsity_report(m)["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert {"dense", "pruned", "finetuned"} <= set(r)


def test_prune_and_finetune_2_4(tmp_path):
    m = tiny()
    r = prune_and_finetune(m, train_config(tmp_path, 1), batches(4), schedule=PruneSchedule(0.5, finetune_steps=3),
                           method="2:4")
    assert all(is_nm_sparse(l.weight) for l in find_targets(m).values())
    assert r["sparsity"]["sparsity"] == 0.5
    with pytest.raises(ConfigError, match="n_prunes=1"):
        prune_and_finetune(tiny(), train_config(tmp_path, 1), batches(4),
                           schedule=PruneSchedule(0.5, n_prunes=2), method="2:4")


# ---- permanence, save/load ------------------------------------------------------------------------
def test_remove_pruning_and_round_trip_through_save_pretrained(tmp_path):
    from lmkit.hub.pretrained import load_pretrained, save_pretrained

    m = tiny(model_type="llama", tie_embeddings=True)
    dense_keys = set(m.state_dict())
    magnitude_prune(m, 0.5)
    assert set(m.state_dict()) == dense_keys  # masks are not part of the checkpoint
    report = sparsity_report(m)
    assert remove_pruning(m) == 14
    assert not any("weight_mask" in dict(mod.named_buffers()) for mod in m.modules())
    save_pretrained(m, tmp_path / "pruned")
    back = load_pretrained(tmp_path / "pruned")
    assert sparsity_report(back)["layers"] == {n: {**r, "masked": False} for n, r in report["layers"].items()}
    assert masks_from_zeros(back) == 14
    assert all(r["masked"] for r in sparsity_report(back)["layers"].values())
    x = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(back(x).logits, m.eval()(x).logits)


def test_sparsity_report_counts_zeros():
    m = tiny()
    with torch.no_grad():
        m.layers[0].self_attn.q_proj.weight[:3] = 0
    rep = sparsity_report(m)
    q = rep["layers"]["layers.0.self_attn.q_proj"]
    assert q["zeros"] == 3 * 32 and q["total"] == 32 * 32 and not q["masked"]
    total = sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    assert rep["model_sparsity"] == pytest.approx(96 / total)


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    m = tiny()
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_prune(m, 1.0)
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_prune(m, -0.1)
    with pytest.raises(ConfigError, match="scope"):
        magnitude_prune(m, 0.5, scope="row")
    with pytest.raises(ConfigError, match="unknown pruning method"):
        prune_model(m, 0.5, "random")
    with pytest.raises(ConfigError, match="by construction"):
        prune_model(m, 0.3, "2:4")
    with pytest.raises(ConfigError, match="N:M"):
        nm_mask(torch.ones(2, 8), 4, 4)
    with pytest.raises(ConfigError, match="not a multiple of 4"):
        prune_nm(tiny(d_ff=66), 2, 4)  # down_proj has 66 inputs
    with pytest.raises(ConfigError, match="no module"):
        magnitude_prune(m, 0.5, targets=["c_attn"])
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        magnitude_prune(m, 0.5, targets=["attn_norm"])
    with pytest.raises(ConfigError, match="final_sparsity"):
        PruneSchedule(final_sparsity=0.2, initial_sparsity=0.5)
    # a failed N:M call changes nothing (all layers validated before any is pruned)
    odd = tiny(d_ff=66)
    before = {k: v.clone() for k, v in odd.state_dict().items()}
    with pytest.raises(ConfigError):
        prune_nm(odd, 2, 4)
    assert all(torch.equal(before[k], v) for k, v in odd.state_dict().items())


# ---- structured: removing FFN neurons ------------------------------------------------------------------
@pytest.mark.parametrize("gated,bias", [(True, False), (False, True)])
def test_removing_dead_ffn_neurons_keeps_the_function_exactly(gated, bias):
    """Channels whose output column is zero contribute nothing: removing them (they rank lowest)
    must leave the logits unchanged while the FFN matrices shrink."""
    from lmkit.compress import prune_ffn_neurons

    m = tiny(gated_ffn=gated, ffn_bias=bias, activation="silu" if gated else "gelu")
    with torch.no_grad():
        for layer in m.layers:
            layer.mlp.down_proj.weight[:, 1::2] = 0  # half the channels are dead
    x = torch.randint(0, VOCAB, (2, 10))
    want = m.eval()(x).logits
    n_before = sum(p.numel() for p in m.parameters())
    kept = prune_ffn_neurons(m, 0.5)
    assert all(torch.equal(k, torch.arange(0, 64, 2)) for k in kept.values())
    assert m.config.d_ff == 32 and m.layers[0].mlp.down_proj.weight.shape == (32, 32)
    torch.testing.assert_close(m(x).logits, want, rtol=1e-5, atol=1e-5)
    per_layer = (3 if gated else 2) * 32 * 32 + (32 * (2 if gated else 1) if bias else 0)
    assert n_before - sum(p.numel() for p in m.parameters()) == 2 * per_layer


def test_neuron_importance_formula_and_hf_round_trip(tmp_path):
    from lmkit.compress import neuron_importance, prune_ffn_neurons
    from lmkit.hub.pretrained import save_pretrained

    m = tiny(model_type="llama")
    f = m.layers[0].mlp
    up, gate, down = (w.detach().numpy().astype("float64") for w in (f.up_proj.weight, f.gate_proj.weight,
                                                                      f.down_proj.weight))
    import numpy as np

    want = np.linalg.norm(down, axis=0) * (np.linalg.norm(up, axis=1) + np.linalg.norm(gate, axis=1))
    np.testing.assert_allclose(neuron_importance(f).numpy(), want, rtol=1e-5)
    prune_ffn_neurons(m, 24)
    save_pretrained(m, tmp_path / "small")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert hf.config.intermediate_size == 24
    x = torch.randint(0, VOCAB, (1, 9))
    torch.testing.assert_close(hf(x).logits, m.eval()(x).logits, rtol=1e-4, atol=1e-4)


def test_neuron_pruning_then_finetuning(tmp_path):
    m = tiny()
    data = batches(6)
    r = prune_and_finetune(m, train_config(tmp_path, 1), data, data[:2], method="neurons",
                           schedule=PruneSchedule(0.25, finetune_steps=3))
    assert m.config.d_ff == 48 and len(r["history"]) == 3
    assert r["parameters"] == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    with pytest.raises(ConfigError, match="keep"):
        from lmkit.compress import prune_ffn_neurons

        prune_ffn_neurons(tiny(), 0)
    with pytest.raises(ConfigError, match="MoE"):
        from lmkit.compress import prune_ffn_neurons

        prune_ffn_neurons(tiny(n_experts=2, n_experts_per_tok=1), 0.5)
