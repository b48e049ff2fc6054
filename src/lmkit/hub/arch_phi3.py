"""Hugging Face Phi-3 checkpoints (model_type phi3): Phi-3, Phi-3.5, Phi-4-mini.

A Llama-shaped decoder (RMSNorm pre-norm, SwiGLU, GQA, no biases) whose checkpoint fuses
  ``self_attn.qkv_proj``  = [q; k; v] rows        -> lmkit's q_proj, k_proj, v_proj
  ``mlp.gate_up_proj``    = [gate; up] rows       -> lmkit's gate_proj, up_proj
split on load and fused on save (hub/fused_linear.py), so LoRA targets q_proj/k_proj/v_proj by name
(peft/peft_format.py fuses an adapter back for PEFT). RoPE: default or longrope (Phi-3.5,
Phi-4-mini; legacy names "su" and "yarn" mean longrope here, as in transformers), with a
top-level original_max_position_embeddings (default 4096) that wins over the one inside the rope
settings, and partial_rotary_factor (Phi-4-mini). Optional sliding window (Phi-3-mini).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.arch_llama import ACTIVATIONS, ACTIVATIONS_TO_HF
from lmkit.hub.fused_linear import FusedLinear, fuse_parts, split_fused
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, eos_and_extra, eos_to_hf,
                                 mismatches, required, without_tied_head)
from lmkit.hub.hf_rope import rope_from_hf, rope_to_hf
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("phi3",)
ORIGINAL_DEFAULT = 4096  # Phi3Config.original_max_position_embeddings

_L = "model.layers.{i}"
NAME_MAP = NameMap(
    [
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
        ("layers.{i}.mlp_norm.weight", f"{_L}.post_attention_layernorm.weight"),
        ("layers.{i}.self_attn.o_proj.weight", f"{_L}.self_attn.o_proj.weight"),
        ("layers.{i}.mlp.down_proj.weight", f"{_L}.mlp.down_proj.weight"),
    ]
)
FUSED = (
    FusedLinear(f"{_L}.self_attn.qkv_proj", tuple(f"layers.{{i}}.self_attn.{p}_proj" for p in "qkv")),
    FusedLinear(f"{_L}.mlp.gate_up_proj", ("layers.{i}.mlp.gate_proj", "layers.{i}.mlp.up_proj")),
)
DROP = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.(inv_freq|long_inv_freq|short_inv_freq)",)

_CONSUMED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "original_max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "partial_rotary_factor", "tie_word_embeddings", "resid_pdrop", "embd_pdrop", "attention_dropout",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window", "transformers_version",
    "_name_or_path", "torch_dtype", "dtype", "use_cache", "head_dim",
    "attention_bias",  # written by transformers 4, read by neither: Phi-3 layers have no biases
}


def fused_layers(cfg: ModelConfig) -> tuple[FusedLinear, ...]:
    return FUSED


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") not in MODEL_TYPES:
        raise ConfigError(f"arch_phi3 handles {MODEL_TYPES}, not {hf.get('model_type')!r}")
    d = int(required(hf, "hidden_size", "phi3"))
    heads = int(required(hf, "num_attention_heads", "phi3"))
    if d % heads:
        raise ConfigError(f"config.json: hidden_size={d} is not divisible by num_attention_heads={heads}")
    kv = int(hf.get("num_key_value_heads") or heads)
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json: hidden_act={act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    rope = rope_from_hf(hf, 10000.0, partial=True, original_default=ORIGINAL_DEFAULT,
                        aliases={"su": "longrope", "yarn": "longrope"})
    if rope["rope_scaling"] not in (None, "longrope"):
        raise ConfigError(f"config.json: phi3 supports default or longrope RoPE, not {rope['rope_scaling']!r}")
    eos, extra = eos_and_extra(hf, _CONSUMED, default=32000)
    window = hf.get("sliding_window")
    with config_contradictions("phi3"):
        return ModelConfig(
            arch="decoder",
            vocab_size=int(required(hf, "vocab_size", "phi3")),
            d_model=d,
            n_layers=int(required(hf, "num_hidden_layers", "phi3")),
            n_heads=heads,
            n_kv_heads=kv,
            d_ff=int(required(hf, "intermediate_size", "phi3")),
            max_seq_len=int(hf.get("max_position_embeddings", 4096)),
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            activation=ACTIVATIONS[act],
            gated_ffn=True,
            position="rope",
            **rope,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=int(window) if window is not None else None,
            dropout=float(hf.get("resid_pdrop", 0.0)),
            attn_dropout=float(hf.get("attention_dropout", 0.0)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id", 32000),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=eos,
            model_type="phi3",
            extra=extra,
        )


def config_to_hf(cfg: ModelConfig) -> dict:
    problems = mismatches(cfg, dict(arch="decoder", norm="rmsnorm", norm_position="pre", position="rope",
                                    gated_ffn=True, qkv_bias=False, o_bias=False, ffn_bias=False, lm_head_bias=False,
                                    scale_attn=True, n_experts=0, qk_norm=None, parallel_residual=False))
    if cfg.rope_scaling not in (None, "longrope"):
        problems.append(f"rope_scaling={cfg.rope_scaling!r} (phi3 reads default or longrope)")
    if cfg.head_dim * cfg.n_heads != cfg.d_model:
        problems.append("phi3 derives head_dim = d_model / n_heads")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    check_writable(problems, "phi3")
    hf: dict[str, Any] = dict(cfg.extra)
    rope = rope_to_hf(cfg)
    hf.update(
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        max_position_embeddings=cfg.max_seq_len,
        original_max_position_embeddings=cfg.rope_original_max_seq_len or cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        **rope,
        partial_rotary_factor=cfg.partial_rotary_factor,
        tie_word_embeddings=cfg.tie_embeddings,
        sliding_window=cfg.sliding_window,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        pad_token_id=cfg.pad_token_id,
        use_cache=True,
    )
    eos_to_hf(hf, cfg)
    return hf


def _sizes(cfg: ModelConfig) -> dict[str, list[int]]:
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {FUSED[0].theirs: [q, kv, kv], FUSED[1].theirs: [cfg.d_ff, cfg.d_ff]}


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = NAME_MAP.rename_to_ours(split_fused(sd, FUSED, _sizes(cfg)), drop=DROP)
    return drop_tied_head(out, cfg)


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    rest, fused = fuse_parts(without_tied_head(sd, cfg), FUSED)
    return {**NAME_MAP.rename_to_theirs(rest, "phi3"), **fused}


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.decoder import DecoderLM

    return DecoderLM(cfg)
