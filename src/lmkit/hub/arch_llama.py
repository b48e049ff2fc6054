"""Hugging Face Llama-family checkpoints: llama, qwen2, mistral, mixtral, qwen3, qwen3_moe, olmo2.

All are the same decoder: RMSNorm, RoPE, SwiGLU FFN, GQA. They differ in
  llama      optional bias on all attention projections (attention_bias) and on the MLP (mlp_bias)
  qwen2      bias on q/k/v only; optional sliding window (use_sliding_window, per layer)
  mistral    sliding window attention
  mixtral    sliding window (optional) + MoE FFN: 8 experts, top-2, Mixtral routing
  qwen3      per-head q/k RMSNorm (qk_norm="head"), explicit head_dim (128 when absent), optional
             attention_bias, sliding window as qwen2
  qwen3_moe  qwen3 + fine-grained experts (moe_intermediate_size) in the layers that
             decoder_sparse_step and mlp_only_layers pick (the others dense), norm_topk_prob
  olmo2      norms on the sublayer outputs, x + norm(f(x)) (norm_position="sublayer_output"),
             q/k RMSNorm over the whole projection (qk_norm="full")
Experts are written in the format of the published checkpoints (Mixtral:
`block_sparse_moe.experts.{j}.w1/w2/w3`, gate/down/up; Qwen3-MoE: `mlp.experts.{j}.gate_proj/...`);
transformers >= 5 keeps them fused in memory (`mlp.experts.gate_up_proj` [E, 2F, d],
`mlp.experts.down_proj` [E, d, F]) and lmkit reads that layout too.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, eos_and_extra, eos_to_hf,
                                 mismatches, required, without_tied_head)
from lmkit.hub.hf_rope import rope_from_hf, rope_to_hf
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "mistral", "mixtral", "qwen3", "qwen3_moe", "olmo2")
HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
}
DEFAULT_THETA = {"llama": 10000.0, "qwen2": 10000.0, "mistral": 10000.0, "mixtral": 1000000.0, "qwen3": 10000.0,
                 "qwen3_moe": 10000.0, "olmo2": 10000.0}
QK_NORM = {"qwen3": "head", "qwen3_moe": "head", "olmo2": "full"}
ATTENTION_BIAS = ("llama", "qwen3", "qwen3_moe", "olmo2")  # attention_bias: on q, k, v and o, or on none
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# ---- the name table: lmkit name <-> Hugging Face name ------------------------------------------
_L = "model.layers.{i}"
NAME_MAP = NameMap(
    [
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
        ("layers.{i}.mlp_norm.weight", f"{_L}.post_attention_layernorm.weight"),
    ]
    + [
        (f"layers.{{i}}.self_attn.{p}_proj.{s}", f"{_L}.self_attn.{p}_proj.{s}")
        for p in "qkvo"
        for s in ("weight", "bias")
    ]
    + [
        (f"layers.{{i}}.mlp.{p}_proj.{s}", f"{_L}.mlp.{p}_proj.{s}")
        for p in ("gate", "up", "down")
        for s in ("weight", "bias")
    ]
    + [  # Mixtral MoE
        ("layers.{i}.mlp.gate.weight", f"{_L}.block_sparse_moe.gate.weight"),
        ("layers.{i}.mlp.experts.{j}.gate_proj.weight", f"{_L}.block_sparse_moe.experts.{{j}}.w1.weight"),
        ("layers.{i}.mlp.experts.{j}.down_proj.weight", f"{_L}.block_sparse_moe.experts.{{j}}.w2.weight"),
        ("layers.{i}.mlp.experts.{j}.up_proj.weight", f"{_L}.block_sparse_moe.experts.{{j}}.w3.weight"),
    ]
)
_QK_NORMS = [(f"layers.{{i}}.self_attn.{p}_norm.weight", f"{_L}.self_attn.{p}_norm.weight") for p in "qk"]
# the other families' tables: their own pairs first (the first matching pair wins), then the Llama table
NAME_MAPS = {
    "qwen3": NameMap(_QK_NORMS + NAME_MAP.pairs),
    "qwen3_moe": NameMap(
        [("layers.{i}.mlp.gate.weight", f"{_L}.mlp.gate.weight")]
        + [(f"layers.{{i}}.mlp.experts.{{j}}.{p}_proj.weight", f"{_L}.mlp.experts.{{j}}.{p}_proj.weight")
           for p in ("gate", "up", "down")]
        + _QK_NORMS + NAME_MAP.pairs
    ),
    "olmo2": NameMap(
        [("layers.{i}.attn_post_norm.weight", f"{_L}.post_attention_layernorm.weight"),
         ("layers.{i}.mlp_post_norm.weight", f"{_L}.post_feedforward_layernorm.weight")]
        + _QK_NORMS + NAME_MAP.pairs
    ),
}


def name_map(model_type: str) -> NameMap:
    """The name table of one model_type (PEFT adapters are renamed with it too)."""
    return NAME_MAPS.get(model_type, NAME_MAP)


# buffers some checkpoints carry that lmkit recomputes
DROP = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

# HF config keys this module reads; everything else is kept in ModelConfig.extra and written back
_CONSUMED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias",
    "tie_word_embeddings", "attention_dropout", "initializer_range", "bos_token_id", "eos_token_id",
    "pad_token_id", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
    "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "output_router_logits",
    "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache", "pretraining_tp",
    "num_experts", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
    "original_max_position_embeddings",
}


def _req(hf: dict, key: str) -> Any:
    return required(hf, key, hf.get("model_type"))


def _rope(hf: dict, model_type: str) -> dict[str, Any]:
    """The ModelConfig RoPE fields (default, linear, dynamic, llama3, yarn, longrope; whole heads)."""
    return rope_from_hf(hf, DEFAULT_THETA[model_type])


def _sliding_window(hf: dict, model_type: str, n_layers: int) -> int | None:
    window = hf.get("sliding_window")
    if model_type in ("llama", "olmo2"):
        return None
    if model_type == "qwen3_moe":  # one window for every layer
        return int(window) if hf.get("use_sliding_window", False) and window is not None else None
    if model_type in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False) or window is None:
            return None
        types = hf.get("layer_types") or [
            "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention" for i in range(n_layers)
        ]
    else:
        types = hf.get("layer_types")
        if window is None:
            return None
        if types is None:
            return int(window)
    if len(types) != n_layers:
        raise ConfigError(f"config.json: layer_types has {len(types)} entries for num_hidden_layers={n_layers}")
    kinds = set(types)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise ConfigError(
        f"config.json: layers mix full and sliding-window attention ({sorted(kinds)}); "
        "lmkit uses one attention pattern for every layer"
    )


def config_from_hf(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"arch_llama handles {MODEL_TYPES}, not {model_type!r}")
    d = int(_req(hf, "hidden_size"))
    heads = int(_req(hf, "num_attention_heads"))
    n_layers = int(_req(hf, "num_hidden_layers"))
    head_dim = hf.get("head_dim", 128 if model_type == "qwen3" else None)
    if head_dim is None and d % heads:
        raise ConfigError(f"config.json: hidden_size={d} is not divisible by num_attention_heads={heads}")
    kv = hf.get("num_key_value_heads") or heads
    if heads % kv:
        raise ConfigError(f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json: hidden_act={act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    if model_type in ATTENTION_BIAS:
        qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        ffn_bias = model_type == "llama" and bool(hf.get("mlp_bias", False))
    else:
        qkv_bias, o_bias, ffn_bias = model_type == "qwen2", False, False
    moe: dict[str, Any] = {}
    if model_type == "mixtral":
        moe = dict(
            n_experts=int(hf.get("num_local_experts", 8)),
            n_experts_per_tok=int(hf.get("num_experts_per_tok", 2)),
            router="topk",
            norm_topk_prob=True,
            router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        )
    if model_type == "qwen3_moe":
        moe = _qwen3_moe(hf, n_layers)
    eos, extra = eos_and_extra(hf, _CONSUMED)
    with config_contradictions(model_type):
        return ModelConfig(
            arch="decoder",
            vocab_size=int(_req(hf, "vocab_size")),
            d_model=d,
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=int(kv),
            head_dim=int(head_dim) if head_dim is not None else None,
            d_ff=int(_req(hf, "intermediate_size")),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-5 if model_type == "olmo2" else 1e-6)),
            norm_position="sublayer_output" if model_type == "olmo2" else "pre",
            qk_norm=QK_NORM.get(model_type),
            activation=ACTIVATIONS[act],
            gated_ffn=True,
            position="rope",
            **_rope(hf, model_type),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            ffn_bias=ffn_bias,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=_sliding_window(hf, model_type, n_layers),
            attn_dropout=float(hf.get("attention_dropout", 0.0)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            model_type=model_type,
            extra=extra,
            **moe,
        )


def _qwen3_moe(hf: dict, n_layers: int) -> dict[str, Any]:
    """The MoE fields of a qwen3_moe config: layer i is sparse iff i is not in mlp_only_layers
    and (i + 1) is a multiple of decoder_sparse_step (as transformers' Qwen3MoeDecoderLayer)."""
    n_experts = int(hf.get("num_experts", hf.get("num_local_experts", 128)))
    step = int(hf.get("decoder_sparse_step", 1))
    if step < 1:
        raise ConfigError(f"config.json: decoder_sparse_step={step} must be >= 1")
    dense = set(hf.get("mlp_only_layers") or [])
    return dict(
        n_experts=n_experts,
        n_experts_per_tok=int(hf.get("num_experts_per_tok", 8)),
        router="topk",
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        moe_d_ff=int(hf.get("moe_intermediate_size", 768)),
        moe_layers=[i for i in range(n_layers) if i not in dense and (i + 1) % step == 0],
    )


def _check_representable(cfg: ModelConfig) -> None:
    mt = cfg.model_type
    problems = []
    expect = dict(arch="decoder", norm="rmsnorm", norm_position="sublayer_output" if mt == "olmo2" else "pre",
                  qk_norm=QK_NORM.get(mt), position="rope", gated_ffn=True, lm_head_bias=False, scale_attn=True,
                  partial_rotary_factor=1.0, parallel_residual=False)
    problems += mismatches(cfg, expect)
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if mt in ATTENTION_BIAS and cfg.qkv_bias != cfg.o_bias:
        problems.append(f"{mt} puts a bias on all four attention projections or on none (qkv_bias != o_bias)")
    if mt in ATTENTION_BIAS and mt != "llama" and cfg.ffn_bias:
        problems.append(f"{mt} has no MLP bias")
    if mt == "qwen2" and (not cfg.qkv_bias or cfg.o_bias or cfg.ffn_bias):
        problems.append("qwen2 needs qkv_bias=True, o_bias=False, ffn_bias=False")
    if mt in ("mistral", "mixtral") and (cfg.qkv_bias or cfg.o_bias or cfg.ffn_bias):
        problems.append(f"{mt} has no biases")
    if mt in ("llama", "olmo2") and cfg.sliding_window is not None:
        problems.append(f"{mt} has no sliding window (use mistral)")
    if mt == "mixtral":
        if not cfg.n_experts or cfg.router != "topk" or not cfg.norm_topk_prob or cfg.capacity_factor is not None:
            problems.append("mixtral needs n_experts > 0, router='topk', norm_topk_prob=True, capacity_factor=None")
        if cfg.ffn_bias:
            problems.append("mixtral experts have no bias")
        if cfg.moe_layers is not None or cfg.moe_d_ff not in (None, cfg.d_ff):
            problems.append("mixtral has experts of size d_ff in every layer (moe_layers=None, moe_d_ff=None)")
    elif mt == "qwen3_moe":
        if cfg.n_experts and (cfg.router != "topk" or cfg.capacity_factor is not None):
            problems.append("qwen3_moe needs router='topk', capacity_factor=None")
    elif cfg.n_experts:
        problems.append(f"{mt} has no MoE layers (use mixtral or qwen3_moe)")
    problems += cfg.gemma_settings()
    check_writable(problems, mt)


def config_to_hf(cfg: ModelConfig) -> dict:
    mt = cfg.model_type
    if mt not in MODEL_TYPES:
        raise ConfigError(f"arch_llama writes {MODEL_TYPES}, not model_type={mt!r}")
    _check_representable(cfg)
    hf: dict[str, Any] = dict(cfg.extra)
    hf.update(
        model_type=mt,
        architectures=[HF_CLASSES[mt]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        **rope_to_hf(cfg),
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.attn_dropout,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        pad_token_id=cfg.pad_token_id,
        use_cache=True,
    )
    eos_to_hf(hf, cfg)
    if mt in ATTENTION_BIAS:
        hf["attention_bias"] = cfg.qkv_bias
    if mt == "llama":
        hf["mlp_bias"] = cfg.ffn_bias
    elif mt in ("qwen2", "qwen3"):
        sliding = cfg.sliding_window is not None
        hf.update(
            use_sliding_window=sliding,
            sliding_window=cfg.sliding_window,
            max_window_layers=0 if sliding else cfg.n_layers,
            layer_types=[("sliding_attention" if sliding else "full_attention")] * cfg.n_layers,
        )
    elif mt == "qwen3_moe":
        hf.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
    elif mt != "olmo2":
        hf["sliding_window"] = cfg.sliding_window
    if mt == "qwen3_moe":
        hf.update(
            num_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_tok,
            norm_topk_prob=cfg.norm_topk_prob,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
            moe_intermediate_size=cfg.moe_d_ff or cfg.d_ff,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)] if cfg.n_experts else [],
        )
    if mt == "mixtral":
        hf.update(
            num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_tok,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
        )
    return hf


