"""Hugging Face GPT-2 checkpoints.

GPT-2 is a pre-LayerNorm decoder with learned absolute positions, a GELU (tanh) MLP, biases
everywhere and the LM head tied to the token embedding. Two quirks of its checkpoints:
  * its linear layers are `Conv1D` modules storing the weight as [in, out] — the transpose
    of `nn.Linear`'s [out, in];
  * q, k and v are one fused projection `attn.c_attn` ([d, 3d]), split here into
    q_proj/k_proj/v_proj and merged back on save.
Checkpoints written by `GPT2LMHeadModel` prefix names with `transformer.`; the original
OpenAI conversion does not. Both load; lmkit writes the prefixed form.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, eos_and_extra, eos_to_hf,
                                 mismatches, required, without_tied_head)
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("gpt2",)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}

# ---- the name table --------------------------------------------------------------------------
# `qkv_proj` is the fused c_attn before it is split into q/k/v (see _split_qkv / _merge_qkv).
NAME_MAP = NameMap(
    [
        ("embed_tokens.weight", "wte.weight"),
        ("embed_positions.weight", "wpe.weight"),
        ("norm.weight", "ln_f.weight"),
        ("norm.bias", "ln_f.bias"),
        ("lm_head.weight", "lm_head.weight"),
    ]
    + [
        (f"layers.{{i}}.{ours}.{s}", f"h.{{i}}.{theirs}.{s}")
        for ours, theirs in [
            ("attn_norm", "ln_1"),
            ("self_attn.qkv_proj", "attn.c_attn"),
            ("self_attn.o_proj", "attn.c_proj"),
            ("mlp_norm", "ln_2"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ]
        for s in ("weight", "bias")
    ]
)
# Conv1D weights ([in, out]) are transposed on the way in and out
CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight\Z")
# attention-mask buffers stored by old checkpoints
DROP = (r"h\.\d+\.attn\.(bias|masked_bias)", r"h\.\d+\.crossattention\.(bias|masked_bias)")
PREFIX = "transformer."

_CONSUMED = {
    "model_type", "architectures", "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head",
    "n_inner", "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
    "initializer_range", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
    "add_cross_attention", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
}


def _req(hf: dict, key: str) -> Any:
    return required(hf, key, "gpt2")


def config_from_hf(hf: dict) -> ModelConfig:
    d = int(_req(hf, "n_embd"))
    heads = int(_req(hf, "n_head"))
    if d % heads:
        raise ConfigError(f"config.json (gpt2): n_embd={d} is not divisible by n_head={heads}")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json (gpt2): activation_function={act!r} is not supported ({sorted(ACTIVATIONS)})")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError("config.json (gpt2): scale_attn_by_inverse_layer_idx=true is not supported")
    if hf.get("add_cross_attention"):
        raise ConfigError("config.json (gpt2): add_cross_attention=true (GPT-2 as a seq2seq decoder) is not supported")
    eos, extra = eos_and_extra(hf, _CONSUMED, default=50256)
    with config_contradictions("gpt2"):
        return ModelConfig(
            arch="decoder",
            vocab_size=int(_req(hf, "vocab_size")),
            d_model=d,
            n_layers=int(_req(hf, "n_layer")),
            n_heads=heads,
            d_ff=int(hf.get("n_inner") or 4 * d),
            max_seq_len=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            norm="layernorm",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            norm_position="pre",
            norm_bias=True,
            activation=ACTIVATIONS[act],
            gated_ffn=False,
            position="learned",
            qkv_bias=True,
            o_bias=True,
            ffn_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            scale_attn=bool(hf.get("scale_attn_weights", True)),
            dropout=float(hf.get("resid_pdrop", 0.1)),
            attn_dropout=float(hf.get("attn_pdrop", 0.1)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=eos,
            model_type="gpt2",
            extra=extra,
        )


def config_to_hf(cfg: ModelConfig) -> dict:
    expect = dict(arch="decoder", norm="layernorm", norm_position="pre", norm_bias=True, gated_ffn=False,
                  position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, lm_head_bias=False,
                  n_experts=0, sliding_window=None, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads)
    problems = mismatches(cfg, expect)
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if cfg.d_model % cfg.n_heads:
        problems.append("n_heads must divide d_model")
    problems += cfg.gemma_settings()
    check_writable(problems, "gpt2")
    hf: dict[str, Any] = dict(cfg.extra)
    hf.update(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        activation_function=ACTIVATIONS_TO_HF[cfg.activation],
        layer_norm_epsilon=cfg.norm_eps,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.attn_dropout,
        initializer_range=cfg.initializer_range,
        scale_attn_weights=cfg.scale_attn,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id,
        pad_token_id=cfg.pad_token_id,
        use_cache=True,
    )
    eos_to_hf(hf, cfg)
    return hf


_QKV = re.compile(r"(layers\.\d+\.self_attn)\.qkv_proj\.(weight|bias)\Z")
_QKV_PARTS = re.compile(r"(layers\.\d+\.self_attn)\.(q|k|v)_proj\.(weight|bias)\Z")


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in sd.items()}
    sd = {k: (v.t() if CONV1D.match(k) else v) for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in NAME_MAP.rename_to_ours(sd, drop=DROP).items():
        m = _QKV.match(k)
        if m and v.shape[0] % 3 == 0:
            for part, t in zip("qkv", v.chunk(3, dim=0)):
                out[f"{m.group(1)}.{part}_proj.{m.group(2)}"] = t
        else:
            out[k] = v  # a mis-shaped c_attn passes through and is reported by the strict loader
    return drop_tied_head(out, cfg)


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in without_tied_head(sd, cfg).items():
        m = _QKV_PARTS.match(k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            merged[k] = v
    for (base, kind), qkv in parts.items():
        merged[f"{base}.qkv_proj.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    out = {}
    for k, v in NAME_MAP.rename_to_theirs(merged, "gpt2").items():
        v = v.t().contiguous() if CONV1D.match(k) else v
        out[k if k == "lm_head.weight" else PREFIX + k] = v
    return out


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.decoder import DecoderLM

    return DecoderLM(cfg)
