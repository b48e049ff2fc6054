"""Hugging Face T5 checkpoints (`T5ForConditionalGeneration`: T5 v1.0, v1.1, Flan-T5).

T5 is a pre-RMSNorm encoder-decoder without biases and without attention score scaling,
with a relative position bias that only the first layer of each stack stores
(`block.0.layer.0.SelfAttention.relative_attention_bias`) and every layer uses.
Its feed-forward is `feed_forward_proj`: "relu" (v1.0: wi, wo) or "gated-gelu" (v1.1 /
Flan: wi_0 is the gate, wi_1 the linear branch, with the tanh GELU); generally "ACT" or
"gated-ACT" for ACT in relu, gelu (erf), gelu_new (tanh), silu.

Tied embeddings and the d_model^-0.5 output rescale: v1.0 ties the LM head to the shared
embedding and rescales the decoder output; v1.1 has a separate LM head and no rescale.
transformers < 5 signals both with `tie_word_embeddings`. transformers 5 always ties
the head unless the checkpoint stores a different `lm_head.weight`, and records the
rescale as `scale_decoder_outputs`, so it can write "tied but not rescaled". lmkit ties
exactly when it rescales (config.tie_embeddings): such a checkpoint loads as an untied
model whose lm_head is a copy of the shared embedding — the same function. lmkit writes
`tie_word_embeddings` and `scale_decoder_outputs` consistently, plus `lm_head.weight` when
untied, which both transformers generations read correctly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import (check_writable, config_contradictions, eos_and_extra, eos_to_hf, mismatches,
                                 required, without_tied_head)
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("t5",)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "silu": "silu", "swish": "silu"}


def _ffn_from_hf(proj: str) -> tuple[str, bool]:
    """feed_forward_proj -> (lmkit activation, gated), following transformers' parsing."""
    parts = proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ConfigError(f"config.json (t5): feed_forward_proj={proj!r} must be 'ACT' or 'gated-ACT'")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' historical special case
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"config.json (t5): feed_forward_proj={proj!r} uses activation {act!r}, which lmkit does not "
            f"support (supported: {sorted(ACTIVATIONS)}, optionally 'gated-')"
        )
    return ACTIVATIONS[act], gated


def _ffn_to_hf(activation: str, gated: bool) -> str:
    if gated:
        # "gated-gelu" means the tanh GELU in transformers; the erf one needs its explicit name
        return {"gelu_tanh": "gated-gelu", "gelu": "gated-gelu_python", "relu": "gated-relu",
                "silu": "gated-silu"}[activation]
    return {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}[activation]


