"""Floating-point formats (浮点数精度) and exact round-to-nearest-even simulation of each.

  format  sign/exp/mantissa bits  max            smallest normal  relative step (eps)
  fp32    1/8/23                  3.4e38         1.2e-38          2^-23
  tf32    1/8/10  (19 bits used)  3.4e38         1.2e-38          2^-10   NVIDIA Ampere+ tensor cores
  bf16    1/8/7                   3.4e38         1.2e-38          2^-7    fp32's range, less precision
  fp16    1/5/10                  65504          6.1e-5           2^-10   more precision, small range
  fp8 e4m3fn 1/4/3                448            2^-6             2^-3    no inf; forward activations/weights
  fp8 e5m2   1/5/2                57344          2^-14            2^-2    has inf; gradients (range)

Rounding to a format with m mantissa bits (round to nearest, ties to even) has relative
error at most 2^-(m+1) for values in the normal range, and absolute error at most
2^(emin-m-1) in the subnormal range (tested with hypothesis against torch's casts).
So int8 vs fp16 (notes: "INT8 和 FP16 的对比"): int8 has a *uniform* grid (absolute error
<= scale/2 everywhere, needs a scale per tensor/channel/block), fp16 a *logarithmic* grid
(relative error <= 2^-11 over 10 decades, no scale needed); both halve fp16/fp32 memory
traffic relative to the wider type.

`round_to_format` works for any (exp_bits, man_bits), including TF32, which PyTorch exposes
only as a matmul mode (`torch.backends.cuda.matmul.allow_tf32`), never as a dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FloatFormat:
    name: str
    exp_bits: int
    man_bits: int
    max: float
    has_inf: bool = True
    torch_dtype: torch.dtype | None = None

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:  # exponent of the smallest normal number
        return 1 - self.bias

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man_bits)

    @property
    def eps(self) -> float:  # gap between 1 and the next number
        return 2.0**-self.man_bits

    @property
    def max_relative_error(self) -> float:  # round-to-nearest in the normal range
        return 2.0 ** -(self.man_bits + 1)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits


FORMATS = {
    "fp32": FloatFormat("fp32", 8, 23, float(torch.finfo(torch.float32).max), True, torch.float32),
    "tf32": FloatFormat("tf32", 8, 10, float(torch.finfo(torch.float32).max) , True, None),
    "bf16": FloatFormat("bf16", 8, 7, float(torch.finfo(torch.bfloat16).max), True, torch.bfloat16),
    "fp16": FloatFormat("fp16", 5, 10, 65504.0, True, torch.float16),
    "e4m3": FloatFormat("e4m3", 4, 3, 448.0, False, getattr(torch, "float8_e4m3fn", None)),
    "e5m2": FloatFormat("e5m2", 5, 2, 57344.0, True, getattr(torch, "float8_e5m2", None)),
}


def get_format(name: str) -> FloatFormat:
    key = {"float8_e4m3fn": "e4m3", "fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2", "float8_e5m2": "e5m2",
           "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}.get(name, name)
    if key not in FORMATS:
        raise ValueError(f"unknown float format {name!r}; known: {sorted(FORMATS)}")
    return FORMATS[key]


def round_to_format(x: torch.Tensor, fmt: str | FloatFormat, saturate: bool = True) -> torch.Tensor:
    """Round fp32 values to the nearest value of `fmt` (ties to even), returned as fp32.

    Out of range: saturate=True clamps to ±max; saturate=False gives ±inf (formats with inf)
    or NaN (e4m3fn, which has no inf) for values that round beyond max.
    """
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    x = x.float()
    _, e = torch.frexp(x)  # x = m * 2^e, 0.5 <= |m| < 1  ->  floor(log2|x|) = e - 1
    exp = torch.clamp(e - 1, min=f.emin)
    ulp = torch.ldexp(torch.ones_like(x), exp - f.man_bits)
    r = torch.round(x / ulp) * ulp
    r = torch.where(x == 0, x, r)  # keep signed zeros
    over = r.abs() > f.max
    if saturate:
        r = torch.where(over, torch.sign(x) * f.max, r)
    else:
        big = torch.full_like(x, float("inf")) * torch.sign(x) if f.has_inf else torch.full_like(x, float("nan"))
        r = torch.where(over, big, r)
    return torch.where(torch.isnan(x), x, r)


def round_trip(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x -> fmt -> fp32 through torch's dtype when it has one (tf32: simulated)."""
    f = get_format(fmt)
    if f.torch_dtype is None:
        return round_to_format(x, f)
    return x.to(f.torch_dtype).float()


def error_report(x: torch.Tensor, formats=("fp16", "bf16", "tf32", "e4m3", "e5m2")) -> dict[str, dict[str, float]]:
    """Max/mean absolute and relative round-trip error of x per format (saturating)."""
    out = {}
    x = x.float()
    nz = x != 0
    for name in formats:
        r = round_to_format(x, name)
        err = (r - x).abs()
        rel = err[nz] / x[nz].abs()
        out[name] = {
            "max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "max_rel": float(rel.max()) if rel.numel() else 0.0, "mean_rel": float(rel.mean()) if rel.numel() else 0.0,
        }
    return out
