"""ROME's rank-one update and MEMIT's least-squares update: the algebra on hand-built tensors, and
the edit on a tiny model (the new target becomes the greedy answer; nothing else moves much)."""

from __future__ import annotations

import pytest
import torch

from edit_tiny import SUBJECT_LAST, tiny_model, world_and_tokenizer
from lmkit.edit.key_statistics import key_second_moment
from lmkit.edit.layer_hooks import at_positions, block, record_inputs, record_outputs
from lmkit.edit.memit import MemitConfig, apply_memit, memit_update
from lmkit.edit.prompt_tokens import pad_right
from lmkit.edit.rome import RomeConfig, apply_rome, apply_rome_sequence, keep_keys, keys_to_keep, rank_one_update
from lmkit.edit.target_vector import (EditRequest, TargetVectorConfig, optimise_site_delta, optimise_site_deltas,
                                      rewrite_prompts)
from lmkit.errors import ConfigError

# an untrained model's MLP outputs are tiny next to its embeddings: no clamp on the change
FREE = TargetVectorConfig(steps=30, clamp_norm=1e4, weight_decay=0.0)


def _moment(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, 4 * d, generator=gen, dtype=torch.float64)
    return a @ a.T / (4 * d) + 0.1 * torch.eye(d, dtype=torch.float64)


def test_rank_one_update_maps_key_to_value_and_keeps_the_null_space():
    gen = torch.Generator().manual_seed(0)
    w, k, v = torch.randn(8, 16, generator=gen), torch.randn(16, generator=gen), torch.randn(8, generator=gen)
    c = _moment(16, gen)
    new_w, residual, left = rank_one_update(w, k, v, c)
    assert torch.allclose(new_w @ k, v, atol=1e-4)
    c_inv_k = torch.linalg.solve(c, k.double())
    for _ in range(5):  # any u with (C⁻¹k*)ᵀ u = 0 sees the old W
        u = torch.randn(16, generator=gen, dtype=torch.float64)
        u = u - (c_inv_k @ u) / (c_inv_k @ c_inv_k) * c_inv_k
        assert torch.allclose(new_w.double() @ u, w.double() @ u, atol=1e-5)
    assert torch.allclose(new_w.double() - w.double(), torch.outer(residual, left), atol=1e-5)  # rank one
    bias = torch.randn(8, generator=gen)  # with a bias the output W'k + b is the value
    assert torch.allclose(rank_one_update(w, k, v, c, bias)[0] @ k + bias, v, atol=1e-4)


def test_memit_update_solves_its_normal_equations():
    gen = torch.Generator().manual_seed(1)
    c = _moment(16, gen)
    keys, res = torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(8, 5, generator=gen, dtype=torch.float64)
    lam = 3.0
    dw = memit_update(keys, res, c, lam)
    assert torch.allclose(dw @ (lam * c + keys @ keys.T), res @ keys.T, atol=1e-8)
    tiny = memit_update(keys, res, c, 1e-9)  # no covariance weight: the keys map exactly onto the residuals
    assert torch.allclose(tiny @ keys, res, atol=1e-5)


def test_memit_update_weights_a_column_as_often_as_it_is_repeated():
    gen = torch.Generator().manual_seed(3)
    c = _moment(16, gen)
    keys, res = torch.randn(16, 3, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen, dtype=torch.float64)
    weights = torch.tensor([2.0, 1.0, 3.0])
    dw = memit_update(keys, res, c, 0.5, weights)
    repeats = torch.tensor([2, 1, 3])
    repeated = memit_update(keys.repeat_interleave(repeats, 1), res.repeat_interleave(repeats, 1), c, 0.5)
    assert torch.allclose(dw, repeated, atol=1e-10)
    kw = keys * weights.double()  # the weighted normal equations
    assert torch.allclose(dw @ (0.5 * c + kw @ keys.T), res @ kw.T, atol=1e-8)
    assert torch.allclose(memit_update(keys, res, c, 0.5, torch.ones(3)), memit_update(keys, res, c, 0.5))


