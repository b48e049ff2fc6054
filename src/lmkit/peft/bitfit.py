"""BitFit (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models").

Only the bias terms are trained: the biases of every Linear layer (attention q/k/v/o, FFN,
heads) and of every LayerNorm; optionally the norms' scales too (`train_norms`). Everything
else stays frozen. Sparse and tiny (~0.1% of BERT), and the fine-tuned model differs from
the base only in its bias vectors.

Llama-style models have no biases at all (and RMSNorm has none): BitFit then has nothing to
train, which is an error unless `add_missing_bias=True`, which gives every bias-less Linear
inside the Transformer layers (q, k, v, o, gate, up, down) a zero bias - the output is
unchanged until training moves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.peft.method_common import MethodConfig, blocks_of, freeze, model_config_of


@dataclass
class BitFitConfig(MethodConfig):
    method = "bitfit"
    train_norms: bool = False  # also the norm scales (gamma)
    add_missing_bias: bool = False  # zero biases for bias-less Linear layers in the Transformer layers


def _norms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__ == "RMSNorm"]


def apply_bitfit(model: nn.Module, config: BitFitConfig | None = None) -> nn.Module:
    """Freeze `model` and make its bias terms (and optionally norm scales) trainable."""
    config = config or BitFitConfig()
    model_config_of(model)
    freeze(model)
    if config.add_missing_bias:
        for block in blocks_of(model):
            for lin in block.modules():
                if isinstance(lin, nn.Linear) and lin.bias is None:
                    w = lin.weight
                    lin.bias = nn.Parameter(torch.zeros(lin.out_features, device=w.device, dtype=w.dtype))
    biases = {id(p): p for n, p in model.named_parameters() if n.endswith("bias")}
    if not biases:
        raise ConfigError(
            f"{type(model).__name__} has no bias terms (Llama-style: qkv_bias=o_bias=ffn_bias=False, RMSNorm), "
            "so BitFit would train nothing; use BitFitConfig(add_missing_bias=True) to add zero biases, "
            "or another method"
        )
    for p in biases.values():
        p.requires_grad_(True)
    if config.train_norms:
        for norm in _norms(model):
            if norm.weight is not None:
                norm.weight.requires_grad_(True)
    return model


def bitfit_param_count(model_config: ModelConfig, config: BitFitConfig) -> int:
    """Closed form for a DecoderLM / EncoderLM built from `model_config` (no MoE)."""
    c = model_config
    if c.n_experts:
        raise ConfigError("bitfit_param_count: mixture-of-experts models are not covered by the closed form")
    if c.arch not in ("decoder", "encoder"):
        raise ConfigError(f"bitfit_param_count: arch {c.arch!r} is not supported (decoder, encoder)")
    d, hd = c.d_model, c.head_dim
    add = config.add_missing_bias
    per_layer = 0
    if c.qkv_bias or add:
        per_layer += c.n_heads * hd + 2 * c.n_kv_heads * hd
    if c.o_bias or add:
        per_layer += d
    if c.ffn_bias or add:
        per_layer += (2 if c.gated_ffn else 1) * c.d_ff + d
    ln_bias = c.norm == "layernorm" and c.norm_bias
    n_norms = 2 * c.n_layers + (1 if c.norm_position == "pre" else 0)
    total = c.n_layers * per_layer
    if c.arch == "encoder":
        from lmkit.models.encoder import encoder_heads

        heads = encoder_heads(c)
        n_norms += 1 if c.norm_position == "post" else 0  # embed_norm
        if "pooler" in heads:
            total += d
        if "mlm" in heads:
            total += d + c.vocab_size  # dense bias, output bias
            n_norms += 1
        if "nsp" in heads:
            total += 2
    elif c.lm_head_bias:
        total += c.vocab_size
    if ln_bias:
        total += n_norms * d
    if config.train_norms:
        total += n_norms * d
    return total
