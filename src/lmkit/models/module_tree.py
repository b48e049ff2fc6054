"""Swapping one submodule of a model for another, by its dotted name.

Quantization (a Linear becomes a quantized Linear) and PEFT (a Linear is wrapped by an
adapter, or unwrapped again when merged) both rewrite the module tree in place; this is
the one place that knows how a dotted name reaches its parent. Saliency and adversarial
training both perturb the token-embedding table's output; `token_embedding` finds it.
"""

from __future__ import annotations

from torch import nn


def replace_module(root: nn.Module, dotted_name: str, new_module: nn.Module) -> nn.Module:
    """Put `new_module` at `dotted_name` (e.g. "layers.0.self_attn.q_proj") under `root`
    and return the module it replaces."""
    parent_name, _, child = dotted_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new_module)
    return old


def token_embedding(root: nn.Module) -> nn.Embedding:
    """The token-embedding table of `root`: the shallowest `nn.Embedding` named `embed_tokens`
    (DecoderLM, EncoderLM, and any wrapper holding one of them)."""
    found = [(name.count("."), name, m) for name, m in root.named_modules()
             if isinstance(m, nn.Embedding) and name.split(".")[-1] == "embed_tokens"]
    if not found:
        from lmkit.errors import ConfigError

        raise ConfigError(f"{type(root).__name__} has no `embed_tokens` embedding table")
    return min(found, key=lambda f: f[:2])[2]
