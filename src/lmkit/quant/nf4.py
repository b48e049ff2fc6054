"""NF4 — 4-bit NormalFloat (QLoRA, Dettmers et al. 2023) with double quantization.

NF4 is quantile quantization (分位数量化) for normally distributed weights: the 16 code
values are quantiles of N(0, 1), rescaled to [-1, 1], built asymmetrically so that 0 is
exactly representable (8 negative and 7 positive quantiles plus 0):
    offset = 0.5 * (1/(2*15) + 1/(2*16)) ≈ 0.9677
    positive = Φ⁻¹(linspace(offset, 0.5, 9)[:-1]),  negative = -Φ⁻¹(linspace(offset, 0.5, 8)[:-1])
    code = sort(negative ∪ {0} ∪ positive) / max
`NF4_CODE` holds the values exactly as bitsandbytes hard-codes them (the tests rebuild them
from this definition).

Quantization (per block of `block_size` = 64 consecutive elements of the flattened tensor):
    absmax_b = max |w| in the block;  code index = nearest NF4 value of w / absmax_b
    (ties go to the lower index; the same rule as bitsandbytes' CPU path).
Packing: two 4-bit indices per uint8, element 2i in the HIGH nibble and element 2i+1 in the
LOW nibble — bitsandbytes' order (`packed = hi << 4 | lo`). An odd element count is padded
with one zero nibble.
Double quantization (default on): the fp32 absmax values are themselves quantized to 8
bits in blocks of 256 after subtracting their mean (see `double_quant.py`).

Memory per weight: 4 bits + 32/64 = 4.5 bits, or with double quantization
4 + 8/64 + 32/(64·256) ≈ 4.127 bits (fp32 is 32 → 7.75× smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmkit.quant.double_quant import DQ_BLOCK_SIZE, DoubleQuantized, double_quantize

NF4_CODE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)


def pack_nibbles(idx: torch.Tensor) -> torch.Tensor:
    """uint8 values < 16, flat [n] -> uint8 [ceil(n/2)]: element 2i high nibble, 2i+1 low."""
    idx = idx.reshape(-1).to(torch.uint8)
    if idx.numel() % 2:
        idx = torch.cat([idx, idx.new_zeros(1)])
    return (idx[0::2] << 4) | idx[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_nibbles`: uint8 [ceil(n/2)] -> uint8 [n]."""
    packed = packed.reshape(-1)
    out = torch.empty(packed.numel() * 2, dtype=torch.uint8, device=packed.device)
    out[0::2] = packed >> 4
    out[1::2] = packed & 0xF
    return out[:n]


@dataclass
class NF4Tensor:
    """A tensor stored as NF4: packed 4-bit codes + per-block constants (maybe double-quantized)."""

    packed: torch.Tensor  # uint8 [ceil(numel / 2)]
    shape: tuple[int, ...]
    block_size: int
    absmax: torch.Tensor | None  # fp32 [n_blocks] when not double-quantized
    dq: DoubleQuantized | None  # the 8-bit constants when double-quantized
    dtype: torch.dtype = torch.float32  # dtype of the original tensor

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def double_quant(self) -> bool:
        return self.dq is not None

    def block_absmax(self) -> torch.Tensor:
        """The fp32 per-block scales (dequantized from 8 bits when double-quantized)."""
        return self.dq.dequantize() if self.dq is not None else self.absmax

    def codes(self) -> torch.Tensor:
        """Unpacked 4-bit code indices, uint8 [numel]."""
        return unpack_nibbles(self.packed, self.numel)

    def nbytes(self) -> int:
        consts = self.dq.nbytes() if self.dq is not None else 4 * self.absmax.numel()
        return self.packed.numel() + consts

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nf4(self, dtype)


def quantize_nf4(w: torch.Tensor, block_size: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantize any floating tensor to NF4 with `block_size` elements per absmax constant.

    The element count must be a multiple of block_size (a ValueError says which sizes fit).
    """
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"NF4 block_size={block_size!r} must be a positive integer")
    if not w.is_floating_point():
        raise TypeError(f"quantize_nf4 needs a floating tensor, got {w.dtype}")
    n = w.numel()
    if n == 0 or n % block_size:
        raise ValueError(
            f"NF4: tensor of shape {tuple(w.shape)} has {n} elements, which block_size={block_size} "
            "does not divide; choose a block size that divides the element count (e.g. 64 for "
            "layers whose in_features is a multiple of 64)"
        )
    flat = w.detach().reshape(-1, block_size).float()
    absmax = flat.abs().amax(dim=1)
    scaled = torch.clamp(flat * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    code = NF4_CODE.to(w.device)
    idx = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)
    packed = pack_nibbles(idx)
    dq = double_quantize(absmax, DQ_BLOCK_SIZE) if double_quant else None
    return NF4Tensor(
        packed=packed, shape=tuple(w.shape), block_size=block_size,
        absmax=None if double_quant else absmax, dq=dq, dtype=w.dtype,
    )


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """NF4Tensor -> dense tensor of `dtype` (default: the original dtype)."""
    code = NF4_CODE.to(q.packed.device)
    vals = code[q.codes().long()].reshape(-1, q.block_size)
    absmax = q.block_absmax().to(q.packed.device)
    out = (vals * absmax[:, None]).reshape(q.shape)
    return out.to(dtype or q.dtype)
