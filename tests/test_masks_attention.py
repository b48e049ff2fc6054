"""Attention-mask semantics, read off the attention weights of the explicit path.

Oracles: transformers' own mask functions (masking_utils) for causal / sliding window /
padding, the definition of prefix-LM attention, and MHA with repeated key/value heads for GQA.
"""

from __future__ import annotations

import pytest
import torch

from lmkit.models.attention import Attention
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.kv_cache import KVCache
from lmkit.models.masks import to_additive_bias

masking_utils = pytest.importorskip("transformers.masking_utils")

V = 50


def model(**kw) -> DecoderLM:
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32)
    base.update(kw)
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**base)).eval()


def weights(m, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return m(ids, return_weights=True, **kw).attentions[0]  # [B, H, T, S]


def hf_pattern(fn, b: int, t: int) -> torch.Tensor:
    """Evaluate a transformers mask function on the index grid -> bool [T, S]."""
    T = torch.tensor
    return torch.tensor([[bool(fn(T(b), T(0), T(i), T(j))) for j in range(t)] for i in range(t)])


def test_causal_matches_transformers():
    w = weights(model(), torch.randint(0, V, (1, 9)))
    seen = w[0].amax(0) > 0
    assert torch.equal(seen, hf_pattern(masking_utils.causal_mask_function, 0, 9))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_sliding_window_matches_transformers(window):
    w = weights(model(sliding_window=window), torch.randint(0, V, (1, 11)))
    seen = w[0].amax(0) > 0
    ref = hf_pattern(masking_utils.sliding_window_causal_mask_function(window), 0, 11)
    assert torch.equal(seen, ref)
    assert int(seen.sum(-1).max()) == window  # at most `window` keys, the query itself included


def test_sliding_window_with_cache_and_padding():
    m = model(sliding_window=3)
    ids = torch.randint(0, V, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    full = weights(m, ids, attention_mask=mask)
    cache = KVCache.for_model(m, 2, 16)
    with torch.no_grad():
        m(ids[:, :7], attention_mask=mask[:, :7], kv_cache=cache)
        step = m(ids[:, 7:], attention_mask=mask, kv_cache=cache, return_weights=True).attentions[0]
    torch.testing.assert_close(step, full[:, :, 7:], atol=1e-6, rtol=1e-5)
    pad_fn = masking_utils.and_masks(
        masking_utils.sliding_window_causal_mask_function(3), masking_utils.padding_mask_function(mask.bool())
    )
    for b in range(2):
        ref = hf_pattern(pad_fn, b, 10)
        real = mask[b].bool()
        assert torch.equal((full[b].amax(0) > 0)[real], ref[real])


def test_padding_keys_get_zero_weight():
    ids = torch.randint(0, V, (2, 8))
    mask = torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]])
    w = weights(model(), ids, attention_mask=mask)
    assert w[1, :, 3:, :3].abs().max() == 0  # real queries never look at padding
    assert torch.allclose(w[1, :, 3:].sum(-1), torch.ones(4, 5))


def test_prefix_lm_mask():
    ids = torch.randint(0, V, (2, 9))
    prefix = torch.tensor([3, 5])
    w = weights(model(), ids, prefix_len=prefix)
    seen = w.amax(1) > 0  # [B, T, S]
    for b, p in enumerate(prefix.tolist()):
        i, j = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
        expected = (j <= i) | ((i < p) & (j < p))  # prefix bidirectional, target causal
        assert torch.equal(seen[b], expected)
        assert seen[b, 0, p - 1]  # the first prefix token sees the last one
        assert not seen[b, p, p + 1]  # a target token never sees the future


def test_prefix_lm_with_left_padding_and_collator_batch():
    """prefix_len counts real tokens, so left padding does not move the boundary."""
    m = model()
    ids = torch.randint(0, V, (1, 7))
    w_plain = weights(m, ids, prefix_len=torch.tensor([3]))
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0] + [1] * 7])
    w_pad = weights(m, padded, prefix_len=torch.tensor([3]), attention_mask=mask)
    torch.testing.assert_close(w_pad[:, :, 2:, 2:], w_plain, atol=1e-6, rtol=1e-5)

    from lmkit.data.prefix_lm import PrefixLMCollator

    batch = PrefixLMCollator(pad_id=0, prefix_len=3)([list(range(1, 9)), list(range(1, 6))])
    out = m(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)


