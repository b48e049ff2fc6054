"""Layer building blocks against the reference implementations in `transformers`."""

from __future__ import annotations

import math

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.ffn import FeedForward
from lmkit.models.norms import RMSNorm, make_norm
from lmkit.models.positional import (
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    relative_position_bucket,
    sinusoidal_table,
)

tf_llama = pytest.importorskip("transformers.models.llama.modeling_llama")


def _hf_rope(scaling: dict | None, positions: torch.Tensor, head_dim=16, max_pos=64):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=max_pos,
                      rope_scaling=scaling)
    rot = tf_llama.LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 1, head_dim)
    return rot(x, positions)


@pytest.mark.parametrize("scaling", [None, "linear", "dynamic"])
def test_rope_tables_match_transformers(scaling):
    pos = torch.arange(100)[None]
    hf_scaling = None if scaling is None else {"rope_type": scaling, "factor": 2.0}
    cos_ref, sin_ref = _hf_rope(hf_scaling, pos)
    cfg = ModelConfig(d_model=64, n_heads=4, max_seq_len=64, rope_scaling=scaling,
                      rope_scaling_factor=2.0 if scaling else 1.0)
    cos, sin = RotaryEmbedding(cfg)(pos)
    torch.testing.assert_close(cos, cos_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin, sin_ref, atol=1e-5, rtol=1e-5)


def test_apply_rope_matches_transformers_and_is_relative():
    cfg = ModelConfig(d_model=64, n_heads=4)
    rot = RotaryEmbedding(cfg)
    q, k = torch.randn(1, 4, 10, 16), torch.randn(1, 4, 10, 16)
    cos, sin = rot(torch.arange(10)[None])
    q_ref, k_ref = tf_llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref)
    # the score between positions depends only on their offset
    v1, v2 = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        ci, si = rot(torch.tensor([[i]]))
        cj, sj = rot(torch.tensor([[j]]))
        return (apply_rope(v1, ci, si) * apply_rope(v2, cj, sj)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)


def test_ntk_scaling_keeps_high_frequencies_and_stretches_low_ones():
    plain = RotaryEmbedding(ModelConfig(d_model=64, n_heads=4)).inv_freq
    ntk = RotaryEmbedding(ModelConfig(d_model=64, n_heads=4, rope_scaling="ntk", rope_scaling_factor=4.0)).inv_freq
    assert ntk[0] == plain[0]  # the fastest-rotating pair is untouched
    # the slowest pair is interpolated by exactly the factor: base' = base * s^(d/(d-2))
    assert math.isclose((plain[-1] / ntk[-1]).item(), 4.0, rel_tol=1e-4)


def test_alibi_slopes_match_bloom():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for heads in (4, 6, 8, 12):
        mask = torch.ones(1, 5)
        ref = build_alibi_tensor(mask, heads, torch.float32).view(heads, 1, 5)
        # BLOOM's bias is slope * key_position; softmax-equivalent to -slope * (i - j) for causal rows
        ours = alibi_slopes(heads)
        torch.testing.assert_close(ours, ref[:, 0, 1])
    bias = alibi_bias(2, torch.arange(3), torch.arange(3), causal=False)
    assert bias[0, 0, 2] == bias[0, 2, 0] == -2 * alibi_slopes(2)[0]


def test_t5_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :] - torch.zeros(1, 1, dtype=torch.long)
    for bidir in (True, False):
        ref = T5Attention._relative_position_bucket(rel, bidirectional=bidir, num_buckets=32, max_distance=128)
        ours = relative_position_bucket(rel, bidir, 32, 128)
        assert torch.equal(ours, ref)


def test_sinusoidal_table_formula():
    t = sinusoidal_table(50, 16)
    assert torch.isclose(t[7, 2], torch.tensor(math.sin(7 / 10000 ** (2 / 16))))
    assert torch.isclose(t[7, 3], torch.tensor(math.cos(7 / 10000 ** (2 / 16))))


def test_rmsnorm_matches_llama_and_layernorm_option():
    x = torch.randn(3, 5, 32)
    ours = RMSNorm(32, 1e-6)
    ref = tf_llama.LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_()
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))
    ln = make_norm(ModelConfig(d_model=32, n_heads=4, norm="layernorm"))
    assert isinstance(ln, torch.nn.LayerNorm)
    out = ln(x)
    assert torch.allclose(out.mean(-1), torch.zeros(3, 5), atol=1e-5)


@pytest.mark.parametrize("act,gated", [("silu", True), ("gelu", False), ("relu", False), ("gelu_tanh", True)])
def test_ffn_formula(act, gated):
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, activation=act, gated_ffn=gated)
    ffn = FeedForward(cfg)
    x = torch.randn(2, 3, 16)
    f = {"silu": torch.nn.functional.silu, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
         "gelu_tanh": lambda h: torch.nn.functional.gelu(h, approximate="tanh")}[act]
    h = f(x @ ffn.gate_proj.weight.T) * (x @ ffn.up_proj.weight.T) if gated else f(x @ ffn.up_proj.weight.T)
    torch.testing.assert_close(ffn(x), h @ ffn.down_proj.weight.T)


def test_config_json_roundtrip_and_validation(tmp_path):
    cfg = ModelConfig(d_model=64, n_heads=8, n_kv_heads=2, n_experts=4, sliding_window=16, extra={"a": 1})
    p = tmp_path / "c.json"
    cfg.save(p)
    assert ModelConfig.load(p) == cfg
    assert cfg.head_dim == 8 and cfg.n_query_groups == 4
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(d_model=64, n_heads=8, n_kv_heads=3)
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig(d_model=60, n_heads=8)
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig.from_dict({"d_model": 64, "n_haeds": 8})
    with pytest.raises(ConfigError, match="position"):
        ModelConfig(position="xpos")
    with pytest.raises(ConfigError, match="eos_token_id"):
        ModelConfig(vocab_size=10, eos_token_id=10)
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{")