def _hidden_at_subject(model, site, prompts):
    with torch.no_grad(), record_outputs(site) as seen:
        model(pad_right([p.ids for p in prompts]))
    return at_positions(seen[0], [p.subject_last for p in prompts])


@pytest.mark.parametrize("split", [True, False])
def test_memit_with_split_keys_moves_the_bare_prompt_and_the_prefixed_ones_by_delta(split):
    """One layer, λ → 0: the update fits its keys exactly. With split keys the bare prompt's hidden state
    moves by δ and so, on average, do the prefixed prompts'; the paper's one mean key per request moves
    neither by δ (it is the key of no prompt)."""
    world, records, tok = world_and_tokenizer()
    model = tiny_model()
    cov = key_second_moment(model, tok, world.statements(), [0, 1])
    prefixes = world.statements()[:2]
    req = _request(records[0])
    prompts = rewrite_prompts(tok, req, ["", *prefixes])
    before = _hidden_at_subject(model, block(model, 1), prompts)
    _, delta = optimise_site_deltas(model, tok, block(model, 1), [req], prefixes, FREE)  # what apply_memit finds
    apply_memit(model, tok, [req], cov, prefixes, MemitConfig([1], 1e-6, FREE, split_keys=split))
    moved = _hidden_at_subject(model, block(model, 1), prompts) - before
    miss = torch.stack([(moved[0] - delta[0]).norm(), (moved[1:].mean(0) - delta[0]).norm()]) / delta.norm()
    if split:
        assert float(miss.max()) < 1e-4
    else:
        assert float(miss.min()) > 0.03


def _layer1_keys(model, tok, reqs, prefixes) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's down_proj keys at each request's subject: ([n, d_ff] bare, [n, d_ff] mean after the prefixes)."""
    prompts = [p for r in reqs for p in rewrite_prompts(tok, r, ["", *prefixes])]
    with torch.no_grad(), record_inputs(model.layers[1].mlp.down_proj) as seen:
        model(pad_right([p.ids for p in prompts]))
    keys = at_positions(seen[0], [p.subject_last for p in prompts]).view(len(reqs), len(prefixes) + 1, -1)
    return keys[:, 0], keys[:, 1:].mean(1)


def test_memit_writes_a_fact_its_top_target_cannot_reach_at_the_lowest_layer_alone():
    """reach_nll below any NLL: every fact counts as out of reach from the top layer, so its target is
    set at block 0 and written there, and layer 1's update holds its keys still."""
    world, records, tok = world_and_tokenizer()
    cov = key_second_moment(tiny_model(), tok, world.statements(), [0, 1])
    prefixes = world.statements()[:2]
    reqs = [_request(r) for r in (records[2], records[5])]
    model = tiny_model()
    updates = apply_memit(model, tok, reqs, cov, prefixes, MemitConfig([0, 1], 1e-6, FREE, reach_nll=-1.0))
    for k in _layer1_keys(model, tok, reqs, prefixes):
        assert float((k.double() @ updates[1].T.double()).norm()) < 1e-4 * float(updates[0].norm())
    for r in reqs:
        assert _greedy(model, tok.encode(r.prompt.format(r.subject)), 1) == tok.encode(" " + r.target_new)[:1]
    never = tiny_model()  # reach_nll = inf: every fact is written up to the top, as with None
    apply_memit(never, tok, reqs, cov, prefixes, MemitConfig([0, 1], 1e-6, FREE, reach_nll=float("inf")))
    plain = tiny_model()
    apply_memit(plain, tok, reqs, cov, prefixes, MemitConfig([0, 1], 1e-6, FREE))
    assert all(torch.equal(a, b) for a, b in zip(never.parameters(), plain.parameters()))


