"""Hugging Face Gemma checkpoints: gemma, gemma2, gemma3_text.

All three are Llama-shaped decoders with Gemma's own pieces (each a `ModelConfig` switch):
RMSNorm that scales by (1 + w) in fp32 (`norm_unit_offset`), token embeddings times
sqrt(hidden_size) (`scale_embeddings`), GeGLU with tanh-approximated GELU, an explicit
head_dim (256 unless config.json says otherwise), and tied embeddings by default. Then
  gemma        pre-norm, scores scaled by head_dim ** -0.5
  gemma2       sandwich norms (pre_feedforward / post_feedforward layernorms), soft-capped
               attention scores (50) and final logits (30), query_pre_attn_scalar, and
               alternating sliding-window (local) and full (global) layers
  gemma3_text  gemma2 without attention soft-capping (transformers ignores the key; it is kept
               as it was) and no final soft-capping by default, plus per-head q/k RMSNorm, a sliding
               window pattern (5 local : 1 global), and a RoPE of its own for the local layers
               (rope_local_base_freq, never scaled; the global layers' scaling is linear)
The defaults that config.json may leave out are transformers' class defaults, so a file
loads here exactly as it loads there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, eos_and_extra, eos_to_hf,
                                 mismatches, required, without_tied_head)
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("gemma", "gemma2", "gemma3_text")
HF_CLASSES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
MAX_POSITIONS = {"gemma": 8192, "gemma2": 8192, "gemma3_text": 131072}
FINAL_SOFTCAP = {"gemma2": 30.0, "gemma3_text": None}  # transformers' defaults
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "silu": "silu",
               "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu", "relu": "relu"}

# ---- the name tables: lmkit name <-> Hugging Face name -------------------------------------
_L = "model.layers.{i}"
_COMMON = (
    [
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
    ]
    + [(f"layers.{{i}}.self_attn.{p}_proj.{s}", f"{_L}.self_attn.{p}_proj.{s}")
       for p in "qkvo" for s in ("weight", "bias")]
    + [(f"layers.{{i}}.mlp.{p}_proj.weight", f"{_L}.mlp.{p}_proj.weight") for p in ("gate", "up", "down")]
)
NAME_MAPS = {
    "gemma": NameMap(_COMMON + [("layers.{i}.mlp_norm.weight", f"{_L}.post_attention_layernorm.weight")]),
    "gemma2": NameMap(_COMMON + [
        ("layers.{i}.attn_post_norm.weight", f"{_L}.post_attention_layernorm.weight"),
        ("layers.{i}.mlp_norm.weight", f"{_L}.pre_feedforward_layernorm.weight"),
        ("layers.{i}.mlp_post_norm.weight", f"{_L}.post_feedforward_layernorm.weight"),
    ]),
}
NAME_MAPS["gemma3_text"] = NameMap(NAME_MAPS["gemma2"].pairs + [
    ("layers.{i}.self_attn.q_norm.weight", f"{_L}.self_attn.q_norm.weight"),
    ("layers.{i}.self_attn.k_norm.weight", f"{_L}.self_attn.k_norm.weight"),
])
DROP = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

# HF config keys this module reads; everything else is kept in ModelConfig.extra and written back
_CONSUMED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "rope_local_base_freq", "attention_bias", "tie_word_embeddings",
    "attention_dropout", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window",
    "layer_types", "sliding_window_pattern", "_sliding_window_pattern", "query_pre_attn_scalar",
    "final_logit_softcapping", "use_bidirectional_attention",
    "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
}
_ACT_KEY = {"gemma": "hidden_act", "gemma2": "hidden_activation", "gemma3_text": "hidden_activation"}


def _req(hf: dict, key: str) -> Any:
    return required(hf, key, hf.get("model_type"))


def _one_rope(params: dict, where: str, allowed: tuple[str, ...]) -> tuple[float, str | None, float]:
    """(theta, lmkit rope_scaling, factor) of one rope_parameters entry."""
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: {where} must be an object")
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in allowed:
        raise ConfigError(f"config.json: {where} rope type {kind!r} is not implemented for Gemma in lmkit "
                          f"(supported: {', '.join(allowed)})")
    factor = float(params.get("factor", 1.0))
    if kind != "default" and factor < 1.0:
        raise ConfigError(f"config.json: {where} rope scaling {kind!r} needs a factor >= 1, got {factor}")
    return float(params["rope_theta"]), (None if kind == "default" else kind), (1.0 if kind == "default" else factor)


def _rope(hf: dict, model_type: str) -> tuple[float, str | None, float, float | None]:
    """(theta, scaling, factor) of the (global) RoPE and the local layers' base (Gemma 3), as
    transformers reads them: rope_parameters, else the legacy rope_theta / rope_scaling /
    rope_local_base_freq keys."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    if model_type != "gemma3_text":
        merged = {"rope_theta": hf.get("rope_theta", 10000.0), **legacy, **params}
        return (*_one_rope(merged, "rope_parameters", ("default", "linear", "dynamic")), None)
    full = {"rope_theta": hf.get("rope_theta", 1e6), **legacy, **(params.get("full_attention") or {})}
    local = {"rope_theta": hf.get("rope_local_base_freq", 1e4), **(params.get("sliding_attention") or {})}
    theta, scaling, factor = _one_rope(full, "rope_parameters.full_attention", ("default", "linear"))
    local_theta, _, _ = _one_rope(local, "rope_parameters.sliding_attention", ("default",))
    return theta, scaling, factor, local_theta


