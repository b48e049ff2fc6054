"""Uniform (affine) integer quantization: absmax (symmetric) and zero-point (asymmetric).

    symmetric  (absmax, 对称量化):  scale = max|x| / (2^(b-1) - 1),  q = clamp(round(x / scale), -qmax, qmax)
                                    x ≈ scale * q                  (zero point Z = 0, not stored)
    asymmetric (zero-point, 非对称): scale = (max - min) / (2^b - 1), Z = round(-min / scale)
                                    q = clamp(round(x / scale) + Z, 0, 2^b - 1),  x ≈ scale * (q - Z)
    (the range [min, max] is widened to contain 0, so 0 is exactly representable: x = 0 -> q = Z)

Granularity — which elements share one (scale, Z):
    "tensor"   one pair for the whole tensor (per-tensor)
    "channel"  one pair per index along `axis` (per-channel; axis 0 of an [out, in] weight =
               per output row)
    "block"    one pair per `block_size` consecutive elements along `axis` (block-wise /
               group-wise; axis -1 of an [out, in] weight = groups of input columns, as in
               GPTQ/AWQ "group size 128"). block_size must divide that axis.
Finer granularity = more constants but a smaller range per constant, so smaller error: an
outlier only inflates the scale of its own channel or block.

Error bound (both schemes): every element inside the range rounds to the nearest grid point,
so |x - dequantize(quantize(x))| <= scale / 2 elementwise (tested with hypothesis).
The symmetric scheme uses the range [-qmax, qmax] (-128 is never produced for int8), which
keeps the grid symmetric about 0 as in LLM.int8() and most int8 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "block")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits={bits!r}: must be an integer in [2, 16]")
    if symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2**bits - 1


def storage_dtype(bits: int, symmetric: bool) -> torch.dtype:
    if bits <= 8:
        return torch.int8 if symmetric else torch.uint8
    return torch.int16 if symmetric and bits <= 16 else torch.int32


def _grouped(x: torch.Tensor, granularity: str, axis: int, block_size: int | None) -> torch.Tensor:
    """x viewed as [groups, elements per group] (a copy when the axis must move)."""
    if granularity == "tensor":
        return x.reshape(1, -1)
    if x.dim() == 0:
        raise ValueError(f"granularity {granularity!r} needs a tensor with at least one dimension")
    axis = axis % x.dim()
    if granularity == "channel":
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    if block_size is None or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block-wise quantization needs a positive integer block_size, got {block_size!r}")
    if x.shape[axis] % block_size:
        raise ValueError(
            f"block_size={block_size} does not divide dimension {axis} (size {x.shape[axis]}) of a tensor "
            f"of shape {tuple(x.shape)}; choose a block size that divides it"
        )
    return x.movedim(axis, -1).reshape(-1, block_size)


def _ungrouped(g: torch.Tensor, shape: torch.Size, granularity: str, axis: int) -> torch.Tensor:
    if granularity == "tensor":
        return g.reshape(shape)
    axis = axis % len(shape)
    if granularity == "channel":
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        return g.reshape(moved).movedim(0, axis)
    moved = tuple(s for i, s in enumerate(shape) if i != axis) + (shape[axis],)
    return g.reshape(moved).movedim(-1, axis)


def affine_params(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, symmetric: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale, zero_point) for ranges [xmin, xmax] (tensors of any shape). An all-zero range gets
    scale 1 so that 0 maps to 0 exactly."""
    qmin, qmax = qrange(bits, symmetric)
    xmin = torch.minimum(xmin.float(), torch.zeros_like(xmin, dtype=torch.float32))
    xmax = torch.maximum(xmax.float(), torch.zeros_like(xmax, dtype=torch.float32))
    if symmetric:
        amax = torch.maximum(-xmin, xmax)
        scale = amax / qmax
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    scale = (xmax - xmin) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-xmin / scale), qmin, qmax)
    return scale, zero


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """Integer codes (as float values) of x for broadcastable scale/zero."""
    qmin, qmax = qrange(bits, symmetric)
    q = torch.round(x.float() / scale)
    if zero is not None:
        q = q + zero
    return torch.clamp(q, qmin, qmax)


def dequantize_with(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    q = q.float()
    return scale * (q - zero if zero is not None else q)


@dataclass
class AffineQuantized:
    """Integer codes `q` (shape of the source) + one scale (and zero point) per group."""

    q: torch.Tensor
    scale: torch.Tensor  # fp32 [groups]
    zero_point: torch.Tensor | None  # fp32 [groups] holding integers (asymmetric only)
    bits: int
    symmetric: bool
    granularity: str
    axis: int
    block_size: int | None
    dtype: torch.dtype

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        g = _grouped(self.q, self.granularity, self.axis, self.block_size)
        zero = None if self.zero_point is None else self.zero_point[:, None]
        out = dequantize_with(g, self.scale[:, None], zero)
        return _ungrouped(out, self.q.shape, self.granularity, self.axis).to(dtype or self.dtype)

    def nbytes(self, scale_bytes: int = 4) -> int:
        """Storage with codes packed at `bits` per element (not the unpacked int8 tensor)."""
        n = (self.q.numel() * self.bits + 7) // 8
        consts = self.scale.numel() * scale_bytes
        if self.zero_point is not None:
            consts += (self.zero_point.numel() * self.bits + 7) // 8
        return n + consts


def quantize_affine(x: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "tensor",
                    axis: int = 0, block_size: int | None = None) -> AffineQuantized:
    """Quantize a floating tensor; see the module docstring for the schemes."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: must be one of {GRANULARITIES}")
    if not x.is_floating_point():
        raise TypeError(f"quantize_affine needs a floating tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize a tensor holding inf or NaN")
    g = _grouped(x.detach().float(), granularity, axis, block_size)
    scale, zero = affine_params(g.amin(dim=1), g.amax(dim=1), bits, symmetric)
    q = quantize_with(g, scale[:, None], None if zero is None else zero[:, None], bits, symmetric)
    q = _ungrouped(q, x.shape, granularity, axis).to(storage_dtype(bits, symmetric))
    return AffineQuantized(q=q, scale=scale, zero_point=zero, bits=bits, symmetric=symmetric,
                           granularity=granularity, axis=axis, block_size=block_size, dtype=x.dtype)


def dequantize_affine(a: AffineQuantized, dtype: torch.dtype | None = None) -> torch.Tensor:
    return a.dequantize(dtype)


def fake_quantize(x: torch.Tensor, **kw) -> torch.Tensor:
    """quantize -> dequantize in one step (the 'fake quant' op of QAT and of error studies)."""
    return quantize_affine(x, **kw).dequantize()
