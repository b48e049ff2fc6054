"""DecoderLM and its KV cache: incremental decoding equals the full forward, loss, padding.

Parity of the logits with `transformers` lives in test_hub_decoders.py; here the oracle is
the model's own full (uncached, unpadded) forward, which that file ties to transformers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.kv_cache import KVCache

V = 101


def make(**kw) -> DecoderLM:
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=48)
    base.update(kw)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


VARIANTS = {
    "llama-gqa": {},
    "mha-learned-gpt2": dict(n_kv_heads=4, norm="layernorm", position="learned", gated_ffn=False,
                             activation="gelu_tanh", qkv_bias=True, tie_embeddings=True),
    "mqa-sliding": dict(n_kv_heads=1, sliding_window=5),
    "alibi": dict(position="alibi"),
    "sinusoidal": dict(position="sinusoidal"),
    "moe": dict(n_experts=4, n_experts_per_tok=2),
    "t5-bias": dict(position="t5_bias"),
}


def ids_and_mask(b=3, t=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :9] = 0
    return ids, mask


def run_chunks(model, ids, chunks, mask=None):
    cache = model.make_cache(ids.shape[0], max_len=ids.shape[1] + 2)
    out, start = [], 0
    for n in chunks:
        m = None if mask is None else mask[:, : start + n]
        out.append(model(ids[:, start:start + n], attention_mask=m, kv_cache=cache).logits)
        start += n
    assert cache.seq_len == ids.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_incremental_decoding_equals_full_forward(variant):
    model = make(**VARIANTS[variant])
    ids, mask = ids_and_mask()
    with torch.no_grad():
        full = model(ids).logits
        full_padded = model(ids, attention_mask=mask).logits
        for chunks in ([8] + [1] * 6, [3, 4, 1, 6], [1] * 14):
            assert (run_chunks(model, ids, chunks) - full).abs().max() <= 1e-5
            inc = run_chunks(model, ids, chunks, mask)
            assert (inc - full_padded)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["llama-gqa", "mha-learned-gpt2", "mqa-sliding", "alibi"])
def test_left_padding_does_not_change_real_tokens(variant):
    """A left-padded row gives the same logits as the same tokens unpadded."""
    model = make(**VARIANTS[variant])
    ids, mask = ids_and_mask()
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        for row in range(3):
            n_pad = int((mask[row] == 0).sum())
            alone = model(ids[row:row + 1, n_pad:]).logits[0]
            assert (padded[row, n_pad:] - alone).abs().max() <= 1e-5


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=8))
def test_any_chunking_matches(chunks):
    model = _cached_model()
    t = sum(chunks)
    ids = torch.randint(0, V, (2, t), generator=torch.Generator().manual_seed(t))
    mask = torch.ones(2, t, dtype=torch.long)
    mask[1, : min(2, t - 1)] = 0  # left padding (always leaving one real token)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        inc = run_chunks(model, ids, chunks, mask)
    assert (inc - full)[mask.bool()].abs().max() <= 1e-5


_MODEL = {}


def _cached_model():
    if "m" not in _MODEL:
        _MODEL["m"] = make(sliding_window=4)
    return _MODEL["m"]


def test_cache_truncate_select_reset():
    model = make()
    ids, _ = ids_and_mask(b=3, t=10)
    with torch.no_grad():
        full = model(ids).logits
        cache = model.make_cache(3, max_len=16)
        model(ids[:, :6], kv_cache=cache)
        # speculative decoding: 3 draft tokens, keep none, then continue with the real ones
        model(torch.zeros(3, 3, dtype=torch.long), kv_cache=cache)
        cache.truncate(6)
        assert cache.seq_len == 6
        step = model(ids[:, 6:], kv_cache=cache).logits
        assert (step - full[:, 6:]).abs().max() <= 1e-5
        # beam search: reorder and duplicate rows
        cache.truncate(8)
        cache.select(torch.tensor([2, 2, 0]))
        nxt = model(ids[[2, 2, 0], 8:], kv_cache=cache).logits
        assert (nxt - full[[2, 2, 0], 8:]).abs().max() <= 1e-5
        cache.reset()
        assert cache.seq_len == 0
    with pytest.raises(ValueError, match="full"):
        model(torch.zeros(3, 17, dtype=torch.long), kv_cache=cache)


def test_cache_holds_only_kv_heads():
    model = make(n_kv_heads=1)
    cache = KVCache.for_model(model, batch_size=2, max_len=8)
    model(torch.zeros(2, 3, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0].shape == (2, 1, 8, 8)
    assert cache.memory_bytes() == 2 * 2 * (2 * 1 * 8 * 8) * 4


def test_loss_is_shifted_cross_entropy():
    model = make()
    ids, _ = ids_and_mask(t=10)
    labels = ids.clone()
    labels[0, 5:] = -100
    out = model(ids, labels=labels)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert out.aux_loss is None
    out.loss.backward()
    assert model.embed_tokens.weight.grad is not None


def test_moe_aux_loss_is_added():
    model = make(n_experts=4, n_experts_per_tok=2, router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    ids, _ = ids_and_mask(t=10)
    out = model(ids, labels=ids)
    per_layer = [layer.mlp.aux_loss for layer in model.layers]
    torch.testing.assert_close(out.aux_loss, sum(per_layer))
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ce + out.aux_loss)
    out.loss.backward()
    assert model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def test_num_logits_to_keep_and_hidden_states():
    model = make()
    ids, _ = ids_and_mask()
    with torch.no_grad():
        full = model(ids)
        last = model(ids, num_logits_to_keep=1)
    assert last.logits.shape == (3, 1, V)
    torch.testing.assert_close(last.logits, full.logits[:, -1:])
    assert full.hidden_states.shape == (3, 14, 32)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids, num_logits_to_keep=1)


def test_tied_embeddings_and_parameter_count():
    model = make(tie_embeddings=True, position="learned")
    assert model.lm_head.weight is model.embed_tokens.weight
    distinct = {id(p): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(distinct.values())
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - (V + 48) * 32
    names = set(model.state_dict())
    assert {"embed_tokens.weight", "embed_positions.weight", "norm.weight", "lm_head.weight",
            "layers.1.self_attn.q_proj.weight", "layers.1.mlp.gate_proj.weight"} <= names


def test_explicit_path_matches_sdpa_and_returns_weights():
    model = make(sliding_window=6)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        fast = model(ids, attention_mask=mask)
        slow = model(ids, attention_mask=mask, return_weights=True)
    assert (fast.logits - slow.logits)[mask.bool()].abs().max() <= 1e-5
    assert len(slow.attentions) == 2 and slow.attentions[0].shape == (3, 4, 14, 14)
    torch.testing.assert_close(slow.attentions[0].sum(-1), torch.ones(3, 4, 14))


def test_bad_inputs():
    model = make(position="learned", max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


@pytest.mark.parametrize("variant", ["llama-gqa", "moe"])
def test_overfits_a_tiny_batch(variant):
    """End to end: gradients reach every part and the loss goes down."""
    model = make(**VARIANTS[variant]).train()
    ids, _ = ids_and_mask(b=3, t=12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3 * first