def _layer_types(hf: dict, model_type: str, n_layers: int) -> list[str] | None:
    """Each layer's attention type: config.json's layer_types, else transformers' pattern
    (Gemma 2: local, global, local, ...; Gemma 3: every sliding_window_pattern-th layer global)."""
    if model_type == "gemma":
        return None
    types = hf.get("layer_types")
    if types is None:
        every = 2 if model_type == "gemma2" else int(hf.get("sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layers)]
    return list(types)


def config_from_hf(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"arch_gemma handles {MODEL_TYPES}, not {model_type!r}")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("config.json: use_bidirectional_attention (EmbeddingGemma) is not supported by lmkit")
    heads = int(_req(hf, "num_attention_heads"))
    n_layers = int(_req(hf, "num_hidden_layers"))
    kv = int(hf.get("num_key_value_heads") or heads)
    act = hf.get(_ACT_KEY[model_type]) or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json: {_ACT_KEY[model_type]}={act!r} is not supported "
                          f"(supported: {sorted(ACTIVATIONS)})")
    theta, scaling, factor, local_theta = _rope(hf, model_type)
    sandwich = model_type != "gemma"
    consumed = _CONSUMED | {_ACT_KEY[model_type]} | ({"attn_logit_softcapping"} if model_type == "gemma2" else set())
    eos, extra = eos_and_extra(hf, consumed, default=1)
    with config_contradictions(model_type):
        return ModelConfig(
            arch="decoder",
            vocab_size=int(_req(hf, "vocab_size")),
            d_model=int(_req(hf, "hidden_size")),
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=kv,
            head_dim=int(hf.get("head_dim") or 256),
            d_ff=int(_req(hf, "intermediate_size")),
            max_seq_len=int(hf.get("max_position_embeddings") or MAX_POSITIONS[model_type]),
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            norm_unit_offset=True,
            norm_position="sandwich" if sandwich else "pre",
            qk_norm="head" if model_type == "gemma3_text" else None,
            scale_embeddings=True,
            activation=ACTIVATIONS[act],
            gated_ffn=True,
            position="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            rope_scaling_factor=factor,
            rope_local_theta=local_theta,
            qkv_bias=bool(hf.get("attention_bias", False)),
            o_bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            sliding_window=hf.get("sliding_window", 4096) if sandwich else None,
            layer_types=_layer_types(hf, model_type, n_layers),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256) if sandwich else None,
            attn_logit_softcapping=hf.get("attn_logit_softcapping", 50.0) if model_type == "gemma2" else None,
            final_logit_softcapping=hf.get("final_logit_softcapping", FINAL_SOFTCAP[model_type]) if sandwich else None,
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id", 0),
            bos_token_id=hf.get("bos_token_id", 2),
            eos_token_id=eos,
            model_type=model_type,
            extra=extra,
        )


