"""Hugging Face GPT-NeoX checkpoints (model_type gpt_neox): Pythia, GPT-NeoX-20B and their kin.

A pre-norm decoder with
  parallel residual   x + attn(ln1(x)) + mlp(ln2(x)) (use_parallel_residual, default on)
  LayerNorm with bias, a plain GELU MLP with biases, biases on attention (attention_bias)
  partial rotary      only the first rotary_pct (partial_rotary_factor, default 0.25) of each head
  fused q/k/v         ``attention.query_key_value`` with each head's q, k, v rows together
                      ([heads, 3, head_dim]); split into lmkit's q/k/v_proj on load, fused on save
  untied output       ``embed_out`` (tie_word_embeddings defaults to false)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.fused_linear import FusedLinear, fuse_parts, split_fused
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, eos_and_extra, eos_to_hf,
                                 mismatches, required, without_tied_head)
from lmkit.hub.hf_rope import rope_from_hf, rope_to_hf
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("gpt_neox",)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

_L = "gpt_neox.layers.{i}"
NAME_MAP = NameMap(
    [
        ("embed_tokens.weight", "gpt_neox.embed_in.weight"),
        ("norm.weight", "gpt_neox.final_layer_norm.weight"),
        ("norm.bias", "gpt_neox.final_layer_norm.bias"),
        ("lm_head.weight", "embed_out.weight"),
    ]
    + [(f"layers.{{i}}.attn_norm.{s}", f"{_L}.input_layernorm.{s}") for s in ("weight", "bias")]
    + [(f"layers.{{i}}.mlp_norm.{s}", f"{_L}.post_attention_layernorm.{s}") for s in ("weight", "bias")]
    + [(f"layers.{{i}}.self_attn.o_proj.{s}", f"{_L}.attention.dense.{s}") for s in ("weight", "bias")]
    + [(f"layers.{{i}}.mlp.up_proj.{s}", f"{_L}.mlp.dense_h_to_4h.{s}") for s in ("weight", "bias")]
    + [(f"layers.{{i}}.mlp.down_proj.{s}", f"{_L}.mlp.dense_4h_to_h.{s}") for s in ("weight", "bias")]
)
# buffers older checkpoints carry that lmkit recomputes (causal mask, rotary frequencies)
DROP = (r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",)

_CONSUMED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "hidden_act", "max_position_embeddings", "layer_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "rotary_pct", "rotary_emb_base", "partial_rotary_factor", "attention_bias",
    "use_parallel_residual", "tie_word_embeddings", "attention_dropout", "hidden_dropout", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
    "use_cache", "original_max_position_embeddings",
}


def fused_layers(cfg: ModelConfig) -> tuple[FusedLinear, ...]:
    return (FusedLinear(f"{_L}.attention.query_key_value",
                        tuple(f"layers.{{i}}.self_attn.{p}_proj" for p in "qkv"), heads=cfg.n_heads),)


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") not in MODEL_TYPES:
        raise ConfigError(f"arch_neox handles {MODEL_TYPES}, not {hf.get('model_type')!r}")
    d = int(required(hf, "hidden_size", "gpt_neox"))
    heads = int(required(hf, "num_attention_heads", "gpt_neox"))
    if d % heads:
        raise ConfigError(f"config.json: hidden_size={d} is not divisible by num_attention_heads={heads}")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json: hidden_act={act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    rope_hf = dict(hf)
    rope_hf.setdefault("rope_theta", hf.get("rotary_emb_base", 10000.0))
    rope_hf.setdefault("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = bool(hf.get("attention_bias", True))
    eos, extra = eos_and_extra(hf, _CONSUMED, default=2)
    with config_contradictions("gpt_neox"):
        return ModelConfig(
            arch="decoder",
            vocab_size=int(required(hf, "vocab_size", "gpt_neox")),
            d_model=d,
            n_layers=int(required(hf, "num_hidden_layers", "gpt_neox")),
            n_heads=heads,
            d_ff=int(hf.get("intermediate_size") or 4 * d),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            norm="layernorm",
            norm_bias=True,
            norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            activation=ACTIVATIONS[act],
            gated_ffn=False,
            position="rope",
            **rope_from_hf(rope_hf, 10000.0, partial=True),
            qkv_bias=bias,
            o_bias=bias,
            ffn_bias=True,
            parallel_residual=bool(hf.get("use_parallel_residual", True)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dropout=float(hf.get("hidden_dropout", 0.0)),
            attn_dropout=float(hf.get("attention_dropout", 0.0)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id", 0),
            eos_token_id=eos,
            model_type="gpt_neox",
            extra=extra,
        )


def config_to_hf(cfg: ModelConfig) -> dict:
    problems = mismatches(cfg, dict(arch="decoder", norm="layernorm", norm_bias=True, norm_position="pre",
                                    position="rope", gated_ffn=False, ffn_bias=True, lm_head_bias=False,
                                    scale_attn=True, n_experts=0, sliding_window=None, qk_norm=None))
    if cfg.n_kv_heads != cfg.n_heads or cfg.head_dim * cfg.n_heads != cfg.d_model:
        problems.append("gpt_neox has n_kv_heads == n_heads and head_dim == d_model / n_heads")
    if cfg.qkv_bias != cfg.o_bias:
        problems.append("gpt_neox puts a bias on all attention projections or on none (qkv_bias != o_bias)")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    check_writable(problems, "gpt_neox")
    rope = rope_to_hf(cfg)
    hf: dict[str, Any] = dict(cfg.extra)
    hf.update(
        model_type="gpt_neox",
        architectures=["GPTNeoXForCausalLM"],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        max_position_embeddings=cfg.max_seq_len,
        layer_norm_eps=cfg.norm_eps,
        **rope,
        rotary_pct=cfg.partial_rotary_factor,  # transformers 4 reads these two
        rotary_emb_base=rope["rope_theta"],
        attention_bias=cfg.qkv_bias,
        use_parallel_residual=cfg.parallel_residual,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        pad_token_id=cfg.pad_token_id,
        use_cache=True,
    )
    hf["rope_parameters"].setdefault("partial_rotary_factor", cfg.partial_rotary_factor)  # NeoX's default is 0.25
    eos_to_hf(hf, cfg)
    return hf


def _sizes(cfg: ModelConfig) -> dict[str, list[int]]:
    return {f.theirs: [cfg.d_model] * 3 for f in fused_layers(cfg)}


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = NAME_MAP.rename_to_ours(split_fused(sd, fused_layers(cfg), _sizes(cfg)), drop=DROP)
    return drop_tied_head(out, cfg)


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    rest, fused = fuse_parts(without_tied_head(sd, cfg), fused_layers(cfg))
    return {**NAME_MAP.rename_to_theirs(rest, "gpt_neox"), **fused}


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.decoder import DecoderLM

    return DecoderLM(cfg)