_FUSED = re.compile(r"(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)\Z")
_V5_GATE = re.compile(r"(model\.layers\.\d+)\.mlp\.gate\.weight\Z")


# the published per-expert layout: (module, gate, up, down names)
_PUBLISHED = {"mixtral": ("block_sparse_moe", "w1", "w3", "w2"), "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj")}


def _unfuse_experts(sd: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """transformers-5 in-memory layout -> per-expert tensors of the published checkpoints."""
    block, gate, up, down = _PUBLISHED[model_type]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _FUSED.match(k)
        g = _V5_GATE.match(k)
        if g:
            out[f"{g.group(1)}.{block}.gate.weight"] = v
        elif m and m.group(2) == "gate_up_proj":
            f = v.shape[1] // 2
            for j in range(v.shape[0]):
                out[f"{m.group(1)}.{block}.experts.{j}.{gate}.weight"] = v[j, :f]
                out[f"{m.group(1)}.{block}.experts.{j}.{up}.weight"] = v[j, f:]
        elif m:
            for j in range(v.shape[0]):
                out[f"{m.group(1)}.{block}.experts.{j}.{down}.weight"] = v[j]
        else:
            out[k] = v
    return out


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if cfg.n_experts:
        sd = _unfuse_experts(sd, cfg.model_type)
    out = name_map(cfg.model_type).rename_to_ours(sd, drop=DROP)
    return drop_tied_head(out, cfg)


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return name_map(cfg.model_type).rename_to_theirs(without_tied_head(sd, cfg), cfg.model_type)


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.decoder import DecoderLM

    return DecoderLM(cfg)
