"""Named model shapes: a family's conventions plus a size, as `ModelConfig` keyword sets.

The family settings follow the published architectures (GPT-2: learned positions,
LayerNorm, GELU-tanh MLP with biases, tied head; Llama: RoPE, RMSNorm, SwiGLU, no biases;
BERT: post-norm, learned + token-type embeddings; T5: relative bias, RMSNorm, no score
scaling). The sizes are small enough to train on a laptop CPU. `vocab_size` is normally
overridden by the tokenizer's.
"""

from __future__ import annotations

from typing import Any

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig

_GPT2 = dict(arch="decoder", model_type="gpt2", norm="layernorm", activation="gelu_tanh", gated_ffn=False,
             position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, tie_embeddings=True)
_LLAMA = dict(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu", gated_ffn=True,
              position="rope", tie_embeddings=True, norm_eps=1e-5)
_BERT = dict(arch="encoder", model_type="bert", norm="layernorm", norm_position="post", norm_eps=1e-12,
             activation="gelu", gated_ffn=False, position="learned", qkv_bias=True, o_bias=True, ffn_bias=True,
             type_vocab_size=2, tie_embeddings=True)
_T5 = dict(arch="encoder_decoder", model_type="t5", norm="rmsnorm", norm_eps=1e-6, activation="relu",
           gated_ffn=False, position="t5_bias", scale_attn=False, tie_embeddings=True)

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-tiny": {**_GPT2, "d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 512, "max_seq_len": 512},
    "gpt2-small": {**_GPT2, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 3072, "max_seq_len": 1024,
                   "vocab_size": 50257},
    "llama-tiny": {**_LLAMA, "d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_ff": 352,
                   "max_seq_len": 512},
    "llama-small": {**_LLAMA, "d_model": 384, "n_layers": 6, "n_heads": 6, "d_ff": 1024, "max_seq_len": 1024,
                    "vocab_size": 8192, "tie_embeddings": False},
    "mixtral-tiny": {**_LLAMA, "model_type": "mixtral", "d_model": 128, "n_layers": 4, "n_heads": 4,
                     "n_kv_heads": 2, "d_ff": 256, "max_seq_len": 512, "n_experts": 4, "n_experts_per_tok": 2,
                     "tie_embeddings": False},
    "bert-tiny": {**_BERT, "d_model": 128, "n_layers": 2, "n_heads": 2, "d_ff": 512, "max_seq_len": 512},
    "t5-tiny": {**_T5, "d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512, "max_seq_len": 512},
    "lstm-tiny": {"arch": "lstm", "d_model": 256, "n_layers": 2, "n_heads": 1, "d_ff": 256, "max_seq_len": 512},
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset as a ModelConfig, with fields overridden (e.g. vocab_size=...)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
