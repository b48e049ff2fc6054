"""Parameter counts by component and the memory the weights need at each precision.

Weight memory only (no activations, no optimizer; see train/memory.py for training):
  fp32 4 B/param, bf16 2 B/param;
  int8  1 B/param + one fp32 scale per output row, for the Linear weights inside the layers;
  nf4   0.5 B/param + block constants for the same Linears — QLoRA's double quantization
        stores one 8-bit constant per 64-weight block plus one fp32 per 256 constants
        (≈ 0.127 bit/param instead of 0.5 bit/param for plain fp32 constants).
Embeddings, norms and the LM head stay in bf16 for the int8/nf4 rows, as in bitsandbytes'
default (`llm_int8_skip_modules` keeps lm_head; embeddings are not Linear).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn


def component_of(name: str) -> str:
    """Group a parameter name into a readable component."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in ("layers", "encoder_layers", "decoder_layers") or p.endswith("layers"):
            rest = parts[i + 2 :] if i + 2 < len(parts) else []
            sub = rest[0] if rest else "other"
            return {"self_attn": "attention", "cross_attn": "cross-attention", "mlp": "ffn"}.get(
                sub, "norms" if "norm" in sub else sub
            )
    head = parts[0]
    if "embed" in head:
        return "embeddings"
    if "norm" in head:
        return "norms"
    if "head" in head or head in ("pooler",):
        return "heads"
    return head


def count_by_component(model: nn.Module) -> "OrderedDict[str, int]":
    """Counts each tensor once even when tied (lm_head sharing the embedding)."""
    seen: set[int] = set()
    out: OrderedDict[str, int] = OrderedDict()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        key = component_of(name)
        out[key] = out.get(key, 0) + p.numel()
    return out


@dataclass
class WeightMemory:
    total_params: int
    quantizable_params: int  # 2-D Linear weights inside the Transformer layers
    quantizable_rows: int

    def bytes_at(self, precision: str) -> float:
        rest = self.total_params - self.quantizable_params
        q, rows = self.quantizable_params, self.quantizable_rows
        if precision == "fp32":
            return 4.0 * self.total_params
        if precision == "bf16":
            return 2.0 * self.total_params
        if precision == "int8":
            return 2.0 * rest + q + 4.0 * rows
        if precision == "nf4":
            blocks = q / 64
            return 2.0 * rest + 0.5 * q + blocks + 4.0 * blocks / 256
        raise ValueError(f"unknown precision {precision!r}; use fp32, bf16, int8 or nf4")


def weight_memory(model: nn.Module) -> WeightMemory:
    seen: set[int] = set()
    total = quant = rows = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}." and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            quant += mod.weight.numel()
            rows += mod.weight.shape[0]
    for p in {id(p): p for p in model.parameters()}.values():
        total += p.numel()
    return WeightMemory(total, quant, rows)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
