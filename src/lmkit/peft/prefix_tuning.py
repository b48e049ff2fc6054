"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every layer's self-attention gets p extra key/value vectors in front of the real ones:

    K_l = [P_l^K ; W_K x],   V_l = [P_l^V ; W_V x]       (P_l^K, P_l^V: [n_kv_heads, p, head_dim])

Every query may attend to the prefix (the attention mask is extended by p visible columns),
and the prefix itself has no query, so it never changes: it acts like p past tokens whose
keys/values are free parameters. With RoPE the prefix keys are used as they are (like the
cached keys of a past that was already rotated); the real tokens are numbered from p on, as
Hugging Face/PEFT number tokens after a p-long `past_key_values` (`shift_positions=True`).

Reparameterisation. Optimising the prefixes directly is unstable (the paper), so during
training they are computed by an MLP from a smaller embedding:

    E [p, d]  ->  Linear(d, hidden) -> tanh -> Linear(hidden, 2·L·kv_dim)  ->  P [L, 2, n_kv_heads, p, head_dim]

This is PEFT's `PrefixEncoder` (same layout and parameter names, so weights copy across).
After training, `finalize_prefix(model)` computes P once, keeps it as the only parameter
and drops the MLP: outputs are unchanged and the stored prefix is L·2·p·kv_dim numbers.

Mechanics (no change to the model code): a forward pre-hook on the model computes the
prefixes once per forward (and shifts position_ids by p), and a forward pre-hook on every
layer's `self_attn` wraps the `kv_cache` argument so that ``update(k, v)`` returns
``[prefix ; cached ; new]``, and pads the additive attention bias with p zero columns.
Generation with a `KVCache` therefore works unchanged (the cache stores only real tokens;
`lmkit.infer.generate` works on a prefix-tuned model) and equals full recomputation.
`p_tuning_v2.py` reuses this machinery without reparameterisation.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import default_position_ids
from lmkit.models.masks import real_tokens
from lmkit.peft.method_common import (
    MethodConfig, blocks_of, check_int, check_prob, freeze, kv_dim, model_config_of,
)


@dataclass
class PrefixTuningConfig(MethodConfig):
    method = "prefix"
    n_virtual_tokens: int = 10  # p, the prefix length
    projection: bool = True  # MLP reparameterisation during training
    hidden_size: int | None = None  # MLP hidden size (None: d_model)
    dropout: float = 0.0  # on the prefixes (Li & Liang use dropout on the prefix activations)
    shift_positions: bool = True  # number the real tokens from p (as HF/PEFT do with past_key_values)
    finalized: bool = False  # set by finalize_prefix: the prefixes are stored directly, no MLP

    def __post_init__(self) -> None:
        check_int(self, "n_virtual_tokens")
        if self.hidden_size is not None:
            check_int(self, "hidden_size")
        check_prob(self, "dropout")


class _PrefixedLayerCache:
    """Wraps a layer's kv_cache (or None): update(k, v) -> ([prefix; past; k], [prefix; past; v])."""

    def __init__(self, inner, pk: torch.Tensor, pv: torch.Tensor) -> None:
        self.inner, self.pk, self.pv = inner, pk, pv

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inner is not None:
            k, v = self.inner.update(k, v)
        b = k.shape[0]
        pk = self.pk.to(k.dtype).expand(b, *self.pk.shape[1:]) if self.pk.shape[0] != b else self.pk.to(k.dtype)
        pv = self.pv.to(v.dtype).expand(b, *self.pv.shape[1:]) if self.pv.shape[0] != b else self.pv.to(v.dtype)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