# ---- the name table ------------------------------------------------------------------------
def _stack_rows(side: str, cross: bool, gated: bool) -> list[tuple[str, str]]:
    ff = 2 if cross else 1
    rows = [
        ("attn_norm.weight", "layer.0.layer_norm.weight"),
        *[(f"self_attn.{p}_proj.weight", f"layer.0.SelfAttention.{p}.weight") for p in "qkvo"],
        ("mlp_norm.weight", f"layer.{ff}.layer_norm.weight"),
        ("mlp.down_proj.weight", f"layer.{ff}.DenseReluDense.wo.weight"),
    ]
    if gated:
        rows += [("mlp.gate_proj.weight", f"layer.{ff}.DenseReluDense.wi_0.weight"),
                 ("mlp.up_proj.weight", f"layer.{ff}.DenseReluDense.wi_1.weight")]
    else:
        rows += [("mlp.up_proj.weight", f"layer.{ff}.DenseReluDense.wi.weight")]
    if cross:
        rows += [("cross_attn_norm.weight", "layer.1.layer_norm.weight"),
                 *[(f"cross_attn.{p}_proj.weight", f"layer.1.EncDecAttention.{p}.weight") for p in "qkvo"]]
    return [(f"{side}.layers.{{i}}.{a}", f"{side}.block.{{i}}.{b}") for a, b in rows] + [
        (f"{side}.relative_bias.embedding.weight",
         f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        (f"{side}.norm.weight", f"{side}.final_layer_norm.weight"),
    ]


def name_map(gated: bool) -> NameMap:
    """The T5 table; the only variation is the FFN (wi, or wi_0 + wi_1 when gated)."""
    return NameMap(
        [("embed_tokens.weight", "shared.weight"), ("lm_head.weight", "lm_head.weight")]
        + _stack_rows("encoder", False, gated)
        + _stack_rows("decoder", True, gated)
    )


# copies of `shared` and a cross-attention bias old checkpoints carry (transformers ignores it too)
DROP = (
    r"(encoder|decoder)\.embed_tokens\.weight",
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
)

_CONSUMED = {
    "model_type", "architectures", "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
    "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
    "layer_norm_epsilon", "feed_forward_proj", "dense_act_fn", "is_gated_act", "is_encoder_decoder", "is_decoder",
    "tie_word_embeddings", "scale_decoder_outputs", "pad_token_id", "eos_token_id", "bos_token_id",
    "decoder_start_token_id", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
    "n_positions",
}


def _req(hf: dict, key: str) -> Any:
    return required(hf, key, "t5")


def _rescaled(hf: dict) -> bool:
    """Whether the decoder output is multiplied by d_model^-0.5 (see the module docstring)."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def config_from_hf(hf: dict) -> ModelConfig:
    d = int(_req(hf, "d_model"))
    heads = int(_req(hf, "num_heads"))
    d_kv = int(hf.get("d_kv", 64))
    if heads <= 0 or d_kv <= 0:
        raise ConfigError(f"config.json (t5): num_heads={heads} and d_kv={d_kv} must be positive")
    activation, gated = _ffn_from_hf(str(hf.get("feed_forward_proj", "relu")))
    if hf.get("is_encoder_decoder") is False:
        raise ConfigError("config.json (t5): is_encoder_decoder=false is not supported (T5 encoder- or decoder-only)")
    eos, extra = eos_and_extra(hf, _CONSUMED, default=1)
    pad = hf.get("pad_token_id", 0)
    start = hf.get("decoder_start_token_id")
    n_layers = int(_req(hf, "num_layers"))
    with config_contradictions("t5"):
        return ModelConfig(
            arch="encoder_decoder",
            vocab_size=int(_req(hf, "vocab_size")),
            d_model=d,
            n_layers=n_layers,
            n_decoder_layers=int(hf.get("num_decoder_layers") or n_layers),
            n_heads=heads,
            head_dim=d_kv,
            d_ff=int(_req(hf, "d_ff")),
            max_seq_len=int(hf.get("n_positions") or 512),  # relative positions: a soft limit only
            norm="rmsnorm",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
            norm_position="pre",
            activation=activation,
            gated_ffn=gated,
            position="t5_bias",
            relative_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            qkv_bias=False,
            o_bias=False,
            ffn_bias=False,
            tie_embeddings=_rescaled(hf),
            scale_attn=False,
            dropout=float(hf.get("dropout_rate", 0.1)),
            attn_dropout=0.0,
            pad_token_id=pad,
            eos_token_id=eos,
            bos_token_id=hf.get("bos_token_id"),
            decoder_start_token_id=start if start is not None else pad,
            model_type="t5",
            extra=extra,
        )


def config_to_hf(cfg: ModelConfig) -> dict:
    expect = dict(arch="encoder_decoder", norm="rmsnorm", norm_position="pre", position="t5_bias",
                  qkv_bias=False, o_bias=False, ffn_bias=False, lm_head_bias=False, scale_attn=False,
                  n_experts=0, sliding_window=None, n_kv_heads=cfg.n_heads)
    problems = mismatches(cfg, expect)
    if cfg.activation not in ("relu", "gelu", "gelu_tanh", "silu"):
        problems.append(f"activation={cfg.activation!r}")
    check_writable(problems, "t5")
    hf: dict[str, Any] = dict(cfg.extra)
    hf.update(
        model_type="t5",
        architectures=["T5ForConditionalGeneration"],
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.head_dim,
        d_ff=cfg.d_ff,
        num_layers=cfg.n_layers,
        num_decoder_layers=cfg.n_decoder_layers,
        num_heads=cfg.n_heads,
        relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        dropout_rate=cfg.dropout,
        layer_norm_epsilon=cfg.norm_eps,
        feed_forward_proj=_ffn_to_hf(cfg.activation, cfg.gated_ffn),
        is_encoder_decoder=True,
        tie_word_embeddings=cfg.tie_embeddings,
        scale_decoder_outputs=cfg.tie_embeddings,
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        decoder_start_token_id=cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None
        else (cfg.pad_token_id or 0),
        n_positions=cfg.max_seq_len,
        use_cache=True,
    )
    eos_to_hf(hf, cfg)
    if cfg.bos_token_id is not None:
        hf["bos_token_id"] = cfg.bos_token_id
    return hf


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    if "shared.weight" not in sd:  # some exports keep only the per-stack copies
        for alt in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if alt in sd:
                sd["shared.weight"] = sd[alt]
                break
    out = name_map(cfg.gated_ffn).rename_to_ours(sd, drop=DROP)
    if cfg.tie_embeddings:
        head = out.pop("lm_head.weight", None)
        emb = out.get("embed_tokens.weight")
        if head is not None and emb is not None and not torch.equal(head, emb):
            raise CheckpointError(
                "t5: the config ties the LM head to the shared embedding (tie_word_embeddings / "
                "scale_decoder_outputs true), but the checkpoint's lm_head.weight differs from shared.weight; "
                "set tie_word_embeddings=false and scale_decoder_outputs=false in config.json if the head is separate"
            )
    elif "lm_head.weight" not in out and "embed_tokens.weight" in out:
        # written by transformers 5 with a tied head but no rescale: the head is the embedding
        out["lm_head.weight"] = out["embed_tokens.weight"].clone()
    return out


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return name_map(cfg.gated_ffn).rename_to_theirs(without_tied_head(sd, cfg), "t5")


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.encoder_decoder import EncoderDecoderLM

    return EncoderDecoderLM(cfg)
