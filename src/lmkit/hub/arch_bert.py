"""Hugging Face BERT checkpoints (`BertModel`, `BertForPreTraining`, `BertForMaskedLM`, ...).

BERT is a post-LayerNorm encoder (eps 1e-12) with learned absolute positions, token-type
(segment) embeddings, an erf-GELU MLP and biases everywhere. Checkpoint layout:
  * the backbone is prefixed `bert.` in models with heads (`BertForPreTraining`, ...) and
    unprefixed in a plain `BertModel` (sentence-transformers models such as all-MiniLM-L6-v2);
  * heads live under `cls.` — `cls.predictions.*` (MLM; its decoder weight is tied to the
    word embeddings; its decoder bias is `cls.predictions.bias` under a second name, except
    in transformers 5 with untied embeddings, where only `decoder.bias` is used — so lmkit
    reads that one and writes both), `cls.seq_relationship` (NSP) — and the pooler under
    `pooler.dense`;
  * old TensorFlow conversions name LayerNorm parameters gamma/beta.

Which heads the model gets. `config_from_hf` guesses them from the `architectures` entry
(BertModel: pooler only; BertForMaskedLM: MLM only; BertForPreTraining: all) and records
the set as ``ModelConfig.extra["heads"]`` (see models/encoder.py). The weights have the last
word: `state_from_hf` keeps exactly the heads that have at least one tensor in the
checkpoint and writes that set back into ``cfg.extra["heads"]`` before `load_pretrained`
builds the model — so a `BertModel` exported without its pooler (add_pooling_layer=False),
or a pretraining config whose head weights were stripped, loads as the backbone (with a
warning naming each promised head that is absent), while loading stays strict for
everything that is built: a missing backbone tensor, or a head present only in part, is
reported tensor by tensor. A head set no transformers class has exactly (pooler + MLM, or
none at all) is also written as `lmkit_heads` in config.json, which transformers ignores,
so lmkit reads back exactly the model it wrote while transformers loads the nearest class.
Other task heads (classifier, qa_outputs) are not modelled: their tensors are skipped with
a warning and the backbone loads. Saving writes `architectures` from the model's heads, so transformers'
`AutoModel` / `BertForPreTraining` read the checkpoint back.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub.hf_config import (check_writable, config_contradictions, drop_tied_head, mismatches, required,
                                 without_tied_head)
from lmkit.hub.name_map import NameMap
from lmkit.models.config import ModelConfig

MODEL_TYPES: tuple[str, ...] = ("bert",)
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

# HF architecture class -> heads it carries (the pooler is part of BertModel unless a class drops it)
HEADS_OF = {
    "BertModel": ("pooler",),
    "BertForPreTraining": ("pooler", "mlm", "nsp"),
    "BertForMaskedLM": ("mlm",),
    "BertLMHeadModel": ("mlm",),
    "BertForNextSentencePrediction": ("pooler", "nsp"),
    "BertForSequenceClassification": ("pooler",),
    "BertForMultipleChoice": ("pooler",),
    "BertForTokenClassification": (),
    "BertForQuestionAnswering": (),
}
ARCH_OF = {
    ("pooler", "mlm", "nsp"): "BertForPreTraining",
    ("mlm",): "BertForMaskedLM",
    ("pooler", "mlm"): "BertForMaskedLM",  # transformers ignores the pooler weights
    ("pooler", "nsp"): "BertForNextSentencePrediction",
    ("pooler",): "BertModel",
    (): "BertModel",  # transformers initialises a pooler of its own
}

# ---- the name table (lmkit name, checkpoint name without the `bert.` prefix) ---------------
NAME_MAP = NameMap(
    [
        ("embed_tokens.weight", "embeddings.word_embeddings.weight"),
        ("embed_positions.weight", "embeddings.position_embeddings.weight"),
        ("embed_types.weight", "embeddings.token_type_embeddings.weight"),
        ("embed_norm.weight", "embeddings.LayerNorm.weight"),
        ("embed_norm.bias", "embeddings.LayerNorm.bias"),
        ("pooler.dense.weight", "pooler.dense.weight"),
        ("pooler.dense.bias", "pooler.dense.bias"),
        ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight"),
        ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias"),
        ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
        ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
        ("mlm_head.decoder.weight", "cls.predictions.decoder.weight"),
        ("mlm_head.bias", "cls.predictions.bias"),
        ("nsp_head.weight", "cls.seq_relationship.weight"),
        ("nsp_head.bias", "cls.seq_relationship.bias"),
    ]
    + [
        (f"layers.{{i}}.{ours}.{s}", f"encoder.layer.{{i}}.{theirs}.{s}")
        for ours, theirs in [
            ("self_attn.q_proj", "attention.self.query"),
            ("self_attn.k_proj", "attention.self.key"),
            ("self_attn.v_proj", "attention.self.value"),
            ("self_attn.o_proj", "attention.output.dense"),
            ("attn_norm", "attention.output.LayerNorm"),
            ("mlp.up_proj", "intermediate.dense"),
            ("mlp.down_proj", "output.dense"),
            ("mlp_norm", "output.LayerNorm"),
        ]
        for s in ("weight", "bias")
    ]
)
PREFIX = "bert."
HEAD_PREFIX = "cls."
# buffers and duplicates stored by some checkpoints
DROP = (r"embeddings\.position_ids", r"embeddings\.token_type_ids")
TASK_HEADS = re.compile(r"(classifier|qa_outputs)\.")

_CONSUMED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
    "bos_token_id", "eos_token_id", "position_embedding_type", "is_decoder", "add_cross_attention",
    "tie_word_embeddings", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
    "gradient_checkpointing", "lmkit_heads",
}


def _req(hf: dict, key: str) -> Any:
    return required(hf, key, "bert")


def heads_from_architectures(hf: dict) -> tuple[str, ...]:
    if "lmkit_heads" in hf:  # written by lmkit for head sets no transformers class has exactly
        heads = hf["lmkit_heads"]
        if not isinstance(heads, list) or not set(heads) <= {"pooler", "mlm", "nsp"} or (
            "nsp" in heads and "pooler" not in heads
        ):
            raise ConfigError(f"config.json (bert): lmkit_heads={heads!r} must list heads from pooler, mlm, nsp "
                              "(nsp needs pooler)")
        return tuple(h for h in ("pooler", "mlm", "nsp") if h in heads)
    archs = hf.get("architectures") or ["BertForPreTraining"]
    name = archs[0] if isinstance(archs, list) and archs else archs
    if name not in HEADS_OF:
        raise ConfigError(
            f"config.json (bert): architectures={archs!r} is not supported; lmkit reads {sorted(HEADS_OF)}"
        )
    return HEADS_OF[name]


def config_from_hf(hf: dict) -> ModelConfig:
    d = int(_req(hf, "hidden_size"))
    heads = int(_req(hf, "num_attention_heads"))
    if heads <= 0 or d % heads:
        raise ConfigError(
            f"config.json (bert): hidden_size={d} is not divisible by num_attention_heads={heads}"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json (bert): hidden_act={act!r} is not supported ({sorted(ACTIVATIONS)})")
    pos = hf.get("position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise ConfigError(
            f"config.json (bert): position_embedding_type={pos!r} is not supported (only 'absolute')"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ConfigError("config.json (bert): is_decoder/add_cross_attention (BERT as a decoder) is not supported")
    type_vocab = int(hf.get("type_vocab_size", 2))
    if type_vocab <= 0:
        raise ConfigError(f"config.json (bert): type_vocab_size={type_vocab} must be positive")
    extra = {k: v for k, v in hf.items() if k not in _CONSUMED}
    extra["heads"] = list(heads_from_architectures(hf))
    hidden_dropout = float(hf.get("hidden_dropout_prob", 0.1))
    with config_contradictions("bert"):
        return ModelConfig(
            arch="encoder",
            vocab_size=int(_req(hf, "vocab_size")),
            d_model=d,
            n_layers=int(_req(hf, "num_hidden_layers")),
            n_heads=heads,
            d_ff=int(_req(hf, "intermediate_size")),
            max_seq_len=int(hf.get("max_position_embeddings", 512)),
            norm="layernorm",
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            norm_position="post",
            norm_bias=True,
            activation=ACTIVATIONS[act],
            gated_ffn=False,
            position="learned",
            qkv_bias=True,
            o_bias=True,
            ffn_bias=True,
            type_vocab_size=type_vocab,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            scale_attn=True,
            dropout=hidden_dropout,
            attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id", 0),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            model_type="bert",
            extra=extra,
        )


def _heads(cfg: ModelConfig) -> tuple[str, ...]:
    from lmkit.models.encoder import encoder_heads

    return encoder_heads(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    expect = dict(arch="encoder", norm="layernorm", norm_position="post", norm_bias=True, gated_ffn=False,
                  position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, scale_attn=True, n_experts=0,
                  sliding_window=None, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads)
    problems = mismatches(cfg, expect)
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if cfg.d_model % cfg.n_heads:
        problems.append("n_heads must divide d_model")
    if cfg.type_vocab_size <= 0:
        problems.append("type_vocab_size=0 (BERT always has token-type embeddings; use 1 or 2)")
    check_writable(problems, "bert")
    hf: dict[str, Any] = {k: v for k, v in cfg.extra.items() if k != "heads"}
    heads = _heads(cfg)
    if HEADS_OF[ARCH_OF[heads]] != heads:
        hf["lmkit_heads"] = list(heads)
    hf.update(
        model_type="bert",
        architectures=[ARCH_OF[heads]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attn_dropout,
        max_position_embeddings=cfg.max_seq_len,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.norm_eps,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        position_embedding_type="absolute",
        tie_word_embeddings=cfg.tie_embeddings,
        is_decoder=False,
        add_cross_attention=False,
    )
    return hf


def _legacy(name: str) -> str:
    """TF-era LayerNorm names: gamma/beta -> weight/bias."""
    if name.endswith("LayerNorm.gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[: -len("beta")] + "bias"
    return name


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {_legacy(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in sd.items()}
    skipped = sorted(k for k in sd if TASK_HEADS.match(k))
    if skipped:
        warnings.warn(f"bert: task-head tensors lmkit does not model were skipped: {skipped}", stacklevel=3)
        sd = {k: v for k, v in sd.items() if k not in skipped}
    # transformers' forward adds cls.predictions.decoder.bias; it is the same tensor as
    # cls.predictions.bias except in transformers 5 with untied embeddings, where only it counts
    dec_bias = sd.pop("cls.predictions.decoder.bias", None)
    if dec_bias is not None:
        sd["cls.predictions.bias"] = dec_bias
    out = NAME_MAP.rename_to_ours(sd, drop=DROP)
    drop_tied_head(out, cfg, head="mlm_head.decoder.weight")
    _heads_from_weights(out, cfg)
    return out


_HEAD_PREFIXES = {"pooler": "pooler.", "mlm": "mlm_head.", "nsp": "nsp_head."}


def _heads_from_weights(out: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Set cfg.extra["heads"] to the heads with at least one tensor in the (renamed) state.

    NSP reads the pooler output, so an NSP head keeps the pooler (whose tensors, if absent,
    the strict loader then names). Promised heads that are wholly absent are dropped with a
    warning rather than built with random weights.
    """
    promised = _heads(cfg)
    found = {h for h, prefix in _HEAD_PREFIXES.items() if any(k.startswith(prefix) for k in out)}
    if "nsp" in found:
        found.add("pooler")
    heads = tuple(h for h in ("pooler", "mlm", "nsp") if h in found)
    absent = [h for h in promised if h not in heads]
    if absent:
        warnings.warn(
            f"bert: the config promises the {absent} head(s) but the checkpoint has no tensors for them; "
            "the model is built without them", stacklevel=4,
        )
    cfg.extra = {**cfg.extra, "heads": list(heads)}


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    heads = _heads(cfg)
    sd = without_tied_head(sd, cfg, head="mlm_head.decoder.weight")
    # a plain BertModel checkpoint has unprefixed names; models with heads prefix the backbone
    prefix = "" if ARCH_OF[heads] == "BertModel" else PREFIX
    out = {}
    for k, v in NAME_MAP.rename_to_theirs(sd, "bert").items():
        out[k if k.startswith(HEAD_PREFIX) else prefix + k] = v
    if "cls.predictions.bias" in out:  # both names, so every transformers version finds its bias
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


def build_model(cfg: ModelConfig) -> nn.Module:
    from lmkit.models.encoder import EncoderLM

    return EncoderLM(cfg)
