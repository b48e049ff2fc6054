"""FP8 (8-bit floating point, Micikevicius et al. 2022 "FP8 Formats for Deep Learning").

Two formats:
  E4M3 (torch.float8_e4m3fn)  1 sign, 4 exponent, 3 mantissa bits; max 448, no inf, one NaN
                              pattern — more precision, used for weights and activations.
  E5M2 (torch.float8_e5m2)    1 sign, 5 exponent, 2 mantissa bits; max 57344, has ±inf
                              (IEEE-like) — more range, used for gradients.

Saturation. The OCP FP8 spec leaves overflow to the converter: *saturating* conversion
clamps to ±max, *non-saturating* gives NaN (E4M3) / ±inf (E5M2). PyTorch's own casts differ
by format and version (on this CPU build float8_e4m3fn saturates while float8_e5m2 overflows
to inf), so lmkit never relies on them for out-of-range values: `to_fp8` clamps to ±max first
when saturate=True (the default, as NVIDIA Transformer Engine does), and produces NaN/inf
explicitly otherwise.

Scaled FP8 (`quantize_fp8`): FP8's range is tiny, so tensors are stored as x / scale with a
per-tensor (or per-row) scale = amax / fmt.max, as FP8 training recipes do; the relative
error of every element above the subnormal range is then <= 2^-(m+1) (1/16 for E4M3, 1/8
for E5M2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmkit.quant.float_formats import get_format, round_to_format

FP8_FORMATS = ("e4m3", "e5m2")


def _check(fmt: str):
    f = get_format(fmt)
    if f.name not in FP8_FORMATS:
        raise ValueError(f"{fmt!r} is not an FP8 format; use one of {FP8_FORMATS}")
    return f


def fp8_available() -> bool:
    return hasattr(torch, "float8_e4m3fn") and hasattr(torch, "float8_e5m2")


def to_fp8(x: torch.Tensor, fmt: str = "e4m3", saturate: bool = True) -> torch.Tensor:
    """Cast to an FP8 dtype (a torch.float8_* tensor) with explicit overflow semantics.
    Without torch FP8 dtypes, returns the exactly rounded values in fp32 instead."""
    f = _check(fmt)
    x = x.float()
    if saturate:
        x = torch.clamp(x, -f.max, f.max)
    else:
        rounded = round_to_format(x, f, saturate=False)
        x = torch.where(torch.isfinite(rounded), x, rounded)  # NaN/inf stay NaN/inf
    if f.torch_dtype is None:  # pragma: no cover - old torch
        return round_to_format(x, f, saturate=saturate)
    out = x.to(f.torch_dtype)
    if not saturate and f.name == "e4m3":  # make overflow NaN regardless of torch's cast
        out = torch.where(torch.isfinite(x), out.float(), torch.full_like(x, float("nan"))).to(f.torch_dtype)
    return out


def fp8_round_trip(x: torch.Tensor, fmt: str = "e4m3", saturate: bool = True) -> torch.Tensor:
    return to_fp8(x, fmt, saturate).float()


@dataclass
class FP8Tensor:
    data: torch.Tensor  # float8 (or fp32 rounded values without torch support)
    scale: torch.Tensor  # fp32, broadcastable to data
    fmt: str
    dtype: torch.dtype = torch.float32

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return (self.data.float() * self.scale).to(dtype or self.dtype)

    def nbytes(self) -> int:
        return self.data.numel() + 4 * self.scale.numel()


def quantize_fp8(x: torch.Tensor, fmt: str = "e4m3", per_row: bool = False) -> FP8Tensor:
    """Scaled FP8: scale = amax / fmt.max (per tensor, or per row of a 2-D tensor)."""
    f = _check(fmt)
    xf = x.detach().float()
    if per_row:
        if xf.dim() != 2:
            raise ValueError(f"per_row FP8 scaling needs a 2-D tensor, got shape {tuple(x.shape)}")
        amax = xf.abs().amax(dim=1, keepdim=True)
    else:
        amax = xf.abs().amax()
    scale = torch.where(amax > 0, amax / f.max, torch.ones_like(amax))
    return FP8Tensor(to_fp8(xf / scale, fmt), scale, f.name, x.dtype)
