"""Attention maps, rollout and heatmaps against transformers' eager attention
(`output_attentions=True`) on randomly initialised Llama, GPT-2 and BERT models."""

from __future__ import annotations

import pytest
import torch

from lmkit.hub import load_pretrained
from lmkit.inspect import attention_maps, attention_rollout

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
V = 61


def hf_model(name: str):
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=1, eos_token_id=2)
        return transformers.GPT2LMHeadModel(cfg)
    if name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        return transformers.LlamaForCausalLM(cfg)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32, type_vocab_size=2)
    return transformers.BertForMaskedLM(cfg)


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert"])
def pair(request, tmp_path_factory):
    """(name, transformers model with eager attention, the same weights loaded into lmkit)."""
    torch.manual_seed(0)
    cfg = hf_model(request.param).config
    cfg._attn_implementation = "eager"
    hf = type(hf_model(request.param))(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the initial values, so the maps are not near-uniform
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    hf.eval()
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return request.param, hf, load_pretrained(d).float().eval()


def test_attention_maps_equal_transformers_eager(pair):
    name, hf, ours = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding: padding keys get probability 0 on both sides
    kw = {} if name == "bert" else {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # lmkit's default
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, output_attentions=True, **kw).attentions
    maps = attention_maps(ours, ids, attention_mask=mask)
    assert len(maps) == len(theirs) == 2
    for a, b in zip(maps, theirs):
        assert a.shape == b.shape == (2, 4, 10, 10)
        assert (a - b).abs().max() <= 1e-5
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 4, 10), atol=1e-5)
    if name != "bert":
        assert maps[0][0].triu(1).abs().max() == 0  # causal: nothing above the diagonal
    # the default fast path is untouched: same logits with and without the weights
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, ours(ids).logits)
        assert (ours(ids, return_weights=True).logits - ours(ids).logits).abs().max() <= 1e-5


def test_rollout_by_hand_and_png(pair, tmp_path):
    name, _, ours = pair
    ids = torch.arange(3, 11)[None]
    maps = attention_maps(ours, ids)
    roll = attention_rollout(maps)
    expect = torch.eye(8)
    for layer in maps:  # Abnar & Zuidema: 0.5·A + 0.5·I, rows renormalised, multiplied upwards
        a = 0.5 * layer[0].mean(0) + 0.5 * torch.eye(8)
        expect = (a / a.sum(-1, keepdim=True)) @ expect
    assert torch.allclose(roll[0], expect, atol=1e-6)
    assert torch.allclose(roll.sum(-1), torch.ones(1, 8), atol=1e-5)
    if name == "llama":
        pytest.importorskip("matplotlib")
        from lmkit.inspect.heatmap import plot_attention

        png = plot_attention(maps, [f"t{i}" for i in range(8)], tmp_path / "attention.png", layer=1, rollout=roll)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_rollout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one layer"):
        attention_rollout([])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([torch.ones(1, 2, 3, 3) / 3], head_fusion="median")