class DeepPromptHooks:
    """Installs per-layer key/value prompts produced by `source()` -> [L, 2, Hkv, p, hd] (or
    [L, 2, B, Hkv, p, hd]); shared by prefix tuning and P-tuning v2."""

    def __init__(self, model: nn.Module, source: nn.Module, n_tokens: int, shift_positions: bool) -> None:
        self.source = source
        self.n_tokens = n_tokens
        self.current: torch.Tensor | None = None
        self.is_decoder = model_config_of(model).arch == "decoder"
        self.shift = shift_positions and self.is_decoder
        self.signature = inspect.signature(model.forward)
        self.handles = [model.register_forward_pre_hook(self._model_pre, with_kwargs=True),
                        model.register_forward_hook(self._model_post)]
        for i, block in enumerate(blocks_of(model)):
            self.handles.append(
                block.self_attn.register_forward_pre_hook(self._attn_hook(i), with_kwargs=True)
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _model_pre(self, model, args, kwargs):
        self.current = self.source()
        if not self.shift:
            return None
        bound = self.signature.bind(*args, **kwargs)
        a = bound.arguments
        ids = a["input_ids"]
        b, t = ids.shape
        cache = a.get("kv_cache")
        past = cache.seq_len if cache is not None else 0
        pos = a.get("position_ids")
        if pos is None:
            padding = real_tokens(a.get("attention_mask"), b, past + t, ids.device)
            pos = default_position_ids(b, t, past, ids.device, padding)
        a["position_ids"] = pos + self.n_tokens
        return (), dict(a)

    def _model_post(self, model, args, output):
        self.current = None
        return None

    def _attn_hook(self, i: int):
        def hook(module, args, kwargs):
            kv = self.current if self.current is not None else self.source()
            pk, pv = kv[i, 0], kv[i, 1]
            if pk.dim() == 3:  # shared by the batch
                pk, pv = pk[None], pv[None]
            kwargs["kv_cache"] = _PrefixedLayerCache(kwargs.get("kv_cache"), pk, pv)
            bias = kwargs.get("attn_bias")
            if bias is not None:
                kwargs["attn_bias"] = F.pad(bias, (self.n_tokens, 0), value=0.0)
            return args, kwargs

        return hook


class PrefixEncoder(nn.Module):
    """PEFT's PrefixEncoder: embedding (-> MLP) -> prefixes [L, 2, Hkv, p, hd]."""

    def __init__(self, mcfg: ModelConfig, config: PrefixTuningConfig) -> None:
        super().__init__()
        self.n_layers, self.n_kv_heads, self.head_dim = mcfg.n_layers, mcfg.n_kv_heads, mcfg.head_dim
        self.p = config.n_virtual_tokens
        out = 2 * mcfg.n_layers * kv_dim(mcfg)
        self.projection = config.projection
        if config.projection:
            hidden = config.hidden_size or mcfg.d_model
            self.embedding = nn.Embedding(self.p, mcfg.d_model)
            self.transform = nn.Sequential(nn.Linear(mcfg.d_model, hidden), nn.Tanh(), nn.Linear(hidden, out))
        else:
            self.embedding = nn.Embedding(self.p, out)
        self.dropout = nn.Dropout(config.dropout)
        self.prefix: nn.Parameter | None = None

    def flat(self) -> torch.Tensor:
        """[p, 2·L·kv_dim], PEFT's layout (layer-major, then key/value, then head, then dim)."""
        idx = torch.arange(self.p, device=self.embedding.weight.device)
        e = self.embedding(idx)
        return self.transform(e) if self.projection else e

    def compute(self) -> torch.Tensor:
        x = self.flat().view(self.p, self.n_layers, 2, self.n_kv_heads, self.head_dim)
        return x.permute(1, 2, 3, 0, 4)  # [L, 2, Hkv, p, hd]

    def forward(self) -> torch.Tensor:
        kv = self.prefix if self.prefix is not None else self.compute()
        return self.dropout(kv)

    @torch.no_grad()
    def finalize(self) -> None:
        if self.prefix is not None:
            return
        kv = self.compute().detach().clone()
        del self.embedding
        if self.projection:
            del self.transform
        self.prefix = nn.Parameter(kv)


def freeze_for_deep_prompts(model: nn.Module) -> ModelConfig:
    """Freeze `model` before prefix tuning or P-tuning v2 adds its per-layer prompts (only
    one of them, once); returns the model's config."""
    mcfg = model_config_of(model)
    if hasattr(model, "prefix_tuning") or hasattr(model, "deep_prompt"):
        raise ConfigError("this model already has prefix tuning / P-tuning v2 prompts")
    freeze(model)
    return mcfg


def apply_prefix(model: nn.Module, config: PrefixTuningConfig | None = None) -> nn.Module:
    """Freeze `model` and give every layer a trainable key/value prefix; returns `model`."""
    config = config or PrefixTuningConfig()
    mcfg = freeze_for_deep_prompts(model)
    p = next(model.parameters())
    enc = PrefixEncoder(mcfg, config).to(device=p.device, dtype=p.dtype)
    if config.finalized:
        enc.finalize()
    model.prefix_tuning = enc
    model._prefix_hooks = DeepPromptHooks(model, enc, config.n_virtual_tokens, config.shift_positions)
    model._prefix_config = config
    return model


def finalize_prefix(model: nn.Module) -> nn.Module:
    """Drop the reparameterisation MLP: keep only the computed prefixes (outputs unchanged)."""
    enc = getattr(model, "prefix_tuning", None)
    if enc is None:
        raise ConfigError("finalize_prefix: the model has no prefix tuning (apply_prefix first)")
    enc.finalize()
    model._prefix_config.finalized = True
    return model


def prefix_param_count(model_config: ModelConfig, config: PrefixTuningConfig) -> int:
    p, d, out = config.n_virtual_tokens, model_config.d_model, 2 * model_config.n_layers * kv_dim(model_config)
    if config.finalized or not config.projection:
        return p * out
    h = config.hidden_size or d
    return p * d + (d * h + h) + (h * out + out)