def test_memit_moves_a_fact_to_the_lowest_layer_only_where_its_target_reaches_better_there(monkeypatch):
    """Both facts miss reach_nll at the top (NLL 2); at the lowest layer the first reaches better (1 < 2)
    and is written there alone, the second would be worse (3 > 2) and stays at the top: layer 1's update
    holds the first fact's key still and moves the second's."""
    import lmkit.edit.memit as memit

    world, records, tok = world_and_tokenizer()
    cov = key_second_moment(tiny_model(), tok, world.statements(), [0, 1])
    prefixes = world.statements()[:2]
    reqs = [_request(r) for r in (records[2], records[5])]
    nlls = iter([torch.tensor([2.0, 2.0]), torch.tensor([1.0, 3.0])])  # top, then the lowest layer
    asked = []

    def fake_nll(model, tokenizer, site, requests, delta):
        asked.append(len(requests))
        return next(nlls)

    monkeypatch.setattr(memit, "bare_target_nll", fake_nll)
    model = tiny_model()
    updates = apply_memit(model, tok, reqs, cov, prefixes, MemitConfig([0, 1], 1e-6, FREE, reach_nll=0.5))
    assert asked == [2, 2]
    bare, _ = _layer1_keys(model, tok, reqs, prefixes)
    held, moved = (float((k.double() @ updates[1].T.double()).norm()) / float(updates[1].norm()) for k in bare)
    assert held < 1e-4 and moved > 1e3 * held


def _greedy(model, ids, n):
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def _request(record) -> EditRequest:
    """The record's edit asked as "Tell me about {}": the subject's last token is the last one, so an
    edit there reaches the answer even through untrained attention."""
    r = EditRequest.from_record(record)
    return EditRequest(SUBJECT_LAST, r.subject, r.target_new, r.target_true)


