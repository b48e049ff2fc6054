"""`quantize_model(model, method, skip=...)`: swap a model's nn.Linear layers for quantized ones.

Methods (post-training quantization, PTQ / 训练后量化, weight quantization):
  int8       Int8Linear        weight-only int8, absmax per output channel (fused CPU kernel)
  int4       GroupQuantLinear  round-to-nearest 4-bit zero-point groups (fused CPU kernel);
                               the same as rtn with bits=4
  w8a8       Int8DynamicLinear int8 weights per output channel + int8 activations per token at run
                               time, exact int32 products (torch._int_mm): the fastest int8 on CPU
  llm-int8   LLMInt8Linear     LLM.int8(): int8 weights + int8 activations with fp outlier columns
  nf4        NF4Linear         QLoRA NF4, block 64, double quantization
  rtn        GroupQuantLinear  round-to-nearest b-bit (4 or 8) zero-point groups
                               (group_size None: one group per output row)
  gptq       GPTQLinear        GPTQ (needs calibration token ids), same storage as rtn
Int8Linear and the 4-bit group layers run on PyTorch's fused weight-only kernels on CPU
(weight_kernels.py) with group sizes that are multiples of 32; other settings dequantize.

Modules are picked by their lmkit names (`layers.0.self_attn.q_proj`, `lm_head`, ...).
`skip` (default `["lm_head"]`) names modules to leave in floating point; a name matches a
module whose full name equals it, ends with ".<name>", or matches it as a glob pattern.
`targets` (default: every nn.Linear) restricts quantization to matching modules; a target
that names anything other than an nn.Linear is an error naming its type. The method's
settings are recorded in `model.quantization` (a dict) for `save_quantized`.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import torch
from torch import nn

from lmkit.errors import QuantizationError
from lmkit.models.module_tree import replace_module
from lmkit.quant.linear import (
    GPTQLinear,
    GroupQuantLinear,
    Int8DynamicLinear,
    Int8Linear,
    LLMInt8Linear,
    NF4Linear,
    QuantLinearBase,
)

METHODS = ("int8", "int4", "w8a8", "llm-int8", "nf4", "rtn", "gptq")
DEFAULT_SKIP = ("lm_head",)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def select_linears(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP,
                   targets: Iterable[str] | None = None) -> list[str]:
    """Names of the nn.Linear modules to quantize (errors for targets that are not Linear).

    A target may name a Linear or a container (a whole block, `layers.1.mlp`), whose Linears
    are then all chosen; a target naming anything else (an Embedding, a norm) is an error.
    """
    skip = list(skip or ())
    modules = dict(model.named_modules())
    if targets is None:
        chosen = [n for n, m in modules.items() if n and isinstance(m, nn.Linear)]
    else:
        targets = list(targets)
        chosen = []
        for t in targets:
            hits = [n for n in modules if n and name_matches(n, [t])]
            if not hits:
                raise ValueError(f"quantize_model: target {t!r} matches no module of the model")
            for n in hits:
                mod = modules[n]
                if isinstance(mod, QuantLinearBase):
                    raise ValueError(f"module {n!r} is already quantized ({type(mod).__name__})")
                if isinstance(mod, nn.Linear):
                    chosen.append(n)
                elif any(isinstance(m, nn.Linear) for m in mod.modules()):
                    chosen += [f"{n}.{c}" for c, m in mod.named_modules() if c and isinstance(m, nn.Linear)]
                else:
                    raise ValueError(
                        f"cannot quantize module {n!r} of type {type(mod).__name__}: quantize_model supports "
                        "nn.Linear layers only (embeddings, norms and convolutions stay in floating point)"
                    )
        chosen = list(dict.fromkeys(chosen))
    chosen = [n for n in chosen if not name_matches(n, skip)]
    if not chosen:
        done = sum(isinstance(m, QuantLinearBase) for m in model.modules())
        raise ValueError(
            f"quantize_model: no nn.Linear layer left to quantize (skip={skip}"
            + (f"; {done} layers are already quantized" if done else "") + ")"
        )
    return chosen


def make_quantized(linear: nn.Linear, method: str, *, block_size: int = 64, double_quant: bool = True,
                   bits: int = 4, group_size: int = 64, threshold: float = 6.0) -> QuantLinearBase:
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"cannot quantize a {type(linear).__name__}: only nn.Linear is supported")
    if method == "int8":
        return Int8Linear.from_linear(linear)
    if method == "w8a8":
        return Int8DynamicLinear.from_linear(linear)
    if method == "llm-int8":
        return LLMInt8Linear.from_linear(linear, threshold)
    if method == "nf4":
        return NF4Linear.from_linear(linear, block_size, double_quant)
    if method in ("rtn", "int4"):
        return GroupQuantLinear.from_linear(linear, 4 if method == "int4" else bits, group_size or linear.in_features)
    raise ValueError(f"unknown quantization method {method!r}; choose one of {METHODS}")


def empty_quantized(in_f: int, out_f: int, bias: bool, method: str, settings: dict[str, Any]) -> QuantLinearBase:
    """A quantized module of the right shapes to load a saved state dict into."""
    if method == "int8":
        return Int8Linear(in_f, out_f, bias)
    if method == "w8a8":
        return Int8DynamicLinear(in_f, out_f, bias)
    if method == "llm-int8":
        return LLMInt8Linear(in_f, out_f, bias, settings.get("threshold", 6.0))
    if method == "nf4":
        return NF4Linear(in_f, out_f, bias, settings.get("block_size", 64), settings.get("double_quant", True))
    if method in ("rtn", "gptq", "int4"):
        cls = GPTQLinear if method == "gptq" else GroupQuantLinear
        return cls(in_f, out_f, bias, settings.get("bits", 4), settings.get("group_size", 64) or in_f)
    raise ValueError(f"unknown quantization method {method!r}; choose one of {METHODS}")


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, skip: Iterable[str] | None = DEFAULT_SKIP,
                   targets: Iterable[str] | None = None, *, block_size: int = 64, double_quant: bool = True,
                   bits: int = 4, group_size: int | None = 64, threshold: float = 6.0,
                   calib: torch.Tensor | None = None, **gptq_kw: Any) -> nn.Module:
    """Replace the chosen nn.Linear modules in place and return the model (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {METHODS}")
    if method == "int4":
        bits = 4
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise QuantizationError(f"group_size={group_size!r} must be a positive integer, or None for one group per row")
    skip = list(DEFAULT_SKIP if skip is None else skip)
    targets = list(targets) if targets is not None else None
    names = select_linears(model, skip, targets)
    settings: dict[str, Any] = {"method": method}
    if method == "nf4":
        settings.update(block_size=block_size, double_quant=double_quant, bits=4)
    elif method in ("rtn", "gptq", "int4"):
        settings.update(bits=bits, group_size=group_size)
    elif method == "llm-int8":
        settings.update(threshold=threshold, bits=8)
    else:
        settings.update(bits=8)
    # check every layer fits the block/group size before changing anything
    for n in names:
        lin = model.get_submodule(n)
        if method == "nf4" and (lin.weight.numel() % block_size):
            raise QuantizationError(f"NF4 block_size={block_size} does not divide the weight of {n!r} "
                             f"({lin.out_features}x{lin.in_features}); choose a block size that divides it")
        if method in ("rtn", "gptq", "int4") and group_size is not None and lin.in_features % group_size:
            raise QuantizationError(f"group_size={group_size} does not divide in_features={lin.in_features} of "
                                    f"{n!r}; choose a group size that divides it")
        if bits == 4 and method in ("rtn", "gptq", "int4") and lin.in_features % 2:
            raise QuantizationError(f"4-bit packing needs an even in_features; {n!r} has {lin.in_features}")
    if method == "gptq":
        from lmkit.quant.gptq import gptq_quantize

        if calib is None:
            raise ValueError("GPTQ needs calibration data: pass calib=<LongTensor [n, seq_len] of token ids>")
        gptq_quantize(model, names, calib, bits=bits, group_size=group_size, **gptq_kw)
    else:
        for n in names:
            lin = model.get_submodule(n)
            replace_module(model, n, make_quantized(lin, method, block_size=block_size, double_quant=double_quant,
                                                 bits=bits, group_size=group_size, threshold=threshold))
    settings.update(skip=skip, modules=names)
    model.quantization = settings
    return model


def quantized_weight_bytes(model: nn.Module) -> int:
    return sum(m.weight_bytes() for m in model.modules() if isinstance(m, QuantLinearBase))


def linear_weight_bytes(model: nn.Module, names: Iterable[str]) -> int:
    """fp32 bytes the named Linear weights would take."""
    total = 0
    for n in names:
        m = model.get_submodule(n)
        total += m.in_features * m.out_features * 4
    return total