def _written_layer_types(cfg: ModelConfig) -> list[str]:
    """Gemma 2/3 files always name each layer's type; lmkit's None means every layer alike."""
    if cfg.layer_types is not None:
        return list(cfg.layer_types)
    return ["sliding_attention" if cfg.sliding_window is not None else "full_attention"] * cfg.n_layers


def _check_representable(cfg: ModelConfig) -> None:
    mt = cfg.model_type
    sandwich = mt != "gemma"
    expect = dict(arch="decoder", norm="rmsnorm", norm_unit_offset=True, scale_embeddings=True, gated_ffn=True,
                  position="rope", lm_head_bias=False, ffn_bias=False, scale_attn=True, n_experts=0,
                  norm_position="sandwich" if sandwich else "pre",
                  qk_norm="head" if mt == "gemma3_text" else None)
    if mt != "gemma2":
        expect.update(attn_logit_softcapping=None)
    if not sandwich:
        expect.update(final_logit_softcapping=None, query_pre_attn_scalar=None, layer_types=None, sliding_window=None)
    if mt != "gemma3_text":
        expect.update(rope_local_theta=None)
    problems = mismatches(cfg, expect)
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if cfg.qkv_bias != cfg.o_bias:
        problems.append("Gemma puts a bias on all four attention projections or on none (qkv_bias != o_bias)")
    if cfg.rope_scaling not in (None, "linear") + (("dynamic",) if mt != "gemma3_text" else ()):
        problems.append(f"rope_scaling={cfg.rope_scaling!r}")
    if mt == "gemma3_text" and cfg.rope_local_theta is None and cfg.rope_scaling is not None \
            and "sliding_attention" in _written_layer_types(cfg):
        problems.append("gemma3 never scales the local layers' RoPE: set rope_local_theta (or no rope_scaling)")
    check_writable(problems, mt)


def _rope_to_hf(theta: float, scaling: str | None, factor: float) -> dict:
    rope: dict[str, Any] = {"rope_type": scaling or "default", "rope_theta": theta}
    if scaling is not None:
        rope["factor"] = factor
    return rope


def config_to_hf(cfg: ModelConfig) -> dict:
    mt = cfg.model_type
    if mt not in MODEL_TYPES:
        raise ConfigError(f"arch_gemma writes {MODEL_TYPES}, not model_type={mt!r}")
    _check_representable(cfg)
    rope = _rope_to_hf(cfg.rope_theta, cfg.rope_scaling, cfg.rope_scaling_factor)
    hf: dict[str, Any] = dict(cfg.extra)
    hf.update({
        "model_type": mt,
        "architectures": [HF_CLASSES[mt]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        _ACT_KEY[mt]: ACTIVATIONS_TO_HF[cfg.activation],
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": cfg.attn_dropout,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "use_cache": True,
    })
    eos_to_hf(hf, cfg)
    if mt == "gemma":
        return hf
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    hf.update(
        query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
        final_logit_softcapping=cfg.final_logit_softcapping,
        sliding_window=cfg.sliding_window,
        layer_types=_written_layer_types(cfg),
    )
    if mt == "gemma2":
        hf["attn_logit_softcapping"] = cfg.attn_logit_softcapping
    if mt == "gemma3_text":
        local = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": _rope_to_hf(local, None, 1.0)}
    return hf


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return drop_tied_head(NAME_MAPS[cfg.model_type].rename_to_ours(sd, drop=DROP), cfg)


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return NAME_MAPS[cfg.model_type].rename_to_theirs(without_tied_head(sd, cfg), cfg.model_type)


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.decoder import DecoderLM

    return DecoderLM(cfg)