def _pair(n_heads=4, n_kv=2):
    torch.manual_seed(0)
    gqa = Attention(ModelConfig(d_model=32, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=10))
    mha = Attention(ModelConfig(d_model=32, n_heads=n_heads, n_kv_heads=n_heads, vocab_size=10))
    rep, hd = n_heads // n_kv, 32 // n_heads
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(n_kv, hd, 32).repeat_interleave(rep, dim=0).reshape(-1, 32)
            getattr(mha, name).weight.copy_(w)
    return gqa, mha


@pytest.mark.parametrize("n_kv", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(n_kv):
    gqa, mha = _pair(n_kv=n_kv)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        a, wa = gqa(x, is_causal=True, return_weights=True)
        b, wb = mha(x, is_causal=True, return_weights=True)
        c, _ = gqa(x, is_causal=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(wa, wb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


def test_explicit_path_equals_sdpa():
    attn, _ = _pair()
    x = torch.randn(2, 6, 32)
    allowed = torch.rand(2, 6, 6) > 0.3
    allowed[..., 0] = True
    bias = to_additive_bias(allowed, torch.float32, torch.randn(4, 6, 6))
    with torch.no_grad():
        for kw in (dict(attn_bias=bias), dict(is_causal=True), {}):
            fast, _ = attn(x, **kw)
            slow, w = attn(x, return_weights=True, **kw)
            torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_is_causal_with_cached_keys_is_bottom_right_aligned():
    """A chunk of new queries after cached keys: SDPA's is_causal alone would align top-left."""
    attn, _ = _pair()
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        full, _ = attn(x, is_causal=True)
        cache = KVCache(1, 1, 2, 8, 16)
        attn(x[:, :3], is_causal=True, kv_cache=cache.layer(0))
        tail, _ = attn(x[:, 3:], is_causal=True, kv_cache=cache.layer(0))
        cache.reset()
        attn(x[:, :3], is_causal=True, kv_cache=cache.layer(0))
        tail_w, _ = attn(x[:, 3:], is_causal=True, kv_cache=cache.layer(0), return_weights=True)
    torch.testing.assert_close(tail, full[:, 3:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tail_w, full[:, 3:], atol=1e-6, rtol=1e-5)


def test_attention_bias_builder():
    """masks.attention_bias: None when SDPA needs no mask; cache offsets, padding and cross-attention shapes."""
    from lmkit.models.masks import attention_bias, causal_bias, real_tokens

    pos = torch.arange(5)
    assert attention_bias(pos, pos, torch.float32, causal=True) is None  # SDPA's causal kernel
    assert attention_bias(pos[4:], pos, torch.float32, causal=True) is None  # one new query sees every key
    assert attention_bias(pos, pos, torch.float32, causal=False) is None  # full attention
    assert attention_bias(pos, pos, torch.float32, causal=True, window=5) is None  # window covers everything
    cached = attention_bias(pos[3:], pos, torch.float32, causal=True)  # two new queries after three cached
    assert torch.equal(cached[0, 0] == 0, pos[None, :] <= pos[3:, None])
    assert torch.equal(cached[0, 0], causal_bias(2, 5, torch.float32, pos.device))
    assert real_tokens(torch.ones(2, 5), 2, 5, pos.device) is None
    with pytest.raises(ValueError, match="attention_mask"):
        real_tokens(torch.ones(2, 4), 2, 5, pos.device)
    padding = real_tokens(torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]), 2, 5, pos.device)
    cross = attention_bias(torch.arange(3), pos, torch.float32, causal=False, padding=padding)
    assert cross.shape == (2, 1, 1, 5) and bool((cross[1, 0, 0, :2] < -1e30).all()) and bool((cross[:, 0, 0, 2:] == 0).all())