def test_rome_and_memit_make_the_new_target_the_greedy_answer():
    world, records, tok = world_and_tokenizer()
    model = tiny_model()
    cov = key_second_moment(model, tok, world.statements(), [0, 1])
    prefixes = world.statements()[:2]
    req = _request(records[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = apply_rome(model, tok, req, cov[0], prefixes, RomeConfig(layer=0, target=FREE))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == ["layers.0.mlp.down_proj.weight"]
    assert torch.allclose(model.layers[0].mlp.down_proj(edit.key), edit.value, atol=1e-4)
    tgt = tok.encode(" " + req.target_new)
    assert _greedy(model, tok.encode(req.prompt.format(req.subject)), 1) == tgt[:1]

    reqs = [_request(r) for r in (records[2], records[5])]  # different subjects
    for split in (True, False):
        model = tiny_model()
        updates = apply_memit(model, tok, reqs, cov, prefixes,
                              MemitConfig(layers=[0, 1], split_keys=split, target=FREE))
        assert sorted(updates) == [0, 1]
        for r in reqs:
            assert _greedy(model, tok.encode(r.prompt.format(r.subject)), 1) == tok.encode(" " + r.target_new)[:1]


def test_keep_keys_stops_a_later_rank_one_update_from_moving_an_earlier_edit():
    gen = torch.Generator().manual_seed(2)
    w, c = torch.randn(8, 16, generator=gen, dtype=torch.float64), _moment(16, gen)
    k1, v1 = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
    k2 = k1 + 0.3 * torch.randn(16, generator=gen, dtype=torch.float64)  # a similar second key
    v2 = torch.randn(8, generator=gen, dtype=torch.float64)
    w1 = rank_one_update(w, k1, v1, c)[0]
    drift = {}
    for weight in (0.0, 1e4):
        w2 = rank_one_update(w1, k2, v2, keep_keys(c, [k1], weight))[0]
        assert torch.allclose(w2 @ k2, v2, atol=1e-4)  # the new edit is still exact
        drift[weight] = float((w2 @ k1 - v1).norm())
    assert drift[1e4] < 1e-3 * drift[0.0]
    assert torch.equal(keep_keys(c, [], 5.0), c)


def test_keys_to_keep_lets_go_of_an_earlier_key_too_close_to_the_new_one():
    gen = torch.Generator().manual_seed(3)
    d = 16
    c = _moment(d, gen)
    k = torch.randn(d, generator=gen, dtype=torch.float64)
    near = k + 0.05 * torch.randn(d, generator=gen, dtype=torch.float64)  # C⁻¹-cosine 0.998: the same key, nearly
    c_inv_k = torch.linalg.solve(c, k)
    far = torch.randn(d, generator=gen, dtype=torch.float64)
    far = far - (far @ c_inv_k) / (k @ c_inv_k) * k  # C⁻¹-orthogonal to k: cosine 0
    assert [x is far for x in keys_to_keep(c, [near, far], k, 0.5)] == [True]
    assert len(keys_to_keep(c, [near, far], k, 1.0)) == 2  # 1: keep every key
    assert keys_to_keep(c, [], k, 0.5) == []
    # the cosine is C⁻¹'s: scaling a key does not change it, and -k is as far as a key can be
    assert len(keys_to_keep(c, [3.0 * near], k, 0.99)) == 0
    assert len(keys_to_keep(c, [-k], k, 0.5)) == 1
    # why: keeping `near` blows the update up (it must tell two equal keys apart); letting go does not
    w, v = torch.randn(8, d, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
    kept = rank_one_update(w, k, v, keep_keys(c, [near], 10.0))[0] - w
    let_go = rank_one_update(w, k, v, keep_keys(c, keys_to_keep(c, [near], k, 0.5), 10.0))[0] - w
    assert kept.norm() > 3 * let_go.norm()  # 5.3x here; 4x on the benchmark's worst key


def test_rome_sequence_with_and_without_letting_go_edits_every_fact():
    world, records, tok = world_and_tokenizer()
    prefixes = world.statements()[:2]
    reqs = [_request(r) for r in (records[2], records[5])]  # different subjects
    ids = [tok.encode(r.prompt.format(r.subject)) for r in reqs]
    for max_cosine in (1.0, 0.5):
        model = tiny_model()
        cov = key_second_moment(model, tok, world.statements(), [0])[0]
        edits = apply_rome_sequence(model, tok, reqs, cov, prefixes, RomeConfig(layer=0, target=FREE), 10.0, max_cosine)
        assert [e.layer for e in edits] == [0, 0]
        for r, i in zip(reqs, ids):
            assert _greedy(model, i, 1) == tok.encode(" " + r.target_new)[:1]


def test_batched_targets_equal_one_by_one():
    world, records, tok = world_and_tokenizer()
    model = tiny_model()
    reqs = [EditRequest.from_record(r) for r in (records[0], records[3])]
    site, prefixes = model.layers[1], world.statements()[:2]
    cfg = TargetVectorConfig(steps=8, clamp_norm=1e4, weight_decay=0.01)
    h, delta = optimise_site_deltas(model, tok, site, reqs, prefixes, cfg)
    for i, r in enumerate(reqs):
        h1, d1 = optimise_site_delta(model, tok, site, r, prefixes, cfg)
        assert torch.allclose(h[i], h1, atol=1e-5) and torch.allclose(delta[i], d1, atol=1e-4)


def test_bare_weight_shares_the_targets_nll_between_the_bare_and_the_prefixed_prompts():
    world, records, tok = world_and_tokenizer()
    model = tiny_model()
    r = _request(records[0])
    site, prefixes = model.layers[0].mlp.down_proj, world.statements()[:3]

    def delta(bare_weight, prefixes=prefixes):
        cfg = TargetVectorConfig(steps=8, clamp_norm=1e4, weight_decay=0.01, kl_weight=0.0, bare_weight=bare_weight)
        return optimise_site_delta(model, tok, site, r, prefixes, cfg)[1]

    equal = delta(None)
    assert equal.norm() > 0 and torch.allclose(equal, delta(0.25), atol=1e-5)  # 1 bare + 3 prefixed: a quarter each
    assert torch.allclose(delta(1.0), delta(None, prefixes=[]), atol=1e-5)  # all on the bare prompt
    assert not torch.allclose(delta(1.0), equal, atol=1e-3)
    with pytest.raises(ConfigError, match="bare_weight"):
        TargetVectorConfig(bare_weight=1.5)
